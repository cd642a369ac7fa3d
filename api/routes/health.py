"""Liveness and readiness probes; no key needed."""

from __future__ import annotations

import redis
from fastapi import APIRouter, status
from fastapi.responses import JSONResponse

from core.connections import get_redis

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz", response_model=None)
def readyz() -> JSONResponse | dict[str, str]:
    """Redis, the broker and job store, answers."""
    try:
        get_redis().ping()
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        return JSONResponse(
            {"status": "unavailable", "redis": type(exc).__name__},
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": "5"},
        )
    return {"status": "ok", "redis": "ok"}
