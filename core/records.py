"""Job records: the one place a job's status, result and attempts are kept.

The API creates a record before it enqueues, so a job that exists is one the API
accepted; the worker moves it through ``running`` to a final status. Celery's result
backend is not used for this: a record carries the owner, timestamps and attempts, and
clients must never see Celery's ``PENDING`` for an id that does not exist.

Layout: hash ``genq:job:{id}`` (fields below) and list ``genq:job:{id}:attempts``,
both expiring ``job_ttl_s`` after the last write. Writes are idempotent, so a job that
is redelivered after its worker died can be run again and recorded again safely.
"""

from __future__ import annotations

import enum
import functools
import logging
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

import redis
from pydantic import BaseModel

from core import keys
from core._records_scripts import FINISH_FROM_CACHE, MARK_RUNNING, WRITE_UNLESS_FINAL
from core.contract import Attempt, JobError, JobResult, JobStatus
from core.errors import StorageUnavailable

__all__ = ["CacheMiss", "ExtraSet", "JobRecord", "JobStore", "utcnow"]

log = logging.getLogger(__name__)
T = TypeVar("T")

#: A key, value and TTL (seconds) to write along with a job's final record.
ExtraSet = tuple[str, bytes, int]


class CacheMiss(enum.Enum):
    """Why :meth:`JobStore.finish_from_cache` recorded no answer."""

    NO_ENTRY = "no_entry"
    UNREADABLE = "unreadable"
    JOB_FINAL = "job_final"


_CACHE_REPLIES = {
    -1: CacheMiss.JOB_FINAL,
    0: CacheMiss.JOB_FINAL,
    -2: CacheMiss.NO_ENTRY,
    -3: CacheMiss.UNREADABLE,
}


def utcnow() -> str:
    """Now, as the ISO-8601 UTC string job records use."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JobRecord(BaseModel):
    """A job as stored; the API turns it into the public job object."""

    id: str
    owner: str
    status: JobStatus
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None
    result: JobResult | None = None
    error: JobError | None = None
    attempts: list[Attempt] = []


class JobStore:
    """Reads and writes job records in Redis."""

    def __init__(self, client: redis.Redis, ttl_s: int) -> None:
        self._redis = client
        self._ttl_s = ttl_s
        self._mark_running = client.register_script(MARK_RUNNING)
        self._write_unless_final = client.register_script(WRITE_UNLESS_FINAL)
        self._finish_from_cache = client.register_script(FINISH_FROM_CACHE)

    def create(self, job_id: str, owner: str) -> JobRecord:
        """Write a new ``queued`` record; raises StorageUnavailable if Redis is down."""
        record = JobRecord(id=job_id, owner=owner, status=JobStatus.QUEUED, created_at=utcnow())
        fields: dict[Any, str] = {
            "owner": owner,
            "status": record.status.value,
            "created_at": record.created_at,
        }

        def write() -> None:
            pipe = self._redis.pipeline(transaction=False)
            pipe.hset(keys.job(job_id), mapping=fields)
            pipe.expire(keys.job(job_id), self._ttl_s)
            pipe.execute()

        self._guard(write)
        return record

    def delete(self, job_id: str) -> None:
        """Remove a record whose job could not be enqueued."""
        self._guard(lambda: self._redis.delete(keys.job(job_id), keys.job_attempts(job_id)))

    def get(self, job_id: str) -> JobRecord | None:
        """The record, or None if no such job exists (or it expired)."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.hgetall(keys.job(job_id))
        pipe.lrange(keys.job_attempts(job_id), 0, -1)
        fields, attempts = self._guard(pipe.execute)
        if not fields:
            return None
        return JobRecord(
            id=job_id,
            owner=fields["owner"],
            status=JobStatus(fields["status"]),
            created_at=fields["created_at"],
            started_at=fields.get("started_at"),
            finished_at=fields.get("finished_at"),
            result=JobResult.model_validate_json(fields["result"]) if "result" in fields else None,
            error=JobError.model_validate_json(fields["error"]) if "error" in fields else None,
            attempts=[Attempt.model_validate_json(a) for a in attempts],
        )

    def mark_running(self, job_id: str) -> bool:
        """Set ``running``; False when the record is missing or already final."""
        started = self._guard(
            lambda: self._mark_running([keys.job(job_id)], [utcnow(), self._ttl_s])
        )
        return bool(started)

    def mark_queued(self, job_id: str, attempt: Attempt | None = None) -> None:
        """Back to ``queued`` while a retry waits for its countdown (with the failed attempt)."""
        fields = {"status": JobStatus.QUEUED.value}
        self._guard(lambda: self._write(job_id, fields, attempt, "", None))

    def finish(
        self,
        job_id: str,
        *,
        result: JobResult | None = None,
        error: JobError | None = None,
        attempt: Attempt | None = None,
        also_set: ExtraSet | None = None,
        started_at: str = "",
        wait_for_redis_s: float = 60.0,
    ) -> bool:
        """Write the final status and the attempt that led to it, in one round trip.

        ``also_set`` rides along (the result cache's entry); ``started_at`` is recorded
        unless the job was marked running before. False when the job was already final
        (another copy answered first) or no longer exists. Retries while Redis is down,
        so an answer that was paid for is not lost.
        """
        status = JobStatus.SUCCEEDED if result is not None else JobStatus.FAILED
        fields: dict[str, str] = {"status": status.value, "finished_at": utcnow()}
        if result is not None:
            fields["result"] = result.model_dump_json(exclude_defaults=True)
        if error is not None:
            fields["error"] = error.model_dump_json(exclude_none=True)
        write = functools.partial(self._write, job_id, fields, attempt, started_at, also_set)
        return _until_redis_answers(write, wait_for_redis_s) == 1

    def finish_from_cache(
        self,
        job_id: str,
        cache_key: str,
        fields: JobResult,
        attempt: Attempt | None,
        started_at: str,
        otherwise: JobResult | None = None,
    ) -> JobResult | CacheMiss:
        """Record the answer cached under ``cache_key``, in the round trip that reads it;
        with no readable entry, record ``otherwise`` (if given) in that same round trip.

        ``fields`` gives everything but text, model and usage, which come from the entry.
        Returns the result recorded (``otherwise`` itself when that was), or why nothing
        was: no entry (or Redis unreachable: the caller's own final write waits for it),
        an unreadable entry (logged ``cache.corrupt``), or a job gone or already final.
        """
        tail = fields.model_dump_json(exclude_defaults=True, exclude={"text", "model", "usage"})
        encoded = attempt.model_dump_json(exclude_none=True) if attempt else ""
        other = otherwise.model_dump_json(exclude_defaults=True) if otherwise else ""
        job_keys = [keys.job(job_id), keys.job_attempts(job_id), cache_key]
        try:
            reply = self._finish_from_cache(
                keys=job_keys, args=[self._ttl_s, encoded, started_at, utcnow(), tail, other]
            )
        except redis.RedisError as exc:
            down = isinstance(exc, redis.ConnectionError | redis.TimeoutError)
            event = "cache.unavailable" if down else "cache.failed"
            log.warning(event, extra={"op": "finish_from_cache", "error": type(exc).__name__})
            return CacheMiss.NO_ENTRY
        if isinstance(reply, str | bytes):  # the result JSON written (str or bytes client)
            return JobResult.model_validate_json(reply)
        code = int(reply)
        if code in (-3, -5):
            # Not an entry genq wrote, or text with a lone surrogate (no result can hold it).
            log.warning("cache.corrupt", extra={"key": cache_key})
        if code < -3 and otherwise is not None:
            return otherwise
        return _CACHE_REPLIES[code]

    def _write(
        self,
        job_id: str,
        fields: Mapping[str, str],
        attempt: Attempt | None,
        started_at: str,
        also_set: ExtraSet | None,
    ) -> object:
        # A direct EVALSHA: a Script inside a redis-py pipeline costs an extra
        # SCRIPT EXISTS round trip on every execute.
        job_keys = [keys.job(job_id), keys.job_attempts(job_id)]
        extra: list[str | bytes | int] = ["", 0]
        if also_set is not None:
            job_keys.append(also_set[0])
            extra = [also_set[1], also_set[2]]
        encoded = attempt.model_dump_json(exclude_none=True) if attempt else ""
        pairs = [item for pair in fields.items() for item in pair]
        return self._write_unless_final(
            keys=job_keys, args=[self._ttl_s, encoded, started_at, *extra, *pairs]
        )

    @staticmethod
    def _guard(call: Callable[[], T]) -> T:
        try:
            return call()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise StorageUnavailable(f"job store unreachable: {type(exc).__name__}") from exc


def _until_redis_answers(write: Callable[[], T], budget_s: float) -> T:
    # While Redis is down Celery acks the task anyway; giving up here loses the answer.
    deadline = time.monotonic() + budget_s
    delay = 0.1
    while True:
        try:
            return write()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            if time.monotonic() + delay > deadline:
                raise StorageUnavailable("job store unreachable; result not recorded") from exc
            log.warning("records.write_retry", extra={"delay_s": delay})
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
