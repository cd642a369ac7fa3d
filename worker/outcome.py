"""The end of one run of a job: what the task is told, and the one write that records it.

Every path of a run ends in :class:`Recorder`'s single write of the job's final record
(its result or error, and the attempt that led there), or in a retry. The first final
write wins: a copy of the job that finishes second records nothing and is told so.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

from core.contract import Attempt, JobError, JobResult, utcnow
from core.errors import GenqError
from core.records import ExtraSet, Start

__all__ = ["Outcome", "Recorder", "Records"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    """What became of one run: a final result or error, or a retry after ``retry_in`` s.

    All three None: another copy of the job had already finished it."""

    result: JobResult | None = None
    error: JobError | None = None
    retry_in: float | None = None
    throttled: bool = False
    """The retry is one of the "slower" budget (``JobMessage.throttled``)."""
    circuit_wait: bool = False
    """The retry is a batch item waiting for its circuit (``JobMessage.circuit_waits``):
    bounded by its batch's window, not by a retry budget."""


class Records(Protocol):
    """Where a run is recorded: a job's record (``core.records.JobStore``) or a batch
    item's line (``worker.batch_output.BatchItemRecords``)."""

    def mark_running(self, job_id: str) -> Start:
        """Whether the run may call the upstream: run it, it is done (or stopped), or
        another copy of it is running."""
        ...

    def mark_queued(self, job_id: str, attempt: Attempt | None = None) -> None:
        """A retry waits for its countdown."""
        ...

    def finish(
        self,
        job_id: str,
        *,
        result: JobResult | None = None,
        error: JobError | None = None,
        attempt: Attempt | None = None,
        also_set: ExtraSet | None = None,
        started_at: str = "",
    ) -> bool:
        """The final write; False when another copy of the job wrote first."""
        ...


class Recorder:
    """Writes a run's final record into ``records``."""

    def __init__(self, records: Records) -> None:
        self.store = records

    def succeed(
        self,
        job_id: str,
        result: JobResult,
        attempt: Attempt | None,
        also_set: ExtraSet | None = None,
    ) -> Outcome:
        """Record ``result`` (and ``also_set``, the cache entry, in the same round trip)."""
        if not self._write(job_id, attempt, result=result, also_set=also_set):
            return Outcome()
        if result.degraded:
            extra = {"job_id": job_id, "source": result.source, "reason": result.fallback_reason}
            log.info("fallback.served", extra=extra)
        return Outcome(result=result)

    def fail(self, job_id: str, exc: GenqError, attempt: Attempt | None = None) -> Outcome:
        """Record the job as failed with the error a user may see (and its last attempt)."""
        error = JobError(type=exc.type, message=exc.message, retry_after=exc.retry_after)
        if not self._write(job_id, attempt, error=error):
            return Outcome()
        log.info("generation.failed", extra={"job_id": job_id, "error_type": exc.type})
        return Outcome(error=error)

    def _write(
        self,
        job_id: str,
        attempt: Attempt | None,
        *,
        result: JobResult | None = None,
        error: JobError | None = None,
        also_set: ExtraSet | None = None,
    ) -> bool:
        # A job answered without being marked running started when its attempt did.
        started_at = attempt.at if attempt else utcnow()
        written = self.store.finish(
            job_id,
            result=result,
            error=error,
            attempt=attempt,
            also_set=also_set,
            started_at=started_at,
        )
        if not written:
            # Another copy of the job answered first (or the record expired): its answer stands.
            log.info("generation.already_final", extra={"job_id": job_id})
        return written
