"""Error bodies: OpenAI's shape on the OpenAI-compatible routes, FastAPI's elsewhere.

``/v1/files`` and ``/v1/batches`` answer errors as OpenAI does,
``{"error": {"message", "type", "param", "code"}}``, so the ``openai`` SDK shows the
message; genq's own routes keep FastAPI's ``{"detail": …}`` (with ``detail[].loc`` and
``detail[].msg`` for bad input, but never the input itself).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Route

__all__ = ["OPENAI_ROUTES", "install"]

OPENAI_ROUTES = ("/v1/files", "/v1/batches")


def _openai(status: int, message: str, param: str | None, headers: Any = None) -> JSONResponse:
    kind = "server_error" if status >= 500 else "invalid_request_error"
    code = "rate_limit_exceeded" if status == 429 else None  # as OpenAI names its 429s
    error = {"message": message, "type": kind, "param": param, "code": code}
    return JSONResponse({"error": error}, status_code=status, headers=headers)


def _allowed(request: Request) -> str:
    """Every method the path answers: Starlette's 405 names only the first route's, and
    ``GET /v1/batches`` and ``POST /v1/batches`` are two routes."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        if isinstance(route, Route) and route.methods:
            match, _ = route.matches(request.scope)
            if match is not Match.NONE:
                methods |= route.methods
    return ", ".join(sorted(methods))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 405:
        exc.headers = {**(exc.headers or {}), "Allow": _allowed(request)}
    if not request.url.path.startswith(OPENAI_ROUTES):
        return await http_exception_handler(request, exc)
    detail = exc.detail
    if isinstance(detail, list):  # [{"loc": [...], "msg": ...}]
        first = detail[0]
        param = ".".join(str(p) for p in first.get("loc", [])[1:]) or None
        return _openai(exc.status_code, f"{param}: {first.get('msg')}", param, exc.headers)
    return _openai(exc.status_code, str(detail), None, exc.headers)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    if not request.url.path.startswith(OPENAI_ROUTES):
        # The field and the reason, never the input: it may be a secret, a prompt, or
        # NaN / a lone surrogate that no JSON encoder would take back.
        detail = [{"type": e["type"], "loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors()]
        return JSONResponse({"detail": detail}, status_code=422)
    first = exc.errors()[0]
    param = ".".join(str(p) for p in first["loc"][1:]) or None
    return _openai(422, f"{param}: {first['msg']}", param)


def install(app: FastAPI) -> None:
    """Register the handlers on ``app``."""
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
