"""The generation service: admit → upstream → record → fallback, for one job at a time.

No Celery here: ``worker.tasks`` decodes the message, calls :meth:`GenerationService.run`
and turns the :class:`Outcome` into a Celery retry or nothing. The rules:

- ``cache: "prefer"`` and a hit: answer from the cache, no upstream call.
- The shared breaker admits the call: success is cached and recorded; a transient
  error is retried (``Outcome.retry_in``) while retries remain, then degrades with
  ``upstream_failed``; a rejection (4xx) fails at once.
- The breaker refuses the call (open, forced open, probe in flight): no retry, no
  wait: answer from the cache, else an excerpt of the job's context documents, else
  fail with ``service_unavailable`` and the circuit's ``retry_after``.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from core.connections import get_redis
from core.contract import (
    Attempt,
    FallbackReason,
    GenerationParams,
    JobError,
    JobMessage,
    JobResult,
)
from core.errors import (
    CircuitOpenError,
    GenqError,
    JobFinished,
    StorageUnavailable,
    UpstreamError,
    UpstreamRejected,
)
from core.records import CacheMiss, ExtraSet, JobStore, utcnow
from core.settings import Settings, get_settings
from worker.backoff import RetryPolicy
from worker.breaker import SharedCircuitBreaker
from worker.cache import CachedGeneration, ResultCache, cache_key
from worker.excerpt import build_excerpt
from worker.upstream import Generation, UpstreamTarget, generate

__all__ = ["GenerationService", "Outcome", "get_service"]

log = logging.getLogger(__name__)

CallUpstream = Callable[[UpstreamTarget, str, GenerationParams], Generation]


#: Context up to this many characters is excerpted before the cache is read, so one
#: round trip records either answer; a job whose prompt turns out to be cached wastes that
#: excerpt, ~0.5 ms of CPU at this size (docs/benchmarks.md). Above it, the cache is read
#: first and the excerpt built only on a miss: two round trips, no waste.
EXCERPT_FIRST_MAX_CHARS = 20_000


class ServiceUnavailable(GenqError):
    """Raised (recorded) when the upstream cannot be used and no fallback exists."""

    type = "service_unavailable"


@dataclass(frozen=True)
class Outcome:
    """What became of one run: a final result or error, or a retry after ``retry_in`` s."""

    result: JobResult | None = None
    error: JobError | None = None
    retry_in: float | None = None


class GenerationService:
    """Runs jobs against one configuration; thread-safe, one per process."""

    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        cache: ResultCache,
        breaker_for: Callable[[UpstreamTarget], SharedCircuitBreaker],
        call_upstream: CallUpstream = generate,
    ) -> None:
        self.settings = settings
        self.store = store
        self.cache = cache
        self._breaker_for = breaker_for
        self._call_upstream = call_upstream
        self.retry_policy = RetryPolicy(
            settings.max_retries, settings.retry_base_s, settings.retry_cap_s
        )
        # One target per model named by jobs: built once, its circuit name computed once.
        self._target_for = functools.lru_cache(maxsize=256)(self._make_target)

    def _make_target(self, model: str | None) -> UpstreamTarget:
        return UpstreamTarget.from_settings(self.settings, model)

    def _start_and_call(self, message: JobMessage, target: UpstreamTarget) -> Generation:
        """The guarded call: mark the job running, then call the upstream.

        Marking inside the breaker's call means a job the circuit rejects never pays for
        it: its degraded answer is recorded in the one write that finishes it.
        """
        if not self.store.mark_running(message.job_id):
            raise JobFinished(f"job {message.job_id} is already final or gone")
        request = message.request
        return self._call_upstream(target, request.prompt, request.params)

    def run(self, message: JobMessage, retries_done: int = 0) -> Outcome:
        """Run one attempt of the job and record what happened."""
        request = message.request
        target = self._target_for(request.model)
        key = cache_key(target.protocol, target.model, request) if request.cache != "off" else None
        started = time.perf_counter()
        if key and request.cache == "prefer":
            answered = self._answer_from_cache(message, key, None, None, started)
            if answered is not None:
                return answered
        try:
            generation = self._breaker_for(target).call(self._start_and_call, message, target)
        except JobFinished:
            log.info("generation.already_final", extra={"job_id": message.job_id})
            return Outcome()
        except CircuitOpenError as exc:
            return self._degrade(message, key, exc, exc.reason)  # type: ignore[arg-type]
        except UpstreamRejected as exc:
            return self.fail(message.job_id, exc, _attempt("failed", exc))
        except UpstreamError as exc:
            if exc.transient and self.retry_policy.allows(retries_done):
                return self._retry(message, exc, retries_done)
            return self._degrade(message, key, exc, "upstream_failed")
        result = JobResult(
            text=generation.text,
            model=generation.model,
            source="upstream",
            degraded=False,
            latency_ms=round(generation.latency_ms, 3),
            usage=generation.usage,
        )
        entry = CachedGeneration(generation.text, generation.model, generation.usage, time.time())
        # The cache write rides in the job's final write: one round trip for both.
        also_set = self.cache.entry(key, entry) if key else None
        return self._finish(message, result, _attempt("succeeded", None), also_set)

    def fail(self, job_id: str, exc: GenqError, attempt: Attempt | None = None) -> Outcome:
        """Record the job as failed with the error a user may see (and its last attempt)."""
        error = JobError(type=exc.type, message=exc.message, retry_after=exc.retry_after)
        started_at = attempt.at if attempt else utcnow()
        self.store.finish(job_id, error=error, attempt=attempt, started_at=started_at)
        log.info("generation.failed", extra={"job_id": job_id, "error_type": exc.type})
        return Outcome(error=error)

    def _degrade(
        self, message: JobMessage, key: str | None, exc: GenqError, reason: FallbackReason
    ) -> Outcome:
        """Answer without the upstream: cache, then excerpt, else fail; never wait."""
        started = time.perf_counter()
        request = message.request
        rejected = isinstance(exc, CircuitOpenError)
        attempt = _attempt("rejected" if rejected else "failed", exc)
        circuit = exc.circuit if isinstance(exc, CircuitOpenError) else None
        if request.fallback == "none":
            return self.fail(message.job_id, _unavailable(exc, rejected), attempt)
        why = (reason, circuit, exc.retry_after)
        if key and sum(len(doc.text) for doc in request.context) > EXCERPT_FIRST_MAX_CHARS:
            # An excerpt of this much context costs more than a wasted one should: read
            # the cache first, and build the excerpt only on a miss.
            answered = self._answer_from_cache(message, key, attempt, why, started)
            if answered is not None:
                return answered
            key = None
        # Small context is excerpted before the cache is read, so that one round trip
        # records the cached answer if there is one, else this: nothing waits on a lookup.
        excerpt = build_excerpt(request.prompt, request.context, self.settings.excerpt_max_chars)
        result = None
        if excerpt is not None:
            result = JobResult(
                text=excerpt.text,
                model=request.model or self.settings.upstream_model,
                source="excerpt",
                degraded=True,
                latency_ms=_ms_since(started),
                fallback_reason=reason,
                circuit=circuit,
                retry_after=exc.retry_after,
                citations=excerpt.citations,
            )
        if key:
            answered = self._answer_from_cache(message, key, attempt, why, started, result)
            if answered is not None:
                return answered
        if result is None:
            return self.fail(message.job_id, _unavailable(exc, rejected), attempt)
        return self._finish(message, result, attempt)

    def _answer_from_cache(
        self,
        message: JobMessage,
        key: str,
        attempt: Attempt | None,
        why: tuple[FallbackReason, str | None, float | None] | None,
        started: float,
        otherwise: JobResult | None = None,
    ) -> Outcome | None:
        """Answer from the cache entry under ``key``, if any, else with ``otherwise`` (if
        given): looked up and recorded in one round trip (``latency_ms`` is the time
        before it). None when neither was recorded."""
        reason, circuit, retry_after = why or (None, None, None)
        fields = JobResult(
            text="",
            model="",
            source="cache",
            degraded=True,
            latency_ms=_ms_since(started),
            fallback_reason=reason,
            circuit=circuit,
            retry_after=retry_after,
        )
        started_at = attempt.at if attempt else utcnow()
        recorded = self.store.finish_from_cache(
            message.job_id, key, fields, attempt, started_at, otherwise
        )
        if isinstance(recorded, JobResult):
            _log_served(message.job_id, recorded)
            return Outcome(result=recorded)
        if recorded is CacheMiss.JOB_FINAL:
            log.info("generation.already_final", extra={"job_id": message.job_id})
            return Outcome()
        return None

    def _retry(self, message: JobMessage, exc: UpstreamError, retries_done: int) -> Outcome:
        delay = self.retry_policy.delay(retries_done, exc.retry_after)
        self.store.mark_queued(message.job_id, _attempt("failed", exc))
        log.info(
            "generation.retry_scheduled",
            extra={"job_id": message.job_id, "error_type": exc.type, "delay_s": delay},
        )
        return Outcome(retry_in=delay)

    def _finish(
        self,
        message: JobMessage,
        result: JobResult,
        attempt: Attempt | None,
        also_set: ExtraSet | None = None,
    ) -> Outcome:
        # A job answered without being marked running started when its attempt did.
        started_at = attempt.at if attempt else utcnow()
        recorded = self.store.finish(
            message.job_id, result=result, attempt=attempt, also_set=also_set, started_at=started_at
        )
        if not recorded:
            # Another copy of the job answered first (or the record expired): its answer stands.
            log.info("generation.already_final", extra={"job_id": message.job_id})
            return Outcome()
        if result.degraded:
            _log_served(message.job_id, result)
        return Outcome(result=result)


def _log_served(job_id: str, result: JobResult) -> None:
    log.info(
        "fallback.served",
        extra={"job_id": job_id, "source": result.source, "reason": result.fallback_reason},
    )


def _unavailable(exc: GenqError, rejected: bool) -> GenqError:
    """The error of a job with no answer: the circuit's, or the upstream's own."""
    if not rejected:
        return exc
    return ServiceUnavailable(
        f"the upstream is unavailable ({exc.message}) and this job has no fallback; "
        "retry after the time given",
        retry_after=exc.retry_after,
    )


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


def _attempt(outcome: str, exc: GenqError | None) -> Attempt:
    return Attempt.model_validate(
        {"at": utcnow(), "outcome": outcome, "error_type": exc.type if exc else None}
    )


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
            # Only the upstream's own failures count: not its 4xx verdicts on a request,
            # and not genq's job store (the guarded call also marks the job running).
            exclude=[UpstreamRejected, JobFinished, StorageUnavailable],
        )

    return lambda target: breaker_for(target.name)


@functools.cache
def _service_for(pid: int) -> GenerationService:
    settings = get_settings()
    client = get_redis()
    return GenerationService(
        settings,
        JobStore(client, settings.job_ttl_s),
        ResultCache(client, settings.cache_ttl_s, settings.cache_max_entry_bytes),
        breaker_factory(settings),
    )


def get_service() -> GenerationService:
    """This process's service, built on first use (after fork, in prefork children)."""
    return _service_for(os.getpid())
