"""Batches: OpenAI's Batch API objects, and the records their items write as they run.

Layout (``core.keys``): the batch hash (owner, status, OpenAI's timestamps, counts,
errors), the items hash (index → running | done | cancelled), and two lists, the output
and error lines, appended as items finish; each owner's batch ids in a sorted set.
Everything expires ``GENQ_RESULT_TTL_S`` after its last write.

Lifecycle: ``create`` writes the batch as ``validating``; the API validates every input
line, then either ``fail``s it with the line errors or ``start``s it, which in one Redis
transaction keeps every item's message, moves it to ``in_progress`` and enrolls it with
the scheduler (a batch is never partly accepted); the scheduler (``core.scheduler``) then lets its
items onto the batch queue in turn. Workers call ``item_start`` (which takes the item's
running lease, as a job's ``mark_running`` does) and ``item_finish`` (Lua,
``core/lua/``): the first final line of an item wins, and the item that accounts for
the last one finalizes the batch (``completed``, or ``cancelled`` / ``expired`` when a
cancel or the 24 h window stopped items before they ran). A batch still ``validating``
after ``STALE_VALIDATING_S`` (its API process died mid-way) is failed with a reason by
the reconciler's sweep (:meth:`BatchStore.fail_stale`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import secrets
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Literal, TypeVar

import redis
from pydantic import BaseModel

from core import keys, scripts
from core.contract import BatchEndpoint
from core.errors import StorageUnavailable
from core.paging import newest_first
from core.records import LEASE_MS, MAX_REPUBLISH, Republished, Start
from core.scheduler import Scheduler, Scheduling
from core.stats import Tally

__all__ = [
    "BatchCounts",
    "BatchError",
    "BatchRecord",
    "BatchSources",
    "BatchStore",
    "BatchTimes",
    "item_request_id",
    "new_batch_id",
]

T = TypeVar("T")
BatchStatus = Literal[
    "validating",
    "failed",
    "in_progress",
    "finalizing",
    "completed",
    "expired",
    "cancelling",
    "cancelled",
]
#: A batch left ``validating`` this long lost the API process that was enqueueing it.
STALE_VALIDATING_S = 600
#: The one completion window OpenAI accepts, and genq too.
COMPLETION_WINDOW_S = 24 * 3600
#: Lines read from Redis per range when a batch's output is streamed.
LINES_PER_READ = 1000


def new_batch_id() -> str:
    return f"batch_{uuid.uuid4().hex}"


def item_request_id(batch_id: str, index: int) -> str:
    """An item's request id (its task id, and ``id`` in its output line): the same for
    every run of the item."""
    digest = hashlib.sha1(f"{batch_id}:{index}".encode(), usedforsecurity=False)
    return f"batch_req_{digest.hexdigest()[:24]}"


class BatchError(BaseModel):
    """One reason a batch failed validation; ``line`` counts from 1."""

    code: str
    message: str
    line: int | None = None
    param: str | None = None


class BatchTimes(BaseModel):
    """A batch's moments (epoch seconds): OpenAI's (``TIME_FIELDS``), and genq's own
    ``active_at`` (an item last started or ended: the reconciler's clock)."""

    created_at: int
    in_progress_at: int | None = None
    expires_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    active_at: int | None = None


class BatchCounts(BaseModel):
    """A batch's items (released: let onto the queue by the scheduler so far) and the
    bytes of its output and error files."""

    total: int = 0
    released: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    output_bytes: int = 0
    error_bytes: int = 0


class BatchSources(BaseModel):
    """Where the batch's completed items were answered from: ``upstream`` counts the
    primary target's answers, ``failover`` the failover targets' (``source: upstream``
    in their lines, ``failover: true``)."""

    upstream: int = 0
    failover: int = 0
    cache: int = 0
    excerpt: int = 0


class BatchRecord(BaseModel):
    """A batch as stored."""

    id: str
    owner: str
    status: BatchStatus
    endpoint: BatchEndpoint
    input_file_id: str
    completion_window: str
    metadata: dict[str, str] | None = None
    output_file_id: str
    error_file_id: str
    errors: list[BatchError] | None = None
    times: BatchTimes
    counts: BatchCounts
    sources: BatchSources

    @property
    def backlog(self) -> int:
        """Items still waiting with the scheduler (a stopped batch's are counted
        cancelled)."""
        return self.counts.total - self.counts.released if self.status == "in_progress" else 0


@functools.cache
def _script(name: str) -> str:
    """A batch script after batch_prelude.lua (read on first use)."""
    return scripts.load("core", name, scripts.load("core", "batch_prelude"))


class BatchStore:
    """Batches in Redis; every call raises ``StorageUnavailable`` when Redis is down."""

    def __init__(
        self, client: redis.Redis, ttl_s: int, scheduling: Scheduling | None = None
    ) -> None:
        self._redis = client
        self._ttl_s = ttl_s
        self.scheduler = Scheduler(client, scheduling or Scheduling())
        self._start = client.register_script(_script("batch_item_start"))
        self._finish = client.register_script(_script("batch_item_finish"))
        self._cancel = client.register_script(_script("batch_cancel"))
        self._republish = client.register_script(_script("republish_item"))

    # The API's side -------------------------------------------------------------

    def create(
        self,
        owner: str,
        input_file_id: str,
        endpoint: BatchEndpoint,
        completion_window: str,
        metadata: Mapping[str, str] | None,
        output_file_id: str,
        error_file_id: str,
    ) -> BatchRecord:
        """Write a new batch, ``validating``."""
        batch_id, now = new_batch_id(), int(time.time())
        fields: dict[Any, str | int] = {
            "id": batch_id,
            "owner": owner,
            "status": "validating",
            "endpoint": endpoint,
            "input_file_id": input_file_id,
            "completion_window": completion_window,
            "output_file_id": output_file_id,
            "error_file_id": error_file_id,
            "created_at": now,
            "expires_at": now + COMPLETION_WINDOW_S,
        }
        if metadata is not None:
            fields["metadata"] = json.dumps(dict(metadata))

        def write() -> None:
            pipe = self._redis.pipeline(transaction=True)
            pipe.hset(keys.batch(batch_id), mapping=fields)
            pipe.expire(keys.batch(batch_id), self._ttl_s)
            pipe.zadd(keys.batches(owner), {batch_id: time.time() * 1000})
            pipe.expire(keys.batches(owner), self._ttl_s)
            pipe.zadd(keys.validating_batches(), {batch_id: now})  # until it starts or fails
            pipe.execute()

        self._guard(write)
        record = self.get(batch_id)
        assert record is not None  # just written
        return record

    def fail(self, batch_id: str, errors: list[BatchError]) -> None:
        """Validation failed: nothing was enqueued; the batch says why."""
        encoded = json.dumps([e.model_dump(exclude_none=True) for e in errors])
        fields: dict[Any, str | int] = {
            "status": "failed",
            "failed_at": int(time.time()),
            "errors": encoded,
        }
        self._guard(lambda: self._redis.hset(keys.batch(batch_id), mapping=fields))

    def start(
        self, batch_id: str, owner: str, queue: str, messages: Iterable[bytes], total: int
    ) -> bool:
        """Keep every item's message, move the batch to ``in_progress`` and enroll it with
        the scheduler, which releases its first items onto ``queue``, in one transaction;
        False (nothing kept) when the batch is no longer ``validating`` (cancelled
        meanwhile)."""
        key = keys.batch(batch_id)

        def enqueue() -> bool:
            with self._redis.pipeline(transaction=True) as pipe:
                pipe.watch(key)  # type: ignore[no-untyped-call]
                if _text(pipe.hget(key, "status")) != "validating":
                    return False
                pipe.multi()
                pending: list[bytes] = []
                kept = keys.batch_messages(batch_id)  # released from here, or sent again
                sent = 0
                for message in messages:
                    pending.append(message)
                    if len(pending) == 1000:
                        sent = _keep(pipe, kept, sent, pending)
                        pending = []
                if pending:
                    _keep(pipe, kept, sent, pending)
                pipe.expire(kept, self._ttl_s)
                fields: dict[Any, str | int] = {
                    "status": "in_progress",
                    "in_progress_at": int(time.time()),
                    "total": total,
                    "released": 0,
                }
                pipe.hset(key, mapping=fields)
                pipe.zadd(keys.open_batches(), {batch_id: time.time() * 1000})
                pipe.zadd(keys.owner_batches(owner), {batch_id: time.time() * 1000})
                pipe.expire(keys.owner_batches(owner), self._ttl_s)
                self.scheduler.enroll(pipe, batch_id, owner, queue)
                pipe.execute()
                return True

        try:
            return self._guard(enqueue)
        except redis.WatchError:
            return False

    def cancel(self, batch_id: str) -> None:
        """Stop the batch: items not yet started will not run; see batch_cancel.lua."""
        self._guard(lambda: self._cancel(self._keys(batch_id)[:2], [int(time.time())]))

    def get(self, batch_id: str) -> BatchRecord | None:
        """The batch as stored, or None (a read writes nothing)."""
        fields = _text_map(self._guard(lambda: self._redis.hgetall(keys.batch(batch_id))))
        return _record(fields) if fields else None

    def fail_stale(self, now: float | None = None) -> list[str]:
        """Fail the batches left ``validating`` over ``STALE_VALIDATING_S`` (the API
        process creating them died before it enqueued them), saying why; the reconciler
        calls it. Returns their ids."""
        cutoff = (now if now is not None else time.time()) - STALE_VALIDATING_S
        index = keys.validating_batches()
        ids = [_text(i) for i in self._guard(lambda: self._redis.zrange(index, 0, -1))]
        failed, moved_on = [], []
        for batch_id in ids:
            record = self.get(batch_id)
            if record is None or record.status != "validating":
                moved_on.append(batch_id)
            elif record.times.created_at < cutoff:
                error = BatchError(
                    code="enqueue_interrupted",
                    message="the API process validating this batch stopped before "
                    "enqueueing it; nothing of it ran: create it again",
                )
                self.fail(batch_id, [error])
                failed.append(batch_id)
        if moved_on or failed:
            self._guard(lambda: self._redis.zrem(index, *moved_on, *failed))
        return failed

    def page(self, owner: str, after: str | None, limit: int) -> tuple[list[BatchRecord], bool]:
        """One owner's batches, newest first, after the batch ``after``; and whether
        more follow."""
        ids, more = self._guard(
            lambda: newest_first(self._redis, keys.batches(owner), after, limit)
        )
        found = [self.get(batch_id) for batch_id in ids]
        return [b for b in found if b is not None], more

    def lines(self, batch_id: str, kind: Literal["output", "error"]) -> Iterator[bytes]:
        """The output or error lines written so far, ``LINES_PER_READ`` per round trip."""
        key = keys.batch_output(batch_id) if kind == "output" else keys.batch_errors(batch_id)
        start = 0
        while True:
            chunk = self._range(key, start, start + LINES_PER_READ - 1)
            for line in chunk:
                yield (line.encode() if isinstance(line, str) else line) + b"\n"
            if len(chunk) < LINES_PER_READ:
                return
            start += LINES_PER_READ

    def _range(self, key: str, start: int, end: int) -> list[Any]:
        return list(self._guard(lambda: self._redis.lrange(key, start, end)))

    # The worker's side ----------------------------------------------------------

    def item_start(self, batch_id: str, index: int, request_id: str) -> Start:
        """Whether the item may run now, its running lease taken (``RUN``); ``BUSY`` when
        another copy holds the lease; ``DONE`` when it must not run (batch_item_start.lua)."""
        item_keys = [*self._keys(batch_id)[:2], keys.job_lease(request_id)]
        args: list[str | int] = [
            index,
            int(time.time()),
            self._ttl_s,
            secrets.token_hex(8),
            LEASE_MS,
        ]
        found: Any = self._guard(lambda: self._start(item_keys, args))
        return {1: Start.RUN, 2: Start.BUSY}.get(int(found), Start.DONE)

    def item_release(self, request_id: str) -> None:
        """Give the item's running lease back: a retry waits for its countdown."""
        self._guard(lambda: self._redis.delete(keys.job_lease(request_id)))

    def item_finish(
        self,
        batch_id: str,
        index: int,
        request_id: str,
        line: str,
        *,
        error: bool,
        counted: Tally,
        source: str = "",
        also_set: tuple[str, bytes, int] | None = None,
    ) -> bool:
        """Append the item's output (or error) line, and ``also_set`` (key, value, ttl: the
        cache entry) in the same round trip, releasing its lease and counting it
        (``core.stats``); False if the item was already final."""
        kind = "error" if error else "output"
        args: list[str | int | bytes] = [index, kind, line, source, int(time.time()), self._ttl_s]
        args += [counted.field, counted.entry]
        batch_keys = [*self._keys(batch_id), keys.job_lease(request_id)]
        batch_keys += [keys.batch_messages(batch_id), keys.stats("finished"), keys.stats("recent")]
        if also_set is not None:
            batch_keys.append(also_set[0])
            args += [also_set[1], also_set[2]]
        return bool(self._guard(lambda: self._finish(batch_keys, args)))

    # The reconciler's side ------------------------------------------------------

    def started(self, limit: int = 1000) -> list[str]:
        """Batches that were started and not yet seen final by the reconciler."""
        ids: list[Any] = self._guard(lambda: self._redis.zrange(keys.open_batches(), 0, limit - 1))
        return [_text(i) for i in ids]

    def forget(self, batch_id: str) -> None:
        """Take a final (or expired) batch out of :meth:`started`, with the messages it
        kept: no item of it will run again."""

        def drop() -> None:
            pipe = self._redis.pipeline(transaction=False)
            pipe.zrem(keys.open_batches(), batch_id)
            pipe.delete(keys.batch_messages(batch_id))
            pipe.execute()

        self._guard(drop)

    def republish(self, batch_id: str, index: int, queue: str) -> Republished:
        """Put item ``index``'s kept message back on ``queue`` (republish_item.lua), unless
        it is final, running, kept none, was sent too often, or its batch is stopping."""
        item_keys = [
            *self._keys(batch_id)[:2],
            keys.batch_messages(batch_id),
            keys.job_lease(item_request_id(batch_id, index)),
            queue,
        ]
        args = [index, MAX_REPUBLISH, int(time.time())]
        found: Any = self._guard(lambda: self._republish(item_keys, args))
        return Republished(int(found))

    def unfinished(self, batch_id: str, released: int) -> list[int]:
        """The items released to the queue and neither done nor cancelled: queued,
        running, or lost (the ones not released yet wait with the scheduler)."""
        states = _text_map(self._guard(lambda: self._redis.hgetall(keys.batch_items(batch_id))))
        return [i for i in range(released) if states.get(str(i)) not in ("done", "cancelled")]

    @staticmethod
    def _keys(batch_id: str) -> list[str]:
        return [
            keys.batch(batch_id),
            keys.batch_items(batch_id),
            keys.batch_output(batch_id),
            keys.batch_errors(batch_id),
        ]

    @staticmethod
    def _guard(call: Callable[[], T]) -> T:
        try:
            return call()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise StorageUnavailable(f"batch store unreachable: {type(exc).__name__}") from exc


def _keep(pipe: Any, kept: str, first: int, messages: list[bytes]) -> int:
    """Keep ``messages`` (items ``first``, ``first + 1``, …) for the scheduler to release;
    returns the index of the next item."""
    pipe.hset(kept, mapping=dict(enumerate(messages, start=first)))
    return first + len(messages)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _text_map(fields: Mapping[Any, Any]) -> dict[str, str]:
    return {_text(k): _text(v) for k, v in fields.items()}


def _record(fields: dict[str, str]) -> BatchRecord:
    errors = fields.get("errors")
    metadata = fields.get("metadata")

    def ints(names: Iterable[str], prefix: str = "") -> dict[str, int]:
        return {n: int(fields[prefix + n]) for n in names if prefix + n in fields}

    return BatchRecord(
        id=fields["id"],
        owner=fields["owner"],
        status=fields["status"],
        endpoint=fields["endpoint"],
        input_file_id=fields["input_file_id"],
        completion_window=fields["completion_window"],
        metadata=json.loads(metadata) if metadata else None,
        output_file_id=fields["output_file_id"],
        error_file_id=fields["error_file_id"],
        errors=[BatchError.model_validate(e) for e in json.loads(errors)] if errors else None,
        times=BatchTimes(**ints(BatchTimes.model_fields)),
        counts=BatchCounts(**ints(BatchCounts.model_fields)),
        sources=BatchSources(**ints(BatchSources.model_fields, "source_")),
    )
