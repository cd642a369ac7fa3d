"""The shared circuits as operators see and steer them: states, snapshots and control.

A circuit's state lives in Redis (``core.keys.circuit``) and changes only in Lua
scripts: the breaker's (``worker.breaker``) as calls are admitted and recorded, and
:func:`control` (``core/lua/control.lua``) when an operator forces it open or closed
or resets it.
The codes both sides store are the enums below, injected into the scripts as Lua
locals. The API reads circuits with :func:`snapshot` and :func:`list_circuits`.

State hash fields: ``code`` (:class:`CircuitState`), ``gen`` (+1 per transition),
``fails`` (consecutive), ``lastfail``, ``until`` (next probe), ``window`` (current open
window), ``reset`` (the window a forced open reports), ``opened_at``, ``probe_ok``,
``touched``, ``last_failure`` ("Type: first 200 chars"); times in ms of Redis ``TIME``.
The probe lease holds ``<token>:<expiry ms>``.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Iterable
from datetime import UTC, datetime
from enum import IntEnum, StrEnum
from typing import Any, cast
from urllib.parse import urlsplit

from redis import Redis

from core import keys, scripts

__all__ = [
    "KEY_TTL_MS",
    "CircuitState",
    "Control",
    "Event",
    "circuit_name",
    "control",
    "force_closed",
    "force_open",
    "list_circuits",
    "reset",
    "snapshot",
]

logger = logging.getLogger("core.circuits")

KEY_TTL_MS = 86_400_000
"""Idle circuits vanish after a day: every write refreshes the expiry of its keys."""


_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._:-]")


def circuit_name(protocol: str, base_url: str, model: str) -> str:
    """The circuit of one upstream target, ``<protocol>~<host[:port][path]>~<model>``.

    Scheme, credentials and query of the URL are dropped; in host, path and model, each
    character outside ``[A-Za-z0-9._:-]`` becomes ``.``, so ``~`` only separates and the
    name is one safe URL path segment: ``hf~127.0.0.1:8081~simulator.echo-1``.
    """
    url = urlsplit(base_url)
    where = (url.hostname or "") + (f":{url.port}" if url.port else "") + url.path
    safe = _UNSAFE_NAME_CHARS.sub
    return f"{protocol}~{safe('.', where.rstrip('/'))}~{safe('.', model)}"


class CircuitState(IntEnum):
    """The ``code`` of a circuit's state hash."""

    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2
    FORCED_OPEN = 3
    FORCED_CLOSED = 4

    @property
    def label(self) -> str:
        """The name the API shows: ``closed``, ``open``, ``half-open``, ``forced_open``…"""
        return "half-open" if self is CircuitState.HALF_OPEN else self.name.lower()

    @property
    def pybreaker_name(self) -> str:
        """pybreaker's state name: forced states read as ``open`` / ``closed``."""
        if self is CircuitState.FORCED_OPEN:
            return "open"
        return "closed" if self is CircuitState.FORCED_CLOSED else self.label


class Event(StrEnum):
    """Transitions counted per circuit in its ``events`` hash."""

    OPENED = "opened"
    HALF_OPEN = "half_open"
    CLOSED = "closed"
    FORCED_OPEN = "forced_open"
    FORCED_CLOSED = "forced_closed"
    RESET = "reset"


class Control(StrEnum):
    """What an operator can do to a circuit."""

    FORCE_OPEN = "force_open"
    FORCE_CLOSED = "force_closed"
    RESET = "reset"


#: The Lua locals every circuit script starts with.
LUA_CONSTANTS = scripts.constants(CircuitState) + scripts.constants(Event, prefix="EVENT_")


@functools.cache
def _control_script() -> str:
    """control.lua with its codes, read on first use (no I/O at import time)."""
    return scripts.load(
        "core", "control", LUA_CONSTANTS + scripts.constants(Control, prefix="ACTION_")
    )


_LOG_EVENTS = {
    Control.FORCE_OPEN: "breaker.opened",
    Control.FORCE_CLOSED: "breaker.closed",
    Control.RESET: "breaker.closed",
}


def control(client: Redis, name: str, action: Control, reset_timeout_s: float) -> int:
    """Apply ``action`` to circuit ``name``; returns the new generation.

    ``reset_timeout_s`` is the open window the breakers use (``GENQ_BREAKER_RESET_TIMEOUT_S``):
    a forced-open circuit reports it as its ``retry_after``, as its rejections do.
    """
    window_ms = max(1, round(reset_timeout_s * 1000))
    args = [action.value, name, KEY_TTL_MS, window_ms]
    gen = int(cast(int, client.eval(_control_script(), 5, *keys.circuit(name), *args)))
    extra = {"circuit": name, "reason": action.value, "counts": {"generation": gen}}
    logger.warning(_LOG_EVENTS[action], extra=extra)
    return gen


def force_open(client: Redis, name: str, reset_timeout_s: float) -> int:
    """Reject every call to circuit ``name`` (reason ``circuit_forced_open``) until reset."""
    return control(client, name, Control.FORCE_OPEN, reset_timeout_s)


def force_closed(client: Redis, name: str, reset_timeout_s: float) -> int:
    """Admit every call to circuit ``name`` and count nothing, until reset or forced open."""
    return control(client, name, Control.FORCE_CLOSED, reset_timeout_s)


def reset(client: Redis, name: str, reset_timeout_s: float) -> int:
    """Put circuit ``name`` back to closed with zero failures (transition counts stay)."""
    return control(client, name, Control.RESET, reset_timeout_s)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def list_circuits(client: Redis, configured: Iterable[str] = ()) -> list[dict[str, Any]]:
    """:func:`snapshot` of every circuit ever written and every ``configured`` one (a
    configured target not called yet shows closed), sorted by name."""
    names: set[str | bytes] = client.smembers(keys.circuits())
    every = {_text(n) for n in names} | set(configured)
    return [snapshot(client, n) for n in sorted(every)]


def snapshot(client: Redis, name: str) -> dict[str, Any]:
    """Circuit ``name`` as the API shows it, read in one round trip (a pipeline).

    ``retry_after`` is what a job rejected now would be told, in seconds to the
    millisecond: open, the time to the next probe; half-open with a probe in flight, the
    rest of its lease (at most the open window); forced open, the breakers' reset
    timeout; otherwise 0. ``probe_due``: open, and its window has passed, so the next
    call is the probe. ``opened_at`` is ISO 8601 (UTC, ms), as every record's times.
    """
    state_key, probe_key, events_key, *_ = keys.circuit(name)
    pipe = client.pipeline(transaction=False)
    pipe.time()
    pipe.hgetall(state_key)
    pipe.hgetall(events_key)
    pipe.get(probe_key)
    clock, raw_state, raw_events, raw_lease = pipe.execute()
    now_ms = int(clock[0]) * 1000 + int(clock[1]) // 1000
    state = {_text(f): _text(v) for f, v in raw_state.items()}
    events = {_text(f): int(_text(v)) for f, v in raw_events.items()}
    code = CircuitState(int(state.get("code", 0)))
    lease_left = _lease_left(raw_lease, now_ms)
    window = max(int(state.get("window", 0)), int(state.get("reset", 0)))
    retry_ms = 0
    if code is CircuitState.OPEN:
        retry_ms = max(0, int(state.get("until", 0)) - now_ms)
    elif code is CircuitState.HALF_OPEN and lease_left > 0:
        retry_ms = min(lease_left, window)
    elif code is CircuitState.FORCED_OPEN:
        retry_ms = int(state.get("reset", 0))
    unhealthy = code in (CircuitState.OPEN, CircuitState.HALF_OPEN, CircuitState.FORCED_OPEN)
    opened = unhealthy and state.get("opened_at")
    return {
        "name": name,
        "state": code.label,
        "failure_count": int(state.get("fails", 0)),
        "opened_at": _iso(int(opened)) if opened else None,
        "retry_after": retry_ms / 1000,
        "probe_due": code is CircuitState.OPEN and retry_ms == 0,
        "last_failure": state.get("last_failure"),
        "probe_in_flight": code is CircuitState.HALF_OPEN and lease_left > 0,
        "generation": int(state.get("gen", 0)),
        "transitions": {event.value: events.get(event.value, 0) for event in Event},
    }


def _iso(epoch_ms: int) -> str:
    """Milliseconds of Redis ``TIME`` as ISO 8601 UTC, as ``core.contract.utcnow`` writes."""
    moment = datetime.fromtimestamp(epoch_ms / 1000, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _lease_left(raw: object, now_ms: int) -> int:
    """Milliseconds left on a probe lease ``<token>:<expiry ms>`` (0: none or expired)."""
    if raw is None:
        return 0
    _, _, expiry = _text(raw).rpartition(":")
    return max(0, int(expiry) - now_ms) if expiry.isdigit() else 0
