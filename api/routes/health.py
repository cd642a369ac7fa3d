"""Liveness and readiness probes; no key needed. Both are async and answer from what the
background monitor last saw (``api.probes``), so they answer at once while Redis hangs."""

from __future__ import annotations

from fastapi import APIRouter, Request, status
from fastapi.responses import JSONResponse

from api.probes import Monitor

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
async def readyz(request: Request) -> JSONResponse | dict[str, str]:
    """Redis, the broker and job store, answered the monitor's last ping (a second ago)."""
    monitor: Monitor = request.app.state.monitor
    state = monitor.redis
    if not state.fresh_up():
        return JSONResponse(
            {"status": "unavailable", "redis": state.error or "no recent answer"},
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": "5"},
        )
    return {"status": "ok", "redis": "ok"}
