"""A call slot for every upstream call: the worker side of ``core.capacity``'s limit.

    slot = limiter.acquire(target.name, wait_s)   # None: no slot within wait_s
    with limiter.holding(slot):                   # the call's outcome moves the limit
        generation = upstream.generate(target, request)

Waiting blocks on the target's freed-slot list (``BLPOP``), never polls: each call that
ends wakes one waiter, an interactive job (``first``) before any batch item. A held
slot's lease is renewed by this process's slot heartbeat (``worker.leases``) while the
call lasts, so a killed worker's slots lapse within ``core.capacity.SLOT_LEASE_MS``; a
wait also ends every ``WAKE_EVERY_S`` to look again, since nobody announces a lapse. A
429 at the adaptive limit's floor is marked (``UpstreamRateLimited.at_floor``) before
the breaker sees it: only such 429s count against the circuit.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from collections.abc import Iterable, Iterator
from typing import NamedTuple

from redis import Redis
from redis.exceptions import RedisError

from core.capacity import CallOutcome, CapacityStore, LimitOptions
from core.errors import GenqError, StorageUnavailable, UpstreamRateLimited, UpstreamTimeout
from core.settings import Settings
from core.stats import CallObservation, observe_call
from worker.leases import Heartbeat

__all__ = ["WAKE_EVERY_S", "ConcurrencyLimiter", "Slot", "limit_options", "outcome_of"]

log = logging.getLogger(__name__)

WAKE_EVERY_S = 1.0
"""Longest a waiter blocks before it looks again (lapsed leases free slots silently)."""


def limit_options(settings: Settings) -> LimitOptions:
    """The limit ``settings`` ask for (a slot's lease is ``SLOT_LEASE_MS``, renewed)."""
    return LimitOptions(
        mode=settings.upstream_limit,
        initial=settings.upstream_initial_in_flight,
        floor=settings.upstream_min_in_flight,
        ceiling=settings.upstream_max_in_flight,
    )


class Slot(NamedTuple):
    """A slot held for one call: its target, lease token, the epoch it was granted in,
    and how long it took to get."""

    target: str
    token: str
    epoch: int
    waited_ms: int


def outcome_of(exc: BaseException | None, elapsed_s: float, target_s: float | None) -> CallOutcome:
    """What a call that raised ``exc`` (None: answered) after ``elapsed_s`` tells the limit."""
    if exc is None:
        slow = target_s is not None and elapsed_s > target_s
        return CallOutcome.CONGESTED if slow else CallOutcome.OK
    if isinstance(exc, UpstreamRateLimited):
        return CallOutcome.THROTTLED
    if isinstance(exc, UpstreamTimeout):
        return CallOutcome.CONGESTED
    return CallOutcome.NEUTRAL


def _call_outcome(exc: BaseException) -> str:
    """The ``outcome`` label of a call that raised ``exc``: genq's error type."""
    return exc.type if isinstance(exc, GenqError) else "internal_error"


class ConcurrencyLimiter:
    """Slots of the cluster-wide limits, for this process's calls; thread-safe."""

    def __init__(self, store: CapacityStore, latency_target_s: float | None = None) -> None:
        self.store = store
        self._latency_target_s = latency_target_s
        self._heartbeat: Heartbeat[tuple[str, str]] = Heartbeat(self._renew, "genq-slots")

    @classmethod
    def from_settings(cls, settings: Settings, client: Redis) -> ConcurrencyLimiter:
        store = CapacityStore(client, limit_options(settings))
        return cls(store, settings.upstream_latency_target_s)

    def acquire(self, target: str, wait_s: float, *, first: bool = False) -> Slot | None:
        """A slot of ``target``, waiting at most ``wait_s``; None if none came free.
        ``first``: an interactive job, served before the batch items waiting.
        Raises StorageUnavailable when Redis does not answer."""
        token, started = secrets.token_hex(8), time.monotonic()
        try:
            waited_ms = 0  # until the first refusal, the job has not waited
            while True:
                left = wait_s - (time.monotonic() - started)
                wait_ms = max(0, round(left * 1000))
                grant = self.store.try_acquire(
                    target, token, waited_ms, first=first, wait_ms=wait_ms
                )
                if grant.granted:
                    return Slot(target, token, grant.epoch, waited_ms)
                left = wait_s - (time.monotonic() - started)
                if left <= 0:
                    self.store.note_wait(target, max(1, round(wait_s * 1000)), token)
                    return None
                self.store.wait_for_release(target, min(left, WAKE_EVERY_S), first=first)
                waited_ms = max(1, round((time.monotonic() - started) * 1000))
        except RedisError as exc:
            raise StorageUnavailable(f"call limit unreachable ({type(exc).__name__})") from exc

    @contextlib.contextmanager
    def holding(self, slot: Slot) -> Iterator[None]:
        """Run the call in a ``with`` block, the slot's lease kept alive; its outcome moves
        the limit when it ends."""
        started = time.monotonic()
        try:
            with self._heartbeat.holding((slot.target, slot.token)):
                yield
        except BaseException as exc:
            elapsed = time.monotonic() - started
            observed = observe_call(slot.target, _call_outcome(exc), elapsed)
            outcome = outcome_of(exc, elapsed, self._latency_target_s)
            at_floor = self.release(slot, outcome, observed)
            if isinstance(exc, UpstreamRateLimited) and at_floor:
                exc.at_floor = True
            raise
        elapsed = time.monotonic() - started
        observed = observe_call(slot.target, "ok", elapsed)
        self.release(slot, outcome_of(None, elapsed, self._latency_target_s), observed)

    def _renew(self, held: Iterable[tuple[str, str]]) -> None:
        try:
            self.store.renew(held)
        except RedisError as exc:
            raise StorageUnavailable(f"call limit unreachable ({type(exc).__name__})") from exc

    def release(
        self,
        slot: Slot,
        outcome: CallOutcome = CallOutcome.NEUTRAL,
        observed: CallObservation | None = None,
    ) -> bool:
        """Give ``slot`` back (``observed``: the call it held, counted in the cluster's
        histogram); returns whether it was a 429 at the floor. A release that Redis does
        not take is logged and left to the lease's expiry."""
        try:
            released = self.store.release(slot.target, slot.token, outcome, slot.epoch, observed)
        except RedisError as exc:
            extra = {"target": slot.target, "error": type(exc).__name__}
            log.warning("limiter.release_failed", extra=extra)
            return False
        return released.at_floor
