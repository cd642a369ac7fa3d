"""The reconciler: a sweep, run by the workers themselves, for jobs no message will finish.

A job is accepted with its record and its Celery message written together, and every
record not final yet is in ``keys.open_jobs()``, keeping a copy of its message. A message
can still be lost (Redis restarted without it, or a worker killed between kombu's
``BRPOP`` and its recording the message as unacked). Every ``SWEEP_EVERY_S`` one worker
of the cluster (whichever takes the sweep's lock) looks at the open jobs whose record has
not changed for ``GRACE_S``: a job whose message is in no queue and no worker's hands
(kombu's unacked hash) and whose running lease has lapsed is a suspect; a suspect found
so in two sweeps in a row is **sent again**: the message its record kept goes back on its
queue (``JobStore.republish``), so a lost job is run, not failed, within ``GRACE_S`` + two
sweeps (≈ 2 min) of the loss. A re-sent copy runs like a redelivered one: never while
another copy holds the running lease, and the first final write wins. Only a record that
kept no message (accepted before genq kept them, or created without one) or whose
message was lost ``MAX_REPUBLISH`` times is failed with ``job_lost``. Entries whose
record expired are dropped.

Batch items are swept alike, batch by batch (``keys.open_batches()``): once a batch has
been quiet for ``GRACE_S`` (no item started or ended), an item neither done nor
cancelled whose message is nowhere and whose lease has lapsed is a suspect, and after two
sweeps its kept message is sent again (``BatchStore.republish``). In a batch being
cancelled or past its window, the item is counted as cancelled instead; an item that
cannot be sent again gets its error line (``job_lost``; its ``custom_id`` read back from
the input file), so the batch's counts add up and it completes. A batch found final is
dropped from the index, with the messages it kept.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable

import redis

from core import keys
from core.batches import BatchRecord, BatchStore, item_request_id
from core.contract import QUEUE_BATCH, BatchItem, JobError
from core.errors import JobLost, StorageUnavailable
from core.files import FileStore
from core.openai_batch import custom_id_of, error_line, request_lines
from core.records import MAX_REPUBLISH, JobStore, Republished, Start
from core.stats import tally

__all__ = ["GRACE_S", "MAX_SCAN", "SWEEP_EVERY_S", "Reconciler"]

log = logging.getLogger(__name__)

SWEEP_EVERY_S = 30.0
MAX_SCAN = 10_000
"""Queued messages the sweep reads at most (~2 kB each: ~20 MB); beyond, it waits."""
GRACE_S = 60.0
"""A record unchanged this long (ms resolution) may have lost its message."""
#: kombu's defaults: where the Redis transport keeps queued and unacked messages.
PRIORITY_STEPS = (0, 3, 6, 9)
PRIORITY_SEP = "\x06\x16"
UNACKED_KEY = "unacked"
_LOST = (
    "genq lost this job's message (its worker or Redis went away with it) before it "
    "finished, and {why}; nothing more will happen to it: submit it again"
)
LOST_REASONS = {
    Republished.NO_MESSAGE: "its record kept no copy to send again",
    Republished.TOO_OFTEN: f"lost it {MAX_REPUBLISH + 1} times",
}
"""Why a lost job is failed rather than sent again: the ``job_lost`` message says which."""


class Reconciler:
    """Sweeps for lost jobs; :meth:`start` runs it in a daemon thread of this process."""

    def __init__(
        self,
        client: redis.Redis,
        store: JobStore,
        queues: Iterable[str],
        *,
        batches: BatchStore | None = None,
        files: FileStore | None = None,
        every_s: float = SWEEP_EVERY_S,
        grace_s: float = GRACE_S,
    ) -> None:
        self._redis, self._store = client, store
        self._batches, self._files = batches, files
        self._queues = tuple(queues)
        self._every_s, self._grace_s = every_s, grace_s
        self._suspects: set[str] = set()
        self._item_suspects: set[tuple[str, int]] = set()
        self.republished = 0
        """Jobs and batch items this process's sweeps sent again."""

    def sweep(self) -> list[str]:
        """One sweep, if this process gets the lock; returns the jobs (and batch items, by
        request id) it failed (``job_lost``, or cancelled); the lost ones it sent again
        are counted in :attr:`republished`."""
        lock = f"{keys.PREFIX}reconciler:lock"
        if not self._redis.set(lock, "1", nx=True, px=int(self._every_s * 900)):
            return []
        if self._batches is not None:
            for batch_id in self._batches.fail_stale():
                log.warning("reconciler.batch_interrupted", extra={"batch_id": batch_id})
        cutoff_ms = (time.time() - self._grace_s) * 1000
        quiet = [
            _text(j) for j in self._redis.zrangebyscore(keys.open_jobs(), 0, cutoff_ms, 0, 1000)
        ]
        items = self._quiet_items(cutoff_ms / 1000)
        if not quiet and not items:
            self._suspects.clear()
            self._item_suspects.clear()
            return []
        present = self._ids_with_messages()
        if present is None:
            log.info("reconciler.deferred", extra={"reason": "queues over MAX_SCAN messages"})
            return []
        suspects = {j for j in quiet if j not in present and not self._leased(j)}
        lost = sorted(suspects & self._suspects)  # missing in two sweeps in a row
        self._suspects = suspects - set(lost)
        item_suspects = {
            (batch.id, index)
            for batch, index in items
            if (rid := item_request_id(batch.id, index)) not in present and not self._leased(rid)
        }
        lost_items = item_suspects & self._item_suspects
        self._item_suspects = item_suspects - lost_items
        failed = [job_id for job_id in lost if self._resend(job_id)]
        by_id = {batch.id: batch for batch, _ in items}
        for batch_id, index in sorted(lost_items):
            if self._resend_item(by_id[batch_id], index):
                failed.append(item_request_id(batch_id, index))
        return failed

    def _resend(self, job_id: str) -> bool:
        """Send a lost job's message again; True when it had to be failed instead."""
        found = self._store.republish(job_id)
        if found is Republished.SENT:
            self.republished += 1
            log.warning("reconciler.job_republished", extra={"job_id": job_id})
        return found in LOST_REASONS and self._fail(job_id, LOST_REASONS[found])

    def _resend_item(self, batch: BatchRecord, index: int) -> bool:
        """Send a lost item's message again; True when it was failed or counted cancelled
        instead."""
        assert self._batches is not None
        found = self._batches.republish(batch.id, index, QUEUE_BATCH)
        if found is Republished.SENT:
            self.republished += 1
            extra = {"batch_id": batch.id, "index": index}
            log.warning("reconciler.item_republished", extra=extra)
            return False
        if found in (Republished.NOTHING_TO_DO, Republished.RUNNING):
            return False
        why = LOST_REASONS.get(found, "its batch is stopping")
        return self._fail_item(batch, index, why)

    def _leased(self, request_id: str) -> bool:
        return bool(self._redis.exists(keys.job_lease(request_id)))

    def _quiet_items(self, cutoff_s: float) -> list[tuple[BatchRecord, int]]:
        """Unfinished items of the started batches quiet since ``cutoff_s``."""
        if self._batches is None:
            return []
        items: list[tuple[BatchRecord, int]] = []
        for batch_id in self._batches.started():
            batch = self._batches.get(batch_id)
            if batch is None or batch.status not in ("in_progress", "cancelling"):
                self._batches.forget(batch_id)
                continue
            times = batch.times
            if max(times.in_progress_at or 0, times.active_at or 0) > cutoff_s:
                continue  # items are moving: nothing is stuck yet
            released = batch.counts.released  # the rest wait with the scheduler
            items += [(batch, index) for index in self._batches.unfinished(batch_id, released)]
        return items

    def _fail_item(self, batch: BatchRecord, index: int, why: str) -> bool:
        """The lost item's error line; taken as a run would take it, so a batch being
        cancelled (or past its window) counts it cancelled instead, and a copy that came
        back to life meanwhile keeps it."""
        assert self._batches is not None
        request_id = item_request_id(batch.id, index)
        start = self._batches.item_start(batch.id, index, request_id)
        if start is not Start.RUN:
            return start is Start.DONE
        custom_id = self._custom_id(batch.input_file_id, index) or f"(line {index + 1})"
        item = BatchItem(
            batch_id=batch.id, index=index, custom_id=custom_id, endpoint=batch.endpoint
        )
        error = JobLost(_LOST.format(why=why))
        job_error = JobError(type=error.type, message=error.message)
        line = error_line(item, request_id, job_error)
        counted = tally(QUEUE_BATCH, request_id, error=job_error, batch_id=batch.id)
        written = self._batches.item_finish(
            batch.id, index, request_id, line, error=True, counted=counted
        )
        if written:
            log.warning("reconciler.item_lost", extra={"batch_id": batch.id, "index": index})
        return written

    def _custom_id(self, file_id: str, index: int) -> str | None:
        """The ``custom_id`` of the batch's ``index``-th request line (blank lines skipped,
        as the API numbered them), or None if the input file is gone."""
        if self._files is None:
            return None
        for number, (_, raw) in enumerate(request_lines(self._files.lines(file_id))):
            if number == index:
                return custom_id_of(raw)
        return None

    def _fail(self, job_id: str, why: str) -> bool:
        if not self._redis.exists(keys.job(job_id)):
            self._redis.zrem(keys.open_jobs(), job_id)  # the record expired
            return False
        error = JobLost(_LOST.format(why=why))
        job_error = JobError(type=error.type, message=error.message)
        written = self._store.finish(job_id, error=job_error)
        if written:
            log.warning("reconciler.job_lost", extra={"job_id": job_id})
        return written

    def _ids_with_messages(self) -> set[str] | None:
        """Task ids of every message queued or held (unacked) by a worker; None when the
        queues hold more than ``MAX_SCAN`` (a backlog: what waits in it is not lost, and
        the sweep comes back once it has drained)."""
        ids: set[str] = set()
        names = [
            q if p == 0 else f"{q}{PRIORITY_SEP}{p}" for q in self._queues for p in PRIORITY_STEPS
        ]
        if sum(int(self._redis.llen(name)) for name in names) > MAX_SCAN:
            return None
        for name in names:
            ids.update(_task_id(_loads(raw)) for raw in self._redis.lrange(name, 0, -1))
        for raw in self._redis.hvals(UNACKED_KEY):  # [message, exchange, routing key]
            held = _loads(raw)
            ids.add(_task_id(held[0] if isinstance(held, list) and held else None))
        ids.discard("")
        return ids

    def start(self) -> None:
        """Sweep every ``every_s`` in a daemon thread, for the life of the process."""
        threading.Thread(target=self._run, name="genq-reconciler", daemon=True).start()

    def _run(self) -> None:
        stop = threading.Event()  # never set: the thread lives as long as the process
        while not stop.wait(self._every_s):
            try:
                failed = self.sweep()
            except (redis.RedisError, StorageUnavailable) as exc:
                log.warning("reconciler.sweep_failed", extra={"error": type(exc).__name__})
                continue
            if failed:
                log.warning("reconciler.swept", extra={"failed": len(failed)})


def _loads(raw: str | bytes) -> object:
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _task_id(message: object) -> str:
    """A kombu message's Celery task id (its ``headers.id``), or ``""``."""
    headers = message.get("headers") if isinstance(message, dict) else None
    return str(headers.get("id") or "") if isinstance(headers, dict) else ""


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
