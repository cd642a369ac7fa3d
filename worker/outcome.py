"""The end of one run of a job: what the task is told, and the one write that records it.

A run ends in exactly one of three ways (:data:`Outcome`): :class:`Done` (this copy wrote
the final record, or, with the job store gone, could write nothing more), :class:`RetryAfter`
(run it again later, spending one of a :class:`Budget`), or :class:`AlreadyFinal` (another
copy wrote first, or the job is gone or its batch stopped). Every final write goes through
:class:`Recorder`, into a job's record or a batch item's line alike; the first final write
wins. ``worker.backoff.RetryPolicy.decide`` is the one place that says whether and when a
run is retried.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from core.contract import Attempt, JobError, JobResult, utcnow
from core.errors import GenqError
from core.records import ExtraSet, Start

__all__ = ["AlreadyFinal", "Budget", "Done", "Outcome", "Recorder", "Records", "RetryAfter"]

log = logging.getLogger(__name__)


class Budget(StrEnum):
    """What a retry spends: each is a count the job's message carries (``JobMessage``)."""

    RETRIES = "retries"
    """A transient upstream error, or the job store unreachable (``GENQ_MAX_RETRIES``)."""
    THROTTLED = "throttled"
    """The upstream said "slower": a 429, or no call slot in time
    (``GENQ_MAX_THROTTLED_RETRIES``)."""
    CIRCUIT_WAITS = "circuit_waits"
    """A batch item waiting for its open circuit: bounded by its batch's window."""
    LEASE_WAITS = "lease_waits"
    """Another copy holds the running lease: bounded by that copy's life."""
    FAILOVERS = "failovers"
    """A transient failure at one target: the next target, at once (``worker.router``);
    bounded by the job's targets and its retries (each pass starts at the first)."""


@dataclass(frozen=True)
class Done:
    """The run is over: ``result`` or ``error`` is the job's final record (written by this
    copy, or, when the job store stayed unreachable, the error it could not write)."""

    result: JobResult | None = None
    error: JobError | None = None


@dataclass(frozen=True)
class RetryAfter:
    """Run the job again in ``delay_s`` seconds, one more of ``budget`` spent."""

    delay_s: float
    budget: Budget
    target: int = 0
    """The index of the target the next run starts at (``JobMessage.target``)."""


@dataclass(frozen=True)
class AlreadyFinal:
    """Nothing for this copy to record: another copy wrote first, or the job (or its
    batch) will not run any more."""


Outcome = Done | RetryAfter | AlreadyFinal
"""What became of one run."""


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
            return AlreadyFinal()
        extra = {
            "job_id": job_id,
            "status": "succeeded",
            "source": "failover" if result.failover else result.source,
            "circuit": result.target or result.circuit,
        }
        if result.degraded:
            extra["fallback_reason"] = result.fallback_reason
        log.info("job.finished", extra=extra)
        return Done(result=result)

    def fail(self, job_id: str, exc: GenqError, attempt: Attempt | None = None) -> Outcome:
        """Record the job as failed with the error a user may see (and its last attempt)."""
        error = JobError(type=exc.type, message=exc.message, retry_after=exc.retry_after)
        if not self._write(job_id, attempt, error=error):
            return AlreadyFinal()
        extra = {"job_id": job_id, "status": "failed", "error_type": exc.type}
        log.info("job.finished", extra=extra)
        return Done(error=error)

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
