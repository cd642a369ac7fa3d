"""The reconciler: a sweep, run by the workers themselves, for jobs no message will finish.

A job is accepted with its record and its Celery message written together, and every
record not final yet is in ``keys.open_jobs()``. A message can still be lost (Redis
restarted without it, or a worker killed between taking it and kombu recording it as
unacked). Every ``SWEEP_EVERY_S`` one worker of the cluster (whichever takes the sweep's
lock) looks at the open jobs whose record has not changed for ``GRACE_S``: a job whose
message is in no queue and no worker's hands (kombu's unacked hash) and whose running
lease has lapsed is a suspect; a suspect found so in two sweeps in a row is failed with
``job_lost`` and a message saying what to do. Entries whose record expired are dropped.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable

import redis

from core import keys
from core.contract import JobError
from core.errors import JobLost, StorageUnavailable
from core.records import JobStore

__all__ = ["GRACE_S", "SWEEP_EVERY_S", "Reconciler"]

log = logging.getLogger(__name__)

SWEEP_EVERY_S = 30.0
GRACE_S = 60.0
"""A record unchanged this long (ms resolution) may have lost its message."""
#: kombu's defaults: where the Redis transport keeps queued and unacked messages.
PRIORITY_STEPS = (0, 3, 6, 9)
PRIORITY_SEP = "\x06\x16"
UNACKED_KEY = "unacked"
LOST = (
    "genq lost this job's message (its worker or Redis went away with it) before it "
    "finished; nothing more will happen to it: submit it again"
)


class Reconciler:
    """Sweeps for lost jobs; :meth:`start` runs it in a daemon thread of this process."""

    def __init__(
        self,
        client: redis.Redis,
        store: JobStore,
        queues: Iterable[str],
        *,
        every_s: float = SWEEP_EVERY_S,
        grace_s: float = GRACE_S,
    ) -> None:
        self._redis, self._store = client, store
        self._queues = tuple(queues)
        self._every_s, self._grace_s = every_s, grace_s
        self._suspects: set[str] = set()

    def sweep(self) -> list[str]:
        """One sweep, if this process gets the lock; returns the jobs it failed."""
        lock = f"{keys.PREFIX}reconciler:lock"
        if not self._redis.set(lock, "1", nx=True, px=int(self._every_s * 900)):
            return []
        cutoff_ms = (time.time() - self._grace_s) * 1000
        quiet = [
            _text(j) for j in self._redis.zrangebyscore(keys.open_jobs(), 0, cutoff_ms, 0, 1000)
        ]
        if not quiet:
            self._suspects.clear()
            return []
        present = self._ids_with_messages()
        suspects = {
            j for j in quiet if j not in present and not self._redis.exists(keys.job_lease(j))
        }
        lost = sorted(suspects & self._suspects)  # missing in two sweeps in a row
        self._suspects = suspects - set(lost)
        return [job_id for job_id in lost if self._fail(job_id)]

    def _fail(self, job_id: str) -> bool:
        if not self._redis.exists(keys.job(job_id)):
            self._redis.zrem(keys.open_jobs(), job_id)  # the record expired
            return False
        error = JobLost(LOST)
        job_error = JobError(type=error.type, message=error.message)
        written = self._store.finish(job_id, error=job_error)
        if written:
            log.warning("reconciler.job_lost", extra={"job_id": job_id})
        return written

    def _ids_with_messages(self) -> set[str]:
        """Task ids of every message queued or held (unacked) by a worker."""
        ids: set[str] = set()
        names = [
            q if p == 0 else f"{q}{PRIORITY_SEP}{p}" for q in self._queues for p in PRIORITY_STEPS
        ]
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
