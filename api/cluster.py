"""The cluster as one read of Redis found it: what ``/metrics`` and ``/status`` show.

The API's background monitor (``api.probes``) calls :func:`read_cluster` every
``CLUSTER_EVERY_S`` on a thread of its own, so every API replica reports the same
numbers and neither page waits on Redis. Each part is read in one pipelined round trip
or two; nothing here writes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from core.capacity import with_limits
from core.circuits import list_circuits
from core.connections import get_redis
from core.scheduler import backlog
from core.settings import get_settings
from core.stats import (
    BatchProgress,
    ClusterStats,
    batches_in_progress,
    queue_ages,
    read_recent,
    read_stats,
)
from worker.app import QUEUES

__all__ = ["ClusterSnapshot", "QueueState", "read_cluster"]


@dataclass(frozen=True)
class QueueState:
    """A Celery queue: messages ready to run, and how long the oldest has waited (s)."""

    name: str
    depth: int
    oldest_age_s: float


@dataclass(frozen=True)
class ClusterSnapshot:
    """Every circuit (with its call limit), every queue, the batch backlog by owner and
    by batch, the cluster's counters (``core.stats``) and its last outcomes."""

    read_at: float
    circuits: list[dict[str, Any]]
    queues: list[QueueState]
    backlog: dict[str, int]
    batches: list[BatchProgress]
    stats: ClusterStats
    recent: list[dict[str, Any]]


def read_cluster() -> ClusterSnapshot:
    client = get_redis()
    now = time.time()
    circuits = with_limits(client, list_circuits(client, get_settings().target_circuits))
    queues = [
        QueueState(name, depth, age)
        for name, (depth, age) in queue_ages(client, QUEUES, now).items()
    ]
    return ClusterSnapshot(
        read_at=now,
        circuits=circuits,
        queues=queues,
        backlog=backlog(client),
        batches=batches_in_progress(client),
        stats=read_stats(client),
        recent=read_recent(client),
    )
