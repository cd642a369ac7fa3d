"""The cluster's counts, kept in Redis by the scripts that record the work.

Each process's own counters live and die with it; these are the whole cluster's, so any
API replica's ``/metrics`` reports the same numbers (``api.metrics``). Each is counted in
the round trip that already records the work, never in one of its own:

- **Finished jobs** (``keys.stats("finished")``, a hash of counts): by the script that
  writes a job's final record (``lua/write_unless_final.lua``) or a batch item's final
  line (``lua/batch_item_finish.lua``), only when that write is the one that wins: a job
  answered by two copies counts once, and the count is what the records say. Each field
  is a JSON array of the :data:`FINISHED_LABELS` values.
- **The last outcomes** (``keys.stats("recent")``, a list): the same writes push a short
  summary of each (no text, no prompt), the newest first, :data:`RECENT_KEPT` kept: the
  status page's table.
- **Upstream calls** (``keys.stats("calls")``): by the script that gives a call's slot back
  (``lua/limit_release.lua``): per target and outcome, a count per bucket of
  :data:`CALL_BUCKETS` (not cumulative) and the sum of seconds.
- **Cache lookups** (``keys.stats("cache")``): ``hit`` and ``miss``, by the lookup.

Read alongside them (:func:`queue_ages`, :func:`batches_in_progress`): how long the
oldest message of each queue has been ready to run (its ``genq_enqueued_at`` header, or
its ``eta``), and each batch in progress's items still waiting and not yet final.
"""

from __future__ import annotations

import bisect
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import redis

from core import keys
from core.contract import ENQUEUED_AT_HEADER, JobError, JobResult

__all__ = [
    "CALL_BUCKETS",
    "FINISHED_LABELS",
    "RECENT_KEPT",
    "BatchProgress",
    "CallObservation",
    "ClusterStats",
    "Histogram",
    "Tally",
    "batches_in_progress",
    "observe_call",
    "queue_ages",
    "read_recent",
    "read_stats",
    "tally",
]

CALL_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
"""Upper bounds (seconds) of the upstream call histogram's buckets; +Inf follows."""
RECENT_KEPT = 50
"""How many of the last outcomes are kept (the scripts trim to it: ``LTRIM 0 49``)."""
FINISHED_LABELS = ("queue", "status", "source", "fallback_reason", "failover", "error_type")
"""The labels of ``genq_jobs_finished_total``; a label that does not apply is ``""``."""


@dataclass(frozen=True)
class Tally:
    """What a final write counts: its field in the finished hash, and its summary line
    in the recent outcomes."""

    field: str
    entry: str


def tally(
    queue: str,
    job_id: str,
    result: JobResult | None = None,
    error: JobError | None = None,
    batch_id: str | None = None,
) -> Tally:
    """The count and the summary of one final write: ``result`` (succeeded) or ``error``
    (failed) of job ``job_id`` on ``queue``."""
    status = "succeeded" if result is not None else "failed"
    source = reason = error_type = circuit = ""
    failover = False
    if result is not None:
        source, failover = result.source, result.failover
        reason = result.fallback_reason or ""
        circuit = result.target or result.circuit or ""
    if error is not None:
        error_type = error.type
    labels = (queue, status, source, reason, "true" if failover else "false", error_type)
    entry = {
        "at": round(time.time(), 3),
        "job_id": job_id,
        "batch_id": batch_id,
        "queue": queue,
        "status": status,
        "source": source,
        "fallback_reason": reason,
        "failover": failover,
        "circuit": circuit,
        "error_type": error_type,
        "latency_ms": result.latency_ms if result is not None else None,
    }
    return Tally(json.dumps(labels), json.dumps(entry, separators=(",", ":")))


@dataclass(frozen=True)
class CallObservation:
    """One upstream call, as the slot's release counts it: the fields of its bucket and of
    its sum in the calls hash, and its duration."""

    bucket: str
    total: str
    seconds: float


def observe_call(target: str, outcome: str, seconds: float) -> CallObservation:
    """The call to ``target`` that ended in ``outcome`` (``ok`` or an error's type) after
    ``seconds``."""
    index = bisect.bisect_left(CALL_BUCKETS, seconds)
    return CallObservation(
        json.dumps([target, outcome, index]), json.dumps([target, outcome, "sum"]), seconds
    )


@dataclass
class Histogram:
    """One target and outcome's calls: counts per bucket of ``CALL_BUCKETS`` and +Inf
    (not cumulative), and the sum of their seconds."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(CALL_BUCKETS) + 1))
    total_s: float = 0.0


@dataclass
class ClusterStats:
    """The counters as one read found them."""

    finished: dict[tuple[str, ...], int] = field(default_factory=dict)
    calls: dict[tuple[str, str], Histogram] = field(default_factory=dict)
    cache: dict[str, int] = field(default_factory=dict)


def read_stats(client: redis.Redis) -> ClusterStats:
    """Every counter, in one round trip."""
    pipe = client.pipeline(transaction=False)
    for part in ("finished", "calls", "cache"):
        pipe.hgetall(keys.stats(part))
    finished, calls, cache = pipe.execute()
    stats = ClusterStats(cache={_text(k): int(v) for k, v in cache.items()})
    for raw, count in finished.items():
        labels = tuple(json.loads(raw))
        if len(labels) == len(FINISHED_LABELS):
            stats.finished[labels] = int(count)
    for raw, value in calls.items():
        target, outcome, slot = json.loads(raw)
        histogram = stats.calls.setdefault((target, outcome), Histogram())
        if slot == "sum":
            histogram.total_s = float(value)
        elif isinstance(slot, int) and 0 <= slot < len(histogram.counts):
            histogram.counts[slot] = int(value)
    return stats


def read_recent(client: redis.Redis, count: int = RECENT_KEPT) -> list[dict[str, Any]]:
    """The last ``count`` outcomes, the newest first."""
    rows: list[Any] = client.lrange(keys.stats("recent"), 0, count - 1)
    return [json.loads(row) for row in rows]


def queue_ages(
    client: redis.Redis, queues: Iterable[str], now: float
) -> dict[str, tuple[int, float]]:
    """Each queue's depth and the seconds its oldest message has been ready to run (0:
    empty, or a message that says not when), in one round trip. kombu's Redis transport
    pushes on the left and takes from the right: the oldest is the last."""
    names = list(queues)
    pipe = client.pipeline(transaction=False)
    for queue in names:
        pipe.llen(queue)
        pipe.lindex(queue, -1)
    found = pipe.execute()
    ages = {}
    for i, queue in enumerate(names):
        depth, oldest = int(found[2 * i]), found[2 * i + 1]
        ready = _ready_at(oldest)
        ages[queue] = (depth, max(0.0, now - ready) if ready else 0.0)
    return ages


def _ready_at(raw: bytes | None) -> float | None:
    """When a Celery message went onto its queue ready to run: its ETA if it has one,
    else ``genq_enqueued_at``; None if it names neither (or is not one)."""
    if not raw:
        return None
    try:
        headers = json.loads(raw).get("headers") or {}
        if eta := headers.get("eta"):
            return datetime.fromisoformat(eta).timestamp()
        return float(headers.get(ENQUEUED_AT_HEADER) or 0) or None
    except (ValueError, TypeError, AttributeError):
        return None


@dataclass(frozen=True)
class BatchProgress:
    """A batch in progress: its owner (the key's id, never the key), its items waiting
    with the scheduler (not yet on the queue), and its items not yet final."""

    batch_id: str
    owner: str
    status: str
    total: int
    waiting: int
    unfinished: int


def batches_in_progress(client: redis.Redis, limit: int = 500) -> list[BatchProgress]:
    """The first ``limit`` batches started and not yet final, oldest first (two round
    trips)."""
    ids = [_text(i) for i in client.zrange(keys.open_batches(), 0, limit - 1)]
    pipe = client.pipeline(transaction=False)
    fields = ("owner", "status", "total", "released", "completed", "failed", "cancelled")
    for batch_id in ids:
        pipe.hmget(keys.batch(batch_id), *fields)
    found = []
    for batch_id, values in zip(ids, pipe.execute(), strict=True):
        owner, status = (_text(v) if v is not None else "" for v in values[:2])
        total, released, completed, failed, cancelled = (int(v or 0) for v in values[2:])
        if status in ("in_progress", "cancelling"):
            unfinished = total - completed - failed - cancelled
            progress = BatchProgress(batch_id, owner, status, total, total - released, unfinished)
            found.append(progress)
    return found


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
