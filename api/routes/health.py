"""Liveness and readiness probes; no key needed. Both are async and never wait for the
API's request threads (``api.probes``), so they answer while Redis hangs them."""

from __future__ import annotations

import redis
from fastapi import APIRouter, status
from fastapi.responses import JSONResponse

from api.probes import probe
from core.connections import get_redis

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=None,
    responses={503: {"description": "Redis, the broker and job store, does not answer"}},
)
async def readyz() -> JSONResponse | dict[str, str]:
    """Redis, the broker and job store, answers (within the probe budget)."""
    try:
        await probe(get_redis().ping)
    except (redis.ConnectionError, redis.TimeoutError, TimeoutError) as exc:
        return JSONResponse(
            {"status": "unavailable", "redis": type(exc).__name__},
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": "5"},
        )
    return {"status": "ok", "redis": "ok"}
