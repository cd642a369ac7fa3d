"""The generation service: one run of one job, in one order.

    admit → call slot → mark running → upstream → one final write
      └ refused / no slot in time / retries spent → fallback (cache → excerpt → one write)

No Celery here: ``worker.tasks`` decodes the message, calls :meth:`GenerationService.run`
and turns its :data:`~worker.outcome.Outcome` (done, retry after, already final) into a
Celery retry or nothing. Every retry is decided by ``RetryPolicy.decide``, from the
counts the message carries (``worker.outcome.Budget``). The rules:

- ``cache: "prefer"`` and a hit: answer from the cache, no upstream call.
- The shared breaker admits the call (``admit``), then the call takes one of the target's
  slots under the cluster's call limit (``worker.limiter``): a batch item waits for one
  (``GENQ_BATCH_SLOT_WAIT_S``, then retries later), an interactive job briefly
  (``GENQ_INTERACTIVE_SLOT_WAIT_S``, then the fallback answers, ``rate_limited``), or,
  when neither the cache nor an excerpt can answer it, as long as a batch item. The
  call's outcome moves the limit; a 429 lowers it and is retried after ``Retry-After``,
  and counts against the circuit only at the limit's floor.
- The job is marked running outside the guarded call (job-store errors never count
  against the circuit) and takes its running lease (kept alive by ``worker.leases``
  while the call lasts; a redelivered copy that finds it held retries later instead of
  calling the upstream too), then the upstream is called under ``guard``. Success is
  cached and recorded in one write; a transient error is retried (``RetryAfter``)
  while retries remain, then the job falls back with ``upstream_failed``; a rejection
  (4xx) fails at once.
- The breaker refuses (open, forced open, probe in flight), at admission or when asked
  again after a slot wait: no retry, no wait: the fallback answers (``worker.fallback``).
  A batch item that the cache and an excerpt cannot answer waits for the circuit instead
  (a countdown of the circuit's ``retry_after``, no thread held), until its batch is
  cancelled or its 24 h window ends.
- Redis (the job store) unreachable: the same retry policy, so the job runs again after
  a backed-off countdown, a bounded number of times.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import time
from collections.abc import Callable

from core.batches import BatchStore
from core.connections import get_redis
from core.contract import Attempt, GenerateRequest, JobError, JobMessage, JobResult
from core.errors import (
    CircuitOpenError,
    GenqError,
    SlotUnavailable,
    StorageUnavailable,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamUnavailable,
)
from core.records import LEASE_MS, JobStore, Start
from core.scheduler import scheduling_of
from core.settings import Settings, get_settings
from worker.backoff import RetryPolicy
from worker.batch_output import BatchItemRecords
from worker.breaker import SharedCircuitBreaker
from worker.cache import CachedGeneration, ResultCache, cache_key
from worker.fallback import Fallback, Refusal
from worker.leases import Heartbeat
from worker.limiter import ConcurrencyLimiter
from worker.outcome import AlreadyFinal, Budget, Done, Outcome, Recorder, Records, RetryAfter
from worker.router import Admitted, NoSlot, Refused, Router
from worker.streaming import StreamRelay, generate_stream
from worker.upstream import Generation, UpstreamTarget, generate

__all__ = ["GenerationService", "Outcome", "get_service"]

log = logging.getLogger(__name__)

CallUpstream = Callable[[UpstreamTarget, GenerateRequest], Generation]
StreamUpstream = Callable[[UpstreamTarget, GenerateRequest, StreamRelay], Generation]


class GenerationService:
    """Runs jobs against one configuration; thread-safe, one per process."""

    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        cache: ResultCache,
        breaker_for: Callable[[UpstreamTarget], SharedCircuitBreaker],
        call_upstream: CallUpstream = generate,
        stream_upstream: StreamUpstream = generate_stream,
        batches: BatchStore | None = None,
        limiter: ConcurrencyLimiter | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.batches = batches
        self.cache = cache
        self.fallback = Fallback(settings, cache)
        self.heartbeat = Heartbeat(store.renew_leases)
        self._breaker_for = breaker_for
        self._call_upstream = call_upstream
        self._stream_upstream = stream_upstream
        self.limiter = limiter or ConcurrencyLimiter.from_settings(settings, get_redis())
        self.retry_policy = RetryPolicy(
            settings.max_retries,
            settings.retry_base_s,
            settings.retry_cap_s,
            settings.max_throttled_retries,
        )
        self.router = Router(settings, breaker_for, self.limiter)

    def run(self, message: JobMessage) -> Outcome:
        """Run one attempt of the job and record what happened (a streamed job's relay
        is told when the job is final)."""
        try:
            outcome = self._run(message)
        except StorageUnavailable as exc:
            outcome = self._store_unavailable(message, exc)
        if message.stream and not isinstance(outcome, RetryAfter):
            StreamRelay(get_redis(), message.job_id).end()
        return outcome

    def fail(self, message: JobMessage, exc: GenqError) -> Outcome:
        """Record the job as failed with ``exc`` (an internal error), where its run would
        have recorded its answer: the job's record, or its batch's error file."""
        return Recorder(self.records_for(message)).fail(message.job_id, exc)

    def fail_undecodable(self, job_id: str, exc: GenqError) -> Outcome:
        """Record a job whose message does not decode as failed with ``exc`` (its record,
        if it is a job; a batch item's message that does not decode names no batch)."""
        return Recorder(self.store).fail(job_id, exc)

    def records_for(self, message: JobMessage) -> Records:
        """Where this run is recorded: the job's record, or its batch's output."""
        if message.batch is None:
            return self.store
        if self.batches is None:
            raise GenqError("this worker has no batch store")
        return BatchItemRecords(self.batches, message.batch)

    def _run(self, message: JobMessage) -> Outcome:
        request, job_id = message.request, message.job_id
        records = self.records_for(message)
        recorder = Recorder(records)
        targets = self.router.targets(request)
        key = None
        if request.cache != "off":
            # Cached under the request as it was asked: its first target's.
            scope = message.owner if self.settings.cache_scope == "key" else None
            key = cache_key(targets[0].protocol, targets[0].model, request, scope)
        if key and request.cache == "prefer":
            answered = self.fallback.cached(message, key, recorder)
            if answered is not None:
                return answered
        admitted = self._admit(message, key, targets, records, recorder)
        if not isinstance(admitted, Admitted):
            return admitted
        if admitted.start is Start.DONE:
            log.info("generation.already_final", extra={"job_id": job_id})
            return AlreadyFinal()
        if admitted.start is Start.BUSY:
            # Another copy (redelivered while this one was thought lost) is calling the
            # upstream: come back once its lease could have lapsed, in case it died.
            log.info("generation.running_elsewhere", extra={"job_id": job_id})
            wait = self.retry_policy.decide(Budget.LEASE_WAITS, message, LEASE_MS / 1000)
            assert wait is not None, "a lease wait is always allowed"
            return wait
        target = admitted.target
        relay = StreamRelay(get_redis(), job_id) if message.stream else None
        try:
            with (
                self.heartbeat.holding(job_id),
                admitted.breaker.guard(admitted.permit),
                self.limiter.holding(admitted.slot),
            ):
                if relay is None:
                    generation = self._call_upstream(target, request)
                else:
                    generation = self._stream_upstream(target, request, relay)
        except UpstreamRejected as exc:
            if admitted.index == 0 or exc.status not in _TARGET_REFUSALS:
                return recorder.fail(job_id, exc, Attempt.now("failed", exc.type))
            # A failover target that refuses the call itself (its token, its model) is
            # unavailable: the request is not at fault, and the fallback answers.
            unavailable = UpstreamUnavailable(
                f"failover target {target.name!r} refused the call ({exc.status}): check its "
                "token and model in GENQ_UPSTREAM_FAILOVER",
                status=exc.status,
            )
            refusal = Refusal.of(unavailable, "upstream_failed")
            return self.fallback.answer(message, key, refusal, recorder)
        except UpstreamError as exc:
            if relay is not None and relay.pieces:  # the client had part of an answer
                relay.error(exc.message)
            after = admitted.index + 1 if admitted.index + 1 < len(targets) else None
            retry = self._retry(records, message, exc, after)
            if retry is not None:
                return retry
            refusal = Refusal.of(exc, "upstream_failed")
            return self.fallback.answer(message, key, refusal, recorder)
        result = JobResult(
            text=generation.text,
            model=generation.model,
            source="upstream",
            degraded=False,
            latency_ms=round(generation.latency_ms, 3),
            usage=generation.usage,
            finish_reason=generation.finish_reason,
            target=target.name,
            failover=admitted.index > 0,
        )
        entry = CachedGeneration(
            generation.text, generation.model, generation.usage, time.time(), target.name
        )
        # The cache write rides in the job's final write: one round trip for both.
        also_set = self.cache.entry(key, entry) if key else None
        return recorder.succeed(job_id, result, Attempt.now("succeeded"), also_set)

    def _admit(
        self,
        message: JobMessage,
        key: str | None,
        targets: tuple[UpstreamTarget, ...],
        records: Records,
        recorder: Recorder,
    ) -> Admitted | Outcome:
        """A target's permit and call slot (``worker.router``), or how the run ends
        without them.

        A batch item waits up to ``GENQ_BATCH_SLOT_WAIT_S`` at the first target whose
        circuit admits it. An interactive job waits ``GENQ_INTERACTIVE_SLOT_WAIT_S`` at
        each target in turn, ahead of every batch item; then the cache or an excerpt
        answers it (``rate_limited``) if either can, and if neither can, it waits on, still
        first, at the first target that admitted it, until ``GENQ_BATCH_SLOT_WAIT_S`` has
        passed in all: a job only the provider can answer is not failed while the provider
        may still answer it."""
        settings, first = self.settings, min(message.target, len(targets) - 1)
        if message.batch is not None:
            routed = self.router.admit(message, targets, first, records, settings.batch_slot_wait_s)
        else:
            routed = self.router.admit(
                message, targets, first, records, settings.interactive_slot_wait_s
            )
            if isinstance(routed, NoSlot):
                refusal = _no_slot_refusal(routed.target)
                result = self.fallback.degraded(message, key, refusal)
                if result is not None:
                    log.info("generation.no_slot", extra={"job_id": message.job_id})
                    return recorder.succeed(message.job_id, result, refusal.attempt)
                spent = (len(targets) - first) * settings.interactive_slot_wait_s
                rest = max(0.0, settings.batch_slot_wait_s - spent)
                # Waits on at that one target (the first that admitted it).
                at = routed.index
                routed = self.router.admit(message, targets[: at + 1], at, records, rest)
        if isinstance(routed, Refused):
            if first > 0:
                # A failover hop found every later target refusing: back to the first,
                # after a backoff, on the retries budget (the hop itself spent none).
                retry = self.retry_policy.decide(Budget.RETRIES, message)
                if retry is not None:
                    refused = Attempt.now("rejected", routed.soonest.type)
                    records.mark_queued(message.job_id, refused)
                    return retry
            return self._refused(message, key, routed.soonest, records, recorder)
        if isinstance(routed, NoSlot):
            return self._no_slot(message, key, routed.target, recorder)
        return routed

    def _refused(
        self,
        message: JobMessage,
        key: str | None,
        exc: CircuitOpenError,
        records: Records,
        recorder: Recorder,
    ) -> Outcome:
        """The circuit refused the call: the fallback answers at once. A batch item that
        neither the cache nor an excerpt answers waits for the circuit instead of failing:
        its window is 24 h, and the circuit says when to ask again."""
        refusal = Refusal.of(exc, exc.reason)
        if message.batch is None:
            return self.fallback.answer(message, key, refusal, recorder)
        result = self.fallback.degraded(message, key, refusal)
        if result is not None:
            return recorder.succeed(message.job_id, result, refusal.attempt)
        # Asking the batch whether the item may still run also counts it as cancelled or
        # expired when its batch was cancelled or its window has ended.
        start = records.mark_running(message.job_id)
        if start is Start.DONE:
            return AlreadyFinal()
        if start is Start.RUN:
            records.mark_queued(message.job_id, refusal.attempt)
        wait = self.retry_policy.decide(Budget.CIRCUIT_WAITS, message, exc.retry_after)
        assert wait is not None, "a batch item may always wait for its circuit"
        extra = {"job_id": message.job_id, "circuit": exc.circuit, "delay_s": wait.delay_s}
        log.info("generation.circuit_wait", extra=extra)
        return wait

    def _no_slot(
        self,
        message: JobMessage,
        key: str | None,
        target: UpstreamTarget,
        recorder: Recorder,
    ) -> Outcome:
        """Every slot stayed taken: a batch item comes back later (while retries remain);
        an interactive job (or a batch item out of retries) fails ``rate_limited``, or is
        answered by the fallback."""
        extra = {"job_id": message.job_id, "circuit": target.name}
        retry = None
        if message.batch is not None:
            retry = self.retry_policy.decide(Budget.THROTTLED, message)
        if retry is not None:
            log.info("generation.no_slot_retry", extra={**extra, "delay_s": retry.delay_s})
            return retry
        log.info("generation.no_slot", extra=extra)
        return self.fallback.answer(message, key, _no_slot_refusal(target), recorder)

    def _retry(
        self, records: Records, message: JobMessage, exc: UpstreamError, after: int | None
    ) -> RetryAfter | None:
        """With a target ``after`` this one, a transient error that counts against the
        circuit sends the job on to it at once (a failover hop: a 429 the call limit
        answers by slowing down is not one). Else a 429 on the "slower" budget, or a
        transient error on the retries budget: back to queued with the failed attempt, to
        run again from the first target after a backed-off delay (never before the
        upstream's ``Retry-After``). None: no retry is left."""
        retry = None
        if after is not None and exc.transient and not _slows_down(exc):
            retry = self.retry_policy.decide(Budget.FAILOVERS, message)
            retry = retry and dataclasses.replace(retry, target=after)
        elif isinstance(exc, UpstreamRateLimited):
            retry = self.retry_policy.decide(Budget.THROTTLED, message, exc.retry_after)
        if retry is None and exc.transient:
            retry = self.retry_policy.decide(Budget.RETRIES, message, exc.retry_after)
        if retry is None:
            return None
        records.mark_queued(message.job_id, Attempt.now("failed", exc.type))
        extra = {"job_id": message.job_id, "error_type": exc.type, "delay_s": retry.delay_s}
        log.info("generation.retry_scheduled", extra={**extra, "budget": retry.budget.value})
        return retry

    def _store_unavailable(self, message: JobMessage, exc: StorageUnavailable) -> Outcome:
        """Redis is down: nothing can be recorded, so the job runs again later, or gives up."""
        extra = {"job_id": message.job_id, "error": exc.message, "retries_done": message.retries}
        retry = self.retry_policy.decide(Budget.RETRIES, message)
        if retry is not None:
            log.warning("generation.store_unavailable", extra={**extra, "delay_s": retry.delay_s})
            return retry
        log.error("generation.store_unavailable_gave_up", extra=extra)
        return Done(error=JobError(type=exc.type, message=exc.message))


_TARGET_REFUSALS = frozenset({401, 403, 404})
"""A failover target's answers that say it is misconfigured, not that the request is wrong."""


def _no_slot_refusal(target: UpstreamTarget) -> Refusal:
    """Why a job got no call slot in time, as its fallback answer says."""
    error = SlotUnavailable(
        f"every call slot of {target.name!r} stayed taken; the upstream is at the "
        "cluster's call limit",
        retry_after=1.0,
    )
    return Refusal.of(error, "rate_limited")


def breaker_factory(settings: Settings) -> Callable[[UpstreamTarget], SharedCircuitBreaker]:
    """One shared-breaker handle per upstream target, made on first use."""

    @functools.lru_cache(maxsize=256)
    def breaker_for(name: str) -> SharedCircuitBreaker:
        return SharedCircuitBreaker(
            name,
            get_redis,
            fail_max=settings.breaker_fail_max,
            reset_timeout=settings.breaker_reset_timeout_s,
            success_threshold=settings.breaker_success_threshold,
            max_reset_timeout=settings.breaker_max_reset_timeout_s,
            # The probe's lease outlives the slowest probe, so it never expires mid-call.
            probe_lease_s=settings.upstream_connect_timeout_s + settings.upstream_timeout_s + 1,
            window_s=settings.breaker_window_s,
            failure_rate_threshold=settings.breaker_failure_rate,
            min_calls=settings.breaker_min_calls,
            slow_call_s=settings.breaker_slow_call_s,
            # Only the upstream's own failures count, not its 4xx verdicts on a request,
            # nor a 429 the call limit can still answer by slowing down.
            exclude=[UpstreamRejected, _slows_down],
        )

    return lambda target: breaker_for(target.name)


def _slows_down(exc: BaseException) -> bool:
    """A 429 above the call limit's floor: the limit is cut, the circuit not told."""
    return isinstance(exc, UpstreamRateLimited) and not exc.at_floor


@functools.cache
def _service_for(pid: int) -> GenerationService:
    settings = get_settings()
    client = get_redis()
    return GenerationService(
        settings,
        JobStore(client, settings.job_ttl_s),
        ResultCache(client, settings.cache_ttl_s, settings.cache_max_entry_bytes),
        breaker_factory(settings),
        batches=BatchStore(client, settings.result_ttl_s, scheduling_of(settings)),
        limiter=ConcurrencyLimiter.from_settings(settings, client),
    )


def get_service() -> GenerationService:
    """This process's service, built on first use (after fork, in prefork children)."""
    return _service_for(os.getpid())
