"""Which target answers a job: the primary, then the failover targets, in order.

    from the job's start target:
      its circuit refuses (open, forced open, probe taken)  → the next target, at once
      no call slot within the wait                          → interactive: the next target
                                                              batch item: it waits there
    a target admits and gives a slot                        → the call is made there
    every circuit refused                                   → the fallback (cache → excerpt)

A job's targets (:meth:`Router.targets`) are the primary (``GENQ_UPSTREAM_*``, for the
model the job names) and then ``GENQ_UPSTREAM_FAILOVER``'s, unless the job says
``"failover": "none"``. Every target has its own shared circuit and its own call limit
(both keyed by its circuit name), so a target that is down is skipped by every worker
after its circuit opens, without a timeout paid per job.

A transient failure at a target (counted against its circuit) ends the run with a
failover hop: ``worker.generation`` publishes the job again at once, to start at the next
target (``JobMessage.target``); backoff applies only when no target is left. An
interactive job that gets no slot at one target in its short wait tries the next before
any degraded answer; a batch item waits for a slot at the first target whose circuit
admits it, as it would with one target: failover is for a provider that is down, not
for one that is busy (its window is 24 h, and failover targets often cost more).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from core.contract import GenerateRequest, JobMessage
from core.errors import CircuitOpenError
from core.records import Start
from core.settings import Settings
from worker.breaker import Permit, SharedCircuitBreaker
from worker.limiter import ConcurrencyLimiter, Slot
from worker.outcome import Records
from worker.upstream import UpstreamTarget

__all__ = ["Admitted", "NoSlot", "Refused", "Router"]


@dataclass(frozen=True)
class Admitted:
    """A target admitted the call and gave it a slot; ``start`` says whether the job is
    to run (unless it is, the permit and the slot were given back)."""

    index: int
    target: UpstreamTarget
    breaker: SharedCircuitBreaker
    permit: Permit
    slot: Slot
    start: Start


@dataclass(frozen=True)
class Refused:
    """Every target's circuit refused the call."""

    errors: Sequence[CircuitOpenError]

    @property
    def soonest(self) -> CircuitOpenError:
        """The refusal of the circuit that may admit a call first."""
        return min(self.errors, key=lambda e: math.inf if e.retry_after is None else e.retry_after)


@dataclass(frozen=True)
class NoSlot:
    """A circuit admitted the call but no slot came free in time at ``target`` (the
    first such target, where a job that waits on waits)."""

    index: int
    target: UpstreamTarget


class Router:
    """A job's targets and the first of them that can take its call; one per process."""

    def __init__(
        self,
        settings: Settings,
        breaker_for: Callable[[UpstreamTarget], SharedCircuitBreaker],
        limiter: ConcurrencyLimiter,
    ) -> None:
        self._settings = settings
        self._breaker_for = breaker_for
        self._limiter = limiter
        self._failover = tuple(
            UpstreamTarget(
                protocol=target.protocol,
                base_url=str(target.url).rstrip("/"),
                model=target.model,
                token=settings.failover_token(n),
                connect_timeout_s=settings.upstream_connect_timeout_s,
                read_timeout_s=settings.upstream_timeout_s,
                prompt_route=target.prompt_route,
            )
            for n, target in enumerate(settings.upstream_failover)
        )
        # One primary per model named by jobs: built once, its circuit name computed once.
        self._primary = functools.lru_cache(maxsize=256)(self._make_primary)

    def _make_primary(self, model: str | None) -> UpstreamTarget:
        return UpstreamTarget.from_settings(self._settings, model)

    def targets(self, request: GenerateRequest) -> tuple[UpstreamTarget, ...]:
        """The primary for the job's model, then the failover targets (none when the job
        said ``"failover": "none"``)."""
        primary = self._primary(request.model)
        return (primary,) if request.failover == "none" else (primary, *self._failover)

    def admit(
        self,
        message: JobMessage,
        targets: Sequence[UpstreamTarget],
        first: int,
        records: Records,
        wait_s: float,
    ) -> Admitted | Refused | NoSlot:
        """The first target from ``first`` whose circuit admits the call and that gives
        it a slot within ``wait_s``. A batch item stops at the first target whose circuit
        admits it (``NoSlot`` when no slot came); an interactive job moves on."""
        refusals: list[CircuitOpenError] = []
        busy: NoSlot | None = None
        for index in range(first, len(targets)):
            target = targets[index]
            breaker = self._breaker_for(target)
            try:
                permit = breaker.admit()
                admitted = self._start(message, index, target, breaker, permit, records, wait_s)
            except CircuitOpenError as exc:
                refusals.append(exc)
                continue
            if admitted is not None:
                return admitted
            busy = busy or NoSlot(index, target)
            if message.batch is not None:
                break
        return busy or Refused(refusals)

    def _start(
        self,
        message: JobMessage,
        index: int,
        target: UpstreamTarget,
        breaker: SharedCircuitBreaker,
        permit: Permit,
        records: Records,
        wait_s: float,
    ) -> Admitted | None:
        """A call slot of ``target`` within ``wait_s`` (an interactive job ahead of every
        batch item), the circuit asked again (it may have opened during the wait:
        ``CircuitOpenError``), then the job marked running. Unless it is to run, the
        permit and the slot go back: no call will be made (a probe hands its lease back)."""
        slot, start = None, Start.DONE
        try:
            slot = self._limiter.acquire(target.name, wait_s, first=message.batch is None)
            if slot is None:
                return None
            permit = breaker.recheck(permit)
            start = records.mark_running(message.job_id)
            return Admitted(index, target, breaker, permit, slot, start)
        finally:
            if start is not Start.RUN:
                breaker.cancel(permit)
                if slot is not None:
                    self._limiter.release(slot)
