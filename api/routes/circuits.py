"""``/v1/circuits``: the shared circuit breakers, as operators see and steer them."""

from __future__ import annotations

import math
from typing import Annotated, Literal

import redis
from fastapi import APIRouter, Depends, HTTPException, Path, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from api.deps import PrincipalDep, SettingsDep
from api.responses import V1
from core import capacity, circuits
from core.connections import get_redis
from core.settings import Settings, get_settings

router = APIRouter(tags=["circuits"], responses=V1)

CircuitName = Annotated[str, Path(min_length=1, max_length=512, pattern=r"^[A-Za-z0-9._:~-]+$")]


class CallLimit(BaseModel):
    """The cluster-wide limit of calls in flight to the circuit's upstream target."""

    mode: Literal["adaptive", "fixed"]
    limit: int
    floor: int
    ceiling: int
    in_flight: int
    interactive_waiting: int
    """Interactive jobs waiting for a slot now: the next freed slots go to them."""
    batch_waiting: int
    """Batch items waiting for a slot now."""
    calls: int
    throttled: int
    """429s seen."""
    cuts: int
    waits: int
    """Jobs that waited for a slot (``wait_timeouts`` of them got none in time)."""
    wait_timeouts: int
    waited_s: float
    """Total time jobs waited for a slot."""


class Circuit(BaseModel):
    """One circuit: its state and why, and its target's call limit (None before a call)."""

    name: str
    state: Literal["closed", "open", "half-open", "forced_open", "forced_closed"]
    failure_count: int
    opened_at: str | None
    """When it last opened (or was forced open), ISO 8601 UTC; None while closed."""
    retry_after: float
    """Seconds (to the ms) a job refused now would be told to wait; 0 when none would be."""
    probe_due: bool
    """Open, and its window has passed: the next call is the probe (recovering, not down)."""
    last_failure: str | None
    probe_in_flight: bool
    transitions: dict[str, int]
    limit: CallLimit | None = None


def _redis() -> redis.Redis:
    return get_redis()


RedisDep = Annotated[redis.Redis, Depends(_redis)]


def _unreachable(what: str) -> HTTPException:
    return HTTPException(
        status.HTTP_503_SERVICE_UNAVAILABLE,
        detail=f"breaker state is unreachable (Redis); {what}",
        headers={"Retry-After": "5"},
    )


def _circuits(client: redis.Redis) -> list[Circuit]:
    try:
        listed = circuits.list_circuits(client, get_settings().target_circuits)
        known = capacity.with_limits(client, listed)
        return [Circuit.model_validate(c) for c in known]
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise _unreachable("try again shortly") from exc


@router.get("/v1/circuits", response_model=list[Circuit])
def list_circuits(_: PrincipalDep, client: RedisDep) -> list[Circuit]:
    """Every circuit genq has used or is configured to use (the primary and each failover
    target), with state, failures and seconds to the next probe, and its target's call
    limit: the limit, calls in flight, 429s, time waited for slots."""
    return _circuits(client)


def _down(circuit: Circuit) -> bool:
    """Refusing calls for a while yet: open with time left, or forced open."""
    return circuit.state == "forced_open" or (circuit.state == "open" and not circuit.probe_due)


def _recovering(circuit: Circuit) -> bool:
    """About to find out: its probe is due or in flight (half-open)."""
    return circuit.state == "half-open" or (circuit.state == "open" and circuit.probe_due)


@router.get(
    "/v1/health/circuit-breaker",
    response_model=None,
    responses={
        200: {
            "description": "every circuit closed or forced closed (`ok`), or the open ones "
            "probing the upstream now or at the next call (`recovering`)"
        },
        503: {"description": "a circuit is open or forced open for a while yet; see Retry-After"},
    },
)
def circuit_health(_: PrincipalDep, client: RedisDep) -> JSONResponse:
    """200 when no circuit is down (``ok``, or ``recovering`` while a probe is due or in
    flight); 503 with ``Retry-After`` when one is open or forced open for a while yet."""
    known = _circuits(client)
    status_, retry_after = health(known)
    body = {"status": status_, "circuits": [c.model_dump() for c in known]}
    if retry_after is None:
        return JSONResponse(body)
    return JSONResponse(body, status_code=503, headers={"Retry-After": str(retry_after)})


def health(known: list[Circuit]) -> tuple[Literal["ok", "recovering", "degraded"], int | None]:
    """The cluster's word on its circuits, and the whole seconds to wait when it is down."""
    down = [c for c in known if _down(c)]
    if down:
        return "degraded", max(1, math.ceil(min(c.retry_after for c in down)))
    return ("recovering" if any(_recovering(c) for c in known) else "ok"), None


_ACTIONS = {
    "open": circuits.Control.FORCE_OPEN,
    "close": circuits.Control.FORCE_CLOSED,
    "reset": circuits.Control.RESET,
}


def _steerable(name: str, client: redis.Redis, settings: Settings) -> bool:
    """A circuit that exists, or that a model jobs may name would use: with a list of
    served models, one of theirs; with none (development), any of the upstream's."""
    if name in {c["name"] for c in circuits.list_circuits(client, settings.target_circuits)}:
        return True
    base = str(settings.upstream_url).rstrip("/")
    served = settings.served_models
    if served is None:
        return name.startswith(circuits.circuit_name(settings.upstream_protocol, base, ""))
    return name in {circuits.circuit_name(settings.upstream_protocol, base, m) for m in served}


@router.post(
    "/v1/circuits/{name}/{action}",
    response_model=Circuit,
    responses={403: {"description": "not an admin key"}, 404: {"description": "no such circuit"}},
)
def control_circuit(
    name: CircuitName,
    action: Literal["open", "close", "reset"],
    principal: PrincipalDep,
    client: RedisDep,
    settings: SettingsDep,
) -> Circuit:
    """Admin: force a circuit open, force it closed (breaker disabled), or reset it.
    Only a circuit that exists, or that a served model would use, can be steered (404)."""
    if not principal.admin:
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail="an admin key is required")
    try:
        if not _steerable(name, client, settings):
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no circuit {name!r}")
        circuits.control(client, name, _ACTIONS[action], settings.breaker_reset_timeout_s)
        snapshot = {**circuits.snapshot(client, name), "limit": capacity.snapshot(client, name)}
        return Circuit.model_validate(snapshot)
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise _unreachable("nothing was changed") from exc
