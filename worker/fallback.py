"""The fallback: a job's answer without the upstream, in one order.

    cache → excerpt → one final write

When the circuit refuses the call, or retries of a transient failure run out, the job is
answered at once, never after a retry or a wait: from the result cache if it holds the
same request's answer (``source: cache``), else with an excerpt of the job's context
documents (``source: excerpt``), else it fails with ``service_unavailable`` (or, when the
upstream itself failed, with the upstream's error). A batch item the circuit refused
takes only the answers (:meth:`Fallback.degraded`): with neither, it waits for the
circuit instead of failing (``worker.generation``). ``fallback: "none"`` skips both
answers. Either answer is ``degraded`` and says why (``fallback_reason``), which
circuit refused and when it may be back (``retry_after``).

``latency_ms`` of a fallback answer is the worker's time to produce it: the cache
lookup, and the excerpt when the cache had no answer; the final write is not in it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from core.contract import Attempt, FallbackReason, JobMessage, JobResult
from core.errors import CircuitOpenError, GenqError, ServiceUnavailable, SlotUnavailable
from core.settings import Settings
from worker.cache import ResultCache
from worker.excerpt import build_excerpt
from worker.outcome import Outcome, Recorder

__all__ = ["Fallback", "Refusal"]


@dataclass(frozen=True)
class Refusal:
    """Why the upstream gave no answer: the error, the reason a result will show, and the
    attempt to record (``rejected`` when the circuit refused, ``failed`` otherwise)."""

    error: GenqError
    reason: FallbackReason
    attempt: Attempt

    @classmethod
    def of(cls, error: GenqError, reason: FallbackReason) -> Refusal:
        refused = isinstance(error, CircuitOpenError | SlotUnavailable)
        attempt = Attempt.now("rejected" if refused else "failed", error.type)
        return cls(error, reason, attempt)

    @property
    def circuit(self) -> str | None:
        return self.error.circuit if isinstance(self.error, CircuitOpenError) else None


class Fallback:
    """Answers jobs from the cache or their context; thread-safe, one per process."""

    def __init__(self, settings: Settings, cache: ResultCache) -> None:
        self._settings = settings
        self._cache = cache

    def answer(
        self, message: JobMessage, key: str | None, refusal: Refusal, recorder: Recorder
    ) -> Outcome:
        """Cache, then excerpt, then one final write; the job's error when neither answers."""
        result = self.degraded(message, key, refusal)
        if result is None:
            return recorder.fail(message.job_id, _unavailable(refusal), refusal.attempt)
        return recorder.succeed(message.job_id, result, refusal.attempt)

    def degraded(self, message: JobMessage, key: str | None, refusal: Refusal) -> JobResult | None:
        """The cache's answer, else an excerpt; None when neither answers (or the job said
        ``fallback: "none"``). Nothing is written."""
        if message.request.fallback != "auto":
            return None
        started = time.perf_counter()
        return self._from_cache(key, started, refusal) or self._excerpt(message, started, refusal)

    def cached(self, message: JobMessage, key: str, recorder: Recorder) -> Outcome | None:
        """``cache: "prefer"``: the cached answer recorded, before any upstream call; None
        on a miss (the job goes on to the upstream)."""
        result = self._from_cache(key, time.perf_counter(), None)
        if result is None:
            return None
        return recorder.succeed(message.job_id, result, None)

    def _from_cache(
        self, key: str | None, started: float, refusal: Refusal | None
    ) -> JobResult | None:
        hit = self._cache.get(key) if key else None
        if hit is None:
            return None
        reason, circuit, retry_after = _why(refusal)
        return JobResult(
            text=hit.text,
            model=hit.model,
            source="cache",
            degraded=True,
            latency_ms=_ms_since(started),
            usage=hit.usage,
            cached_from=hit.target,
            fallback_reason=reason,
            circuit=circuit,
            retry_after=retry_after,
        )

    def _excerpt(self, message: JobMessage, started: float, refusal: Refusal) -> JobResult | None:
        request = message.request
        excerpt = build_excerpt(request.text, request.context, self._settings.excerpt_max_chars)
        if excerpt is None:
            return None
        reason, circuit, retry_after = _why(refusal)
        return JobResult(
            text=excerpt.text,
            model=request.model or self._settings.upstream_model,
            source="excerpt",
            degraded=True,
            latency_ms=_ms_since(started),
            fallback_reason=reason,
            circuit=circuit,
            retry_after=retry_after,
            citations=excerpt.citations,
        )


def _why(refusal: Refusal | None) -> tuple[FallbackReason | None, str | None, float | None]:
    """``fallback_reason``, ``circuit`` and ``retry_after`` of a degraded result."""
    if refusal is None:
        return None, None, None
    return refusal.reason, refusal.circuit, refusal.error.retry_after


def _unavailable(refusal: Refusal) -> GenqError:
    """The error of a job with no answer: the circuit's, or the upstream's own."""
    error = refusal.error
    if not isinstance(error, CircuitOpenError):
        return error
    return ServiceUnavailable(
        f"the upstream is unavailable ({error.message}) and this job has no fallback; "
        "retry after the time given",
        retry_after=error.retry_after,
    )


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
