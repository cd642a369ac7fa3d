"""Job records in a real Redis: idempotent, first final answer wins, nothing reopens."""

from __future__ import annotations

import uuid

import pytest
import redis

from core.contract import Attempt, JobError, JobResult, JobStatus, utcnow
from core.records import JobStore, Start

pytestmark = pytest.mark.integration


@pytest.fixture
def store(redis_url: str) -> JobStore:
    return JobStore(redis.Redis.from_url(redis_url, decode_responses=True), ttl_s=60)


def result(text: str) -> JobResult:
    return JobResult(text=text, model="m", source="upstream", degraded=False, latency_ms=1.0)


def attempt(outcome: str) -> Attempt:
    return Attempt.model_validate({"at": utcnow(), "outcome": outcome})


def test_lifecycle_is_recorded_with_attempts(store: JobStore) -> None:
    """queued → running → queued (retry) → running → succeeded, attempts in order."""
    job_id = uuid.uuid4().hex
    store.create(job_id, owner="o")
    assert store.mark_running(job_id) is Start.RUN
    store.mark_queued(job_id, attempt("failed"))
    assert store.get(job_id).status == JobStatus.QUEUED  # type: ignore[union-attr]
    assert store.mark_running(job_id) is Start.RUN
    assert store.finish(job_id, result=result("first"), attempt=attempt("succeeded"))
    record = store.get(job_id)
    assert record is not None
    assert record.status == JobStatus.SUCCEEDED
    assert record.result == result("first")
    assert [a.outcome for a in record.attempts] == ["failed", "succeeded"]
    assert record.owner == "o"
    assert record.started_at is not None
    assert record.finished_at is not None


def test_a_final_job_is_never_reopened_or_overwritten(store: JobStore) -> None:
    """After the first final write, running/queued/finish are refused and change nothing."""
    job_id = uuid.uuid4().hex
    store.create(job_id, owner="o")
    assert store.finish(job_id, result=result("first"), attempt=attempt("succeeded"))
    assert store.mark_running(job_id) is Start.DONE
    store.mark_queued(job_id, attempt("failed"))
    error = JobError(type="service_unavailable", message="late duplicate")
    assert not store.finish(job_id, error=error, attempt=attempt("rejected"))
    record = store.get(job_id)
    assert record is not None
    assert record.status == JobStatus.SUCCEEDED
    assert record.result == result("first")
    assert record.error is None
    assert [a.outcome for a in record.attempts] == ["succeeded"]


def test_a_missing_job_is_not_created_by_the_worker(store: JobStore) -> None:
    """A worker's writes to an unknown (or expired) job create no record."""
    job_id = uuid.uuid4().hex
    assert store.mark_running(job_id) is Start.DONE
    assert not store.finish(job_id, result=result("x"))
    assert store.get(job_id) is None


def test_a_second_copy_finds_the_first_running_until_it_ends(store: JobStore) -> None:
    """While one copy holds the running lease, another is told BUSY; the first copy's
    final write releases it (and a finished job is DONE)."""
    job_id = uuid.uuid4().hex
    store.create(job_id, owner="o")
    assert store.mark_running(job_id) is Start.RUN
    assert store.mark_running(job_id) is Start.BUSY
    store.renew_leases([job_id])
    assert store.mark_running(job_id) is Start.BUSY
    assert store.finish(job_id, result=result("first"), attempt=attempt("succeeded"))
    assert store.mark_running(job_id) is Start.DONE


def test_a_retry_releases_the_lease(store: JobStore) -> None:
    """Going back to queued for a retry lets the retry (or any copy) run the job."""
    job_id = uuid.uuid4().hex
    store.create(job_id, owner="o")
    assert store.mark_running(job_id) is Start.RUN
    store.mark_queued(job_id, attempt("failed"))
    assert store.mark_running(job_id) is Start.RUN
