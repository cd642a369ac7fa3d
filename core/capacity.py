"""One call limit per upstream target, shared by every worker of the cluster through Redis.

A call takes a slot before it goes upstream and gives it back when it ends; a slot is a
lease in a sorted set (token -> expiry), renewed by its holder's heartbeat while the
call lasts, so the slots of a killed worker come back by themselves within
``SLOT_LEASE_MS``. The limit is ``fixed`` or ``adaptive`` (AIMD, in
``lua/limit_release.lua``): it grows while calls succeed and is cut on 429s, timeouts
and slow answers. Interactive jobs go first: while one waits for a slot, batch items
leave it one and the next freed slot wakes it. The worker side (waiting for a slot,
classifying a call's outcome) is ``worker.limiter``; this module holds the Redis side
and the snapshot the API shows.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal, NamedTuple, cast

from redis import Redis
from redis.commands.core import Script

from core import keys, scripts
from core.circuits import KEY_TTL_MS
from core.stats import CallObservation

__all__ = [
    "SLOT_LEASE_MS",
    "CallOutcome",
    "CapacityStore",
    "Grant",
    "LimitOptions",
    "Released",
    "snapshot",
    "with_limits",
]


SLOT_LEASE_MS = 10_000
"""A call slot's lease: its holder renews it a third as often while the call lasts
(``worker.leases``), so a dead holder's slot comes back within this, whatever the call's
length."""


class CallOutcome(StrEnum):
    """What a finished call tells the limit."""

    OK = "ok"  # answered: the limit may grow
    THROTTLED = "throttled"  # 429: cut
    CONGESTED = "congested"  # timed out, or slower than the latency target: cut
    NEUTRAL = "neutral"  # anything else (a 5xx is the breaker's business, a 4xx the job's)


@dataclass(frozen=True)
class LimitOptions:
    """How a target's limit behaves (``GENQ_UPSTREAM_*``); every worker should agree."""

    mode: Literal["adaptive", "fixed"] = "adaptive"
    initial: int = 32
    floor: int = 1
    ceiling: int = 512
    decrease: float = 0.9
    """The factor of one cut: gentle, because one cut is made per round of calls."""
    lease_ms: int = SLOT_LEASE_MS
    """A slot's lease, renewed by its holder while the call lasts (``SLOT_LEASE_MS``)."""

    def __post_init__(self) -> None:
        if not 1 <= self.floor <= self.ceiling:
            raise ValueError(f"need 1 <= floor <= ceiling, got {self.floor}, {self.ceiling}")
        if not 0 < self.decrease < 1:
            raise ValueError(f"decrease must be in (0, 1), got {self.decrease}")
        if self.lease_ms <= 0:
            raise ValueError(f"lease_ms must be > 0, got {self.lease_ms}")

    @property
    def packed(self) -> str:
        """ARGV[1] of the limit scripts (``lua/limit_prelude.lua``)."""
        initial = min(max(self.initial, self.floor), self.ceiling)
        fields = (self.mode, initial, self.floor, self.ceiling, self.decrease, KEY_TTL_MS)
        return ":".join(map(str, fields))


class Grant(NamedTuple):
    """The answer to a request for a slot."""

    granted: bool
    in_flight: int
    limit: float
    epoch: int


class Released(NamedTuple):
    """The limit after a call gave its slot back."""

    limit: float
    in_flight: int
    at_floor: bool
    """A 429 at the adaptive limit's floor: the provider refuses even one call at a time."""


@functools.cache
def _scripts() -> tuple[str, str, str]:
    prelude = scripts.load("core", "limit_prelude")
    acquire = scripts.load("core", "limit_acquire", prelude)
    return (
        acquire,
        scripts.load("core", "limit_release", prelude),
        scripts.load("core", "limit_renew"),
    )


class CapacityStore:
    """The call limits in Redis (registering the scripts does no I/O)."""

    def __init__(self, client: Redis, options: LimitOptions) -> None:
        self._redis = client
        self.options = options
        acquire, release, renew = _scripts()
        self._acquire: Script = client.register_script(acquire)
        self._release: Script = client.register_script(release)
        self._renew: Script = client.register_script(renew)

    def try_acquire(
        self, target: str, token: str, waited_ms: int = 0, *, first: bool = False, wait_ms: int = 0
    ) -> Grant:
        """Take a slot of ``target`` for ``token`` if one is free (one round trip);
        ``waited_ms``, the time already spent waiting, is counted if it is granted.

        ``first``: an interactive job, which goes before batch items. Refused, a caller is
        registered as waiting for ``wait_ms`` (0: not at all): the adaptive limit grows
        only while someone waits; while an interactive job waits, every batch item leaves
        it a slot and the next freed slot wakes it (:meth:`wait_for_release`).
        """
        args: list[str | int] = [
            self.options.packed,
            token,
            self.options.lease_ms,
            waited_ms,
            int(first),
            wait_ms,
        ]
        reply = _text(self._acquire(keys.call_limit(target), args))
        granted, held, limit, epoch = reply.split(":")
        return Grant(granted == "1", int(held), float(limit), int(epoch))

    def release(
        self,
        target: str,
        token: str,
        outcome: CallOutcome,
        epoch: int,
        observed: CallObservation | None = None,
    ) -> Released:
        """Give ``token``'s slot back and let ``outcome`` move the limit; ``observed``, the
        call, is counted in the cluster's histogram (``core.stats``), in the same round
        trip."""
        args: list[str | int | float] = [self.options.packed, token, outcome.value, epoch]
        release_keys = keys.call_limit(target)
        if observed is not None:
            release_keys.append(keys.stats("calls"))
            args += [observed.bucket, observed.total, observed.seconds]
        reply = _text(self._release(release_keys, args))
        limit, held, at_floor = reply.split(":")
        return Released(float(limit), int(held), at_floor == "1")

    def renew(self, held: Iterable[tuple[str, str]]) -> None:
        """Extend the leases of the slots ``held`` ((target, token) pairs) by a lease from
        now (one round trip for all); a slot already released stays released."""
        by_target: dict[str, list[str]] = {}
        for target, token in held:
            by_target.setdefault(target, []).append(token)
        pipe = self._redis.pipeline(transaction=False)
        for target, tokens in by_target.items():
            leases = keys.call_limit(target)[1]
            self._renew(keys=[leases], args=[self.options.lease_ms, *tokens], client=pipe)
        pipe.execute()

    def note_wait(self, target: str, waited_ms: int, token: str | None = None) -> None:
        """Count a wait that ended without a slot (the job was answered otherwise); the
        caller's ``token`` stops waiting."""
        state, _, _, waiters, _, waiting = keys.call_limit(target)
        pipe = self._redis.pipeline(transaction=False)
        pipe.hincrby(state, "waited_ms", max(0, waited_ms))
        pipe.hincrby(state, "waits", 1)
        pipe.hincrby(state, "wait_timeouts", 1)
        if token is not None:
            pipe.zrem(waiters, token)
            pipe.zrem(waiting, token)
        pipe.execute()

    def wait_for_release(self, target: str, timeout_s: float, *, first: bool = False) -> None:
        """Block until a slot of ``target`` is freed, or ``timeout_s`` passes (BLPOP: no
        polling; each freed slot wakes one waiter, the longest waiting first, and an
        interactive job (``first``) before any batch item)."""
        names = keys.call_limit(target)
        self._redis.blpop([names[4] if first else names[2]], timeout=max(0.001, timeout_s))


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def snapshot(client: Redis, target: str) -> dict[str, Any] | None:
    """Target ``target``'s limit as the API shows it; None if no call has used it.

    ``in_flight`` counts live leases, ``interactive_waiting`` the interactive jobs waiting
    for a slot (batch items leave one to each), ``batch_waiting`` the batch items;
    ``waited_s`` is the total time jobs waited for a slot, over ``waits`` waits
    (``wait_timeouts`` of them ended without one).
    """
    state_key, leases_key, _, waiters_key, _, waiting_key = keys.call_limit(target)
    pipe = client.pipeline(transaction=False)
    pipe.time()
    pipe.hgetall(state_key)
    clock, raw = pipe.execute()
    if not raw:
        return None
    now_ms = int(clock[0]) * 1000 + int(clock[1]) // 1000
    state = {_text(f): _text(v) for f, v in cast(dict[Any, Any], raw).items()}
    live = client.pipeline(transaction=False)
    live.zcount(leases_key, f"({now_ms}", "+inf")
    live.zcount(waiters_key, f"({now_ms}", "+inf")
    live.zcount(waiting_key, f"({now_ms}", "+inf")
    in_flight, interactive_waiting, batch_waiting = (int(n) for n in live.execute())
    mode = state.get("mode", "adaptive")
    limit = float(state.get("ceiling" if mode == "fixed" else "limit", 0))

    def count(name: str) -> int:
        return int(state.get(name, 0))

    return {
        "mode": mode,
        "limit": math.floor(limit),
        "floor": count("floor"),
        "ceiling": count("ceiling"),
        "in_flight": in_flight,
        "interactive_waiting": interactive_waiting,
        "batch_waiting": batch_waiting,
        "calls": count("calls"),
        "throttled": count("throttled"),
        "cuts": count("cuts"),
        "waits": count("waits"),
        "wait_timeouts": count("wait_timeouts"),
        "waited_s": count("waited_ms") / 1000,
    }


def with_limits(client: Redis, circuits: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``circuits`` (``core.circuits`` snapshots), each with its target's ``limit``."""
    return [{**c, "limit": snapshot(client, c["name"])} for c in circuits]
