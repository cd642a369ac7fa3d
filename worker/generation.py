"""The generation service: run one job against the upstream and record what happened.

No Celery here: ``worker.tasks`` decodes the message, calls :class:`GenerationService`
and maps the errors it raises onto a Celery retry or a failed job. Everything else,
choosing the target, calling the upstream, recording attempts and the final record,
lives in this module so it can be tested without a worker.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable

from worker.backoff import RetryPolicy
from worker.connections import get_redis
from worker.contract import Attempt, GenerationParams, JobError, JobMessage, JobResult
from worker.errors import GenqError
from worker.records import JobStore, utcnow
from worker.settings import Settings, get_settings
from worker.upstream import Generation, UpstreamTarget, generate

__all__ = ["GenerationService", "get_service"]

log = logging.getLogger(__name__)

CallUpstream = Callable[[UpstreamTarget, str, GenerationParams], Generation]


class GenerationService:
    """Admit → upstream → record, for one job at a time (thread-safe)."""

    def __init__(
        self, settings: Settings, store: JobStore, call_upstream: CallUpstream = generate
    ) -> None:
        self.settings = settings
        self.store = store
        self.retry_policy = RetryPolicy(
            settings.max_retries, settings.retry_base_s, settings.retry_cap_s
        )
        self._call_upstream = call_upstream

    def target_for(self, message: JobMessage) -> UpstreamTarget:
        """The upstream target (protocol, URL, model) this job goes to."""
        return UpstreamTarget.from_settings(self.settings, message.request.model)

    def start(self, message: JobMessage) -> bool:
        """Mark the job running; False if it no longer needs running (final or expired)."""
        return self.store.mark_running(message.job_id)

    def run(self, message: JobMessage) -> JobResult:
        """Call the upstream once; on success record the result with its attempt.

        An ``UpstreamError`` propagates unrecorded: the caller decides between
        :meth:`retry_later` and :meth:`fail`, and each records the attempt.
        """
        target = self.target_for(message)
        request = message.request
        generation = self._call_upstream(target, request.prompt, request.params)
        result = JobResult(
            text=generation.text,
            model=generation.model,
            source="upstream",
            degraded=False,
            latency_ms=round(generation.latency_ms, 3),
            usage=generation.usage,
        )
        self.store.finish(message.job_id, result=result, attempt=_attempt("succeeded", None))
        return result

    def retry_later(self, message: JobMessage, exc: GenqError) -> None:
        """The job waits for a retry: back to ``queued``, with the failed attempt."""
        self.store.mark_queued(message.job_id, _attempt("failed", exc))
        log.info(
            "generation.retry_scheduled",
            extra={"job_id": message.job_id, "error_type": exc.type},
        )

    def fail(self, job_id: str, exc: GenqError, *, attempted: bool = True) -> None:
        """Record the job as failed with the error a user may see."""
        error = JobError(type=exc.type, message=exc.message, retry_after=exc.retry_after)
        attempt = _attempt("failed", exc) if attempted else None
        self.store.finish(job_id, error=error, attempt=attempt)
        log.info("generation.failed", extra={"job_id": job_id, "error_type": exc.type})


def _attempt(outcome: str, exc: GenqError | None) -> Attempt:
    return Attempt.model_validate(
        {"at": utcnow(), "outcome": outcome, "error_type": exc.type if exc else None}
    )


@functools.cache
def _service_for(pid: int) -> GenerationService:
    settings = get_settings()
    return GenerationService(settings, JobStore(get_redis(), settings.job_ttl_s))


def get_service() -> GenerationService:
    """This process's service, built on first use (after fork, in prefork children)."""
    return _service_for(os.getpid())
