"""Job records: the one place a job's status, result and attempts are kept.

The API creates a record before it enqueues, so a job that exists is one the API
accepted; the worker moves it through ``running`` to a final status. Celery's result
backend is not used for this: a record carries the owner, timestamps and attempts, and
clients must never see Celery's ``PENDING`` for an id that does not exist.

Layout: hash ``genq:job:{id}`` (fields below, the attempts a JSON array in one of them,
so one ``HMGET`` reads a whole record; until the job is final, also the Celery message
it was enqueued with and its queue, which the reconciler sends again if the message is
lost), expiring ``job_ttl_s`` after the last write. Worker writes are Lua scripts
(``core/lua/``): the first final answer wins, so a job that is redelivered after its
worker died can be run and recorded again safely. Every call raises
``StorageUnavailable`` when Redis cannot be reached; retrying is the caller's policy.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from enum import Enum
from typing import Any, TypeVar, cast

import redis
from pydantic import BaseModel, TypeAdapter
from redis import asyncio as aioredis

from core import keys, scripts
from core.contract import QUEUE_INTERACTIVE, Attempt, JobError, JobResult, JobStatus, utcnow
from core.errors import StorageUnavailable
from core.quotas import Quota, refusal
from core.quotas import script as quota_script
from core.stats import Tally, tally

__all__ = [
    "LEASE_MS",
    "MAX_REPUBLISH",
    "AsyncJobs",
    "ExtraSet",
    "JobRecord",
    "JobStore",
    "Republished",
    "Start",
]

T = TypeVar("T")

#: A key, value and TTL (seconds) to write along with a job's final record.
ExtraSet = tuple[str, bytes, int]
LEASE_MS = 10_000
"""A running job's lease lasts this long unless its holder renews it (a third as often)."""


class Start(Enum):
    """What ``mark_running`` found: run the job, it is done (or gone), or another copy of
    it is running (its lease is alive)."""

    RUN = "run"
    DONE = "done"
    BUSY = "busy"


class Republished(Enum):
    """What ``JobStore.republish`` did with a job whose message is lost."""

    SENT = 1
    """Its kept message is back on its queue."""
    NOTHING_TO_DO = 0
    """It is final, or its record expired."""
    RUNNING = 2
    """A live copy holds its running lease."""
    NO_MESSAGE = 3
    """Its record kept no message (a job accepted before genq kept them)."""
    TOO_OFTEN = 4
    """It was sent again ``MAX_REPUBLISH`` times already."""
    STOPPING = 5
    """A batch item whose batch is being cancelled or is past its window."""


MAX_REPUBLISH = 3
"""How often a job's (or a batch item's) lost message is sent again before the job is
failed ``job_lost``: a message lost that often is lost for a reason a resend won't fix."""
_FIELDS = (
    "owner",
    "status",
    "created_at",
    "started_at",
    "finished_at",
    "result",
    "error",
    "attempts",
)
_ATTEMPTS: TypeAdapter[list[Attempt]] = TypeAdapter(list[Attempt])


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


def _record(job_id: str, values: list[Any]) -> JobRecord | None:
    """A record from its hash's ``_FIELDS``; None if it does not exist."""
    fields = {name: value for name, value in zip(_FIELDS, values, strict=True) if value}
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
        attempts=_ATTEMPTS.validate_json(fields["attempts"]) if "attempts" in fields else [],
    )


def _new(job_id: str, owner: str) -> tuple[JobRecord, list[str]]:
    """A new ``queued`` record, and its hash's fields as a flat list."""
    record = JobRecord(id=job_id, owner=owner, status=JobStatus.QUEUED, created_at=utcnow())
    fields = ["owner", owner, "status", record.status.value, "created_at", record.created_at]
    return record, fields


def _create_args(
    ttl_s: int, owner: str, quota: Quota, fields: list[str], message: bytes, within_s: float
) -> list[str | bytes | int]:
    """create_job.lua's ARGV: the caller's deadline, the ttl, the message, the owner and
    its limits, the fields."""
    deadline_ms = int((time.time() + within_s) * 1000)
    return [deadline_ms, ttl_s, message, keys.PREFIX, owner, *quota.args, *fields]


def _created(reply: object) -> None:
    """Raise what a create_job.lua reply that is not 1 says."""
    refused = refusal(reply)
    if refused is not None:
        raise refused
    if not reply:
        raise StorageUnavailable("the job store answered too late; nothing was accepted")


class AsyncJobs:
    """The job records for asyncio (the API's enqueues and polls): the same scripts and
    reads as :class:`JobStore`. Every read is fresh: never a cached copy, so a poll is
    never older than the moment it was asked."""

    def __init__(self, client: aioredis.Redis, ttl_s: int, quota: Quota | None = None) -> None:
        self._redis = client
        self._ttl_s = ttl_s
        self._quota = quota or Quota()
        self._create_job = client.register_script(quota_script("create_job"))

    async def create(
        self, job_id: str, owner: str, enqueue: tuple[str, bytes], within_s: float
    ) -> JobRecord:
        """:meth:`JobStore.create` with a message: the record and the message together,
        unless ``within_s`` has passed when Redis runs it; ``OverQuota`` when the owner
        is over a limit (nothing written)."""
        record, fields = _new(job_id, owner)
        queue, message = enqueue
        args = _create_args(self._ttl_s, owner, self._quota, fields, message, within_s)
        try:
            created = await self._create_job(
                keys=[keys.job(job_id), queue, keys.open_jobs()], args=args
            )
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise StorageUnavailable(f"job store unreachable: {type(exc).__name__}") from exc
        _created(created)
        return record

    async def get(self, job_id: str) -> JobRecord | None:
        """:meth:`JobStore.get`: the record in one ``HMGET``, or None."""
        try:
            values = await self._redis.hmget(keys.job(job_id), _FIELDS)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise StorageUnavailable(f"job store unreachable: {type(exc).__name__}") from exc
        return _record(job_id, values)


class JobStore:
    """Reads and writes job records in Redis (registering the scripts does no I/O)."""

    def __init__(self, client: redis.Redis, ttl_s: int, quota: Quota | None = None) -> None:
        self._redis = client
        self._ttl_s = ttl_s
        self._quota = quota or Quota()
        self._mark_running = client.register_script(scripts.load("core", "mark_running"))
        self._write_unless_final = client.register_script(
            scripts.load("core", "write_unless_final")
        )
        self._create_job = client.register_script(quota_script("create_job"))
        self._republish = client.register_script(scripts.load("core", "republish_job"))

    def create(
        self,
        job_id: str,
        owner: str,
        enqueue: tuple[str, bytes] | None = None,
        within_s: float = 5.0,
    ) -> JobRecord:
        """Write a new ``queued`` record. With ``enqueue`` (a queue and the job's message),
        push the message in the same script, which does nothing once ``within_s`` (the
        caller's own timeout) has passed: a Redis that hangs and resumes late finds a
        caller that already said no, and leaves no half-accepted job (clocks of the caller
        and Redis are assumed to agree to well within ``within_s``)."""
        record, fields = _new(job_id, owner)
        if enqueue is None:

            def write() -> object:
                pipe = self._redis.pipeline(transaction=False)
                pipe.hset(keys.job(job_id), items=fields)
                pipe.expire(keys.job(job_id), self._ttl_s)
                return pipe.execute()

            self._guard(write)
            return record
        queue, message = enqueue
        args = _create_args(self._ttl_s, owner, self._quota, fields, message, within_s)
        job_keys = [keys.job(job_id), queue, keys.open_jobs()]
        _created(self._guard(lambda: self._create_job(job_keys, args)))
        return record

    def delete(self, job_id: str) -> None:
        """Remove a record whose job could not be enqueued."""
        self._guard(lambda: self._redis.delete(keys.job(job_id)))

    def get(self, job_id: str) -> JobRecord | None:
        """The record, or None if no such job exists (or it expired)."""
        values = self._guard(lambda: self._redis.hmget(keys.job(job_id), _FIELDS))
        return _record(job_id, values)  # not the message it keeps

    def mark_running(self, job_id: str) -> Start:
        """Set ``running`` and take the job's running lease (``Start.RUN``); ``DONE`` when
        the record is missing or final, ``BUSY`` when another copy holds the lease."""
        job_keys = [keys.job(job_id), keys.job_lease(job_id), keys.open_jobs()]
        args: list[str | int] = [utcnow(), self._ttl_s, secrets.token_hex(8), LEASE_MS]
        found: Any = self._guard(lambda: self._mark_running(job_keys, args))
        return {1: Start.RUN, 2: Start.BUSY}.get(int(found), Start.DONE)

    def republish(self, job_id: str) -> Republished:
        """Put the message the job's record kept back on its queue, unless the job is
        final, a live copy holds its lease, or it was sent again too often already."""
        job_keys = [keys.job(job_id), keys.job_lease(job_id), keys.open_jobs()]
        found = self._guard(lambda: self._republish(job_keys, [job_id, MAX_REPUBLISH]))
        return Republished(int(cast(int, found)))

    def renew_leases(self, job_ids: Iterable[str]) -> None:
        """Extend the running leases of jobs this process is running (one round trip)."""
        pipe = self._redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.pexpire(keys.job_lease(job_id), LEASE_MS)
        self._guard(pipe.execute)

    def mark_queued(self, job_id: str, attempt: Attempt | None = None) -> None:
        """Back to ``queued`` while a retry waits for its countdown (with the failed attempt)."""
        fields = {"status": JobStatus.QUEUED.value}
        self._guard(lambda: self._write(job_id, fields, attempt, "", None, None))

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
        """Write the final status and the attempt that led to it, in one round trip.

        ``also_set`` rides along (the result cache's entry); ``started_at`` is recorded
        unless the job was marked running before. False when the job was already final
        (another copy answered first) or no longer exists.
        """
        status = JobStatus.SUCCEEDED if result is not None else JobStatus.FAILED
        fields: dict[str, str] = {"status": status.value, "finished_at": utcnow()}
        if result is not None:
            fields["result"] = result.model_dump_json(exclude_defaults=True)
        if error is not None:
            fields["error"] = error.model_dump_json(exclude_none=True)
        counted = tally(QUEUE_INTERACTIVE, job_id, result, error)
        written = self._guard(
            lambda: self._write(job_id, fields, attempt, started_at, also_set, counted)
        )
        return written == 1

    def _write(
        self,
        job_id: str,
        fields: Mapping[str, str],
        attempt: Attempt | None,
        started_at: str,
        also_set: ExtraSet | None,
        counted: Tally | None,
    ) -> object:
        # A direct EVALSHA: a Script inside a redis-py pipeline costs an extra
        # SCRIPT EXISTS round trip on every execute.
        job_keys = [keys.job(job_id), keys.job_lease(job_id), keys.open_jobs()]
        job_keys += [keys.stats("finished"), keys.stats("recent")]
        extra: list[str | bytes | int] = ["", 0]
        if also_set is not None:
            job_keys.append(also_set[0])
            extra = [also_set[1], also_set[2]]
        encoded = attempt.model_dump_json(exclude_none=True) if attempt else ""
        pairs = [item for pair in fields.items() for item in pair]
        tallied = [counted.field, counted.entry] if counted else ["", ""]
        args = [self._ttl_s, encoded, started_at, *extra, keys.jobs_done(), *tallied, *pairs]
        return self._write_unless_final(keys=job_keys, args=args)

    @staticmethod
    def _guard(call: Callable[[], T]) -> T:
        try:
            return call()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise StorageUnavailable(f"job store unreachable: {type(exc).__name__}") from exc
