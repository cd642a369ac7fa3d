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
from starlette.routing import Match

__all__ = ["OPENAI_ROUTES", "install"]

OPENAI_ROUTES = (
    "/v1/files",
    "/v1/batches",
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/models",
)

#: Where a bad parameter is a 400, as OpenAI's own API answers it (Files and Batches keep
#: the 422 they have always answered).
_BAD_PARAMETER_400 = ("/v1/chat/completions", "/v1/completions")
_CODES = {"extra_forbidden": "unsupported_parameter", "missing": "missing_required_parameter"}


def _openai(
    status: int, message: str, param: str | None, headers: Any = None, code: str | None = None
) -> JSONResponse:
    kind = "server_error" if status >= 500 else "invalid_request_error"
    if status == 429:
        code = "rate_limit_exceeded"  # as OpenAI names its 429s
    elif status == 404 and code is None:
        code = "not_found"
    error = {"message": message, "type": kind, "param": param, "code": code}
    return JSONResponse({"error": error}, status_code=status, headers=headers)


_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def _allowed(request: Request) -> str:
    """Every method the path answers, each asked of the routes as a request with that
    method (routers included by FastAPI do not list their routes' methods): Starlette's
    405 names only the first route's, and ``GET``/``POST /v1/batches`` are two routes."""
    routes = request.app.router.routes
    return ", ".join(
        method
        for method in _METHODS
        if any(r.matches({**request.scope, "method": method})[0] is Match.FULL for r in routes)
    )


def _served(request: Request) -> bool:
    """Whether any route serves the request's path (with this method or another)."""
    return any(
        route.matches(request.scope)[0] is not Match.NONE for route in request.app.router.routes
    )


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    path = request.url.path
    if exc.status_code == 405:
        exc.headers = {**(exc.headers or {}), "Allow": _allowed(request)}
    # Under /v1, a path no route serves and a method the path does not take are
    # answered as OpenAI answers them: clients of the OpenAI-compatible routes read that.
    unknown = path.startswith("/v1/") and (exc.status_code == 405 or not _served(request))
    if unknown and exc.status_code == 404:
        message = f"Unknown request URL: {request.method} {path}."
        return _openai(404, message, None, exc.headers, code="unknown_url")
    if not (unknown or path.startswith(OPENAI_ROUTES)):
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
    if request.url.path.startswith(_BAD_PARAMETER_400):
        code = _CODES.get(first["type"], "invalid_value")
        return _openai(400, f"{param}: {first['msg']}", param, code=code)
    return _openai(422, f"{param}: {first['msg']}", param)


def install(app: FastAPI) -> None:
    """Register the handlers on ``app``."""
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
