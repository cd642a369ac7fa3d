"""``/metrics``: Prometheus metrics of this API process, and of the whole cluster.

Counters of this process (jobs accepted) are prometheus-client counters. Everything else
is the cluster's, as the API's background monitor last read it from Redis
(``api.cluster``, at most ``CLUSTER_EVERY_S`` old): circuits, call limits, queues (depth
and oldest age), the batch backlog, and the counts the workers' scripts keep where they
record the work (``core.stats``: jobs finished, upstream call durations, cache lookups).
So any API replica reports the same numbers, and a scrape never waits on Redis: while
Redis is down or hung it reports ``genq_redis_up 0`` at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Request, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from api.cluster import ClusterSnapshot
from api.probes import Monitor
from core.circuits import CircuitState
from core.stats import CALL_BUCKETS, FINISHED_LABELS, ClusterStats

__all__ = ["JOBS_SUBMITTED", "ClusterCollector", "router"]

JOBS_SUBMITTED = Counter("genq_jobs_submitted", "Jobs accepted by this API process")
STATE_LABELS = tuple(code.label for code in CircuitState)


class ClusterCollector(Collector):
    """The cluster as one read of Redis found it (None: Redis did not answer within the
    probe budget)."""

    def __init__(self, cluster: ClusterSnapshot | None) -> None:
        self._cluster = cluster

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("genq_redis_up", "Whether Redis answered this scrape")
        up.add_metric([], 0 if self._cluster is None else 1)
        yield up
        if self._cluster is None:
            return
        yield from _circuit_families(self._cluster.circuits)
        yield from _queue_families(self._cluster)
        yield from _limit_families(self._cluster.circuits)
        yield from _stats_families(self._cluster.stats)


def _circuit_families(circuits: list[dict[str, Any]]) -> Iterator[Metric]:
    state = GaugeMetricFamily(
        "genq_circuit_state", "1 for the state each circuit is in", labels=["circuit", "state"]
    )
    retry = GaugeMetricFamily(
        "genq_circuit_retry_after_seconds", "Seconds until the next probe", labels=["circuit"]
    )
    transitions = CounterMetricFamily(
        "genq_circuit_transitions", "Transitions made", labels=["circuit", "kind"]
    )
    for circuit in circuits:
        name = circuit["name"]
        for option in STATE_LABELS:
            state.add_metric([name, option], float(circuit["state"] == option))
        retry.add_metric([name], float(circuit["retry_after"]))
        for kind, count in circuit["transitions"].items():
            transitions.add_metric([name, kind], float(count))
    yield from (state, retry, transitions)


def _queue_families(cluster: ClusterSnapshot) -> Iterator[Metric]:
    depth = GaugeMetricFamily("genq_queue_depth", "Messages ready to run", labels=["queue"])
    age = GaugeMetricFamily(
        "genq_queue_oldest_age_seconds",
        "How long the oldest message has been ready to run (0: none waiting)",
        labels=["queue"],
    )
    for queue in cluster.queues:
        depth.add_metric([queue.name], float(queue.depth))
        age.add_metric([queue.name], queue.oldest_age_s)
    backlog = GaugeMetricFamily(
        "genq_batch_backlog_items",
        "Batch items waiting with the scheduler, by key (its owner id, never the key)",
        labels=["owner"],
    )
    for owner, items in cluster.backlog.items():
        backlog.add_metric([owner], float(items))
    waiting = GaugeMetricFamily(
        "genq_batch_waiting_items",
        "A batch in progress's items not yet released onto the batch queue",
        labels=["batch_id", "owner"],
    )
    unfinished = GaugeMetricFamily(
        "genq_batch_unfinished_items",
        "A batch in progress's items not yet final (waiting, queued or running)",
        labels=["batch_id", "owner"],
    )
    for batch in cluster.batches:
        waiting.add_metric([batch.batch_id, batch.owner], float(batch.waiting))
        unfinished.add_metric([batch.batch_id, batch.owner], float(batch.unfinished))
    yield from (depth, age, backlog, waiting, unfinished)


def _stats_families(stats: ClusterStats) -> Iterator[Metric]:
    """The counts the workers keep in Redis where they record the work (``core.stats``)."""
    finished = CounterMetricFamily(
        "genq_jobs_finished",
        "Jobs and batch items that reached a final record, by how they ended",
        labels=list(FINISHED_LABELS),
    )
    for labels, count in sorted(stats.finished.items()):
        finished.add_metric(list(labels), float(count))
    calls = HistogramMetricFamily(
        "genq_upstream_call_duration_seconds",
        "Upstream calls by target and outcome (ok, or genq's error type)",
        labels=["target", "outcome"],
    )
    for (target, outcome), histogram in sorted(stats.calls.items()):
        bounds = [*(str(b) for b in CALL_BUCKETS), "+Inf"]
        cumulative, buckets = 0, []
        for bound, count in zip(bounds, histogram.counts, strict=True):
            cumulative += count
            buckets.append((bound, float(cumulative)))
        calls.add_metric([target, outcome], buckets, histogram.total_s)
    cache = CounterMetricFamily(
        "genq_cache_lookups", "Result cache lookups, by result", labels=["result"]
    )
    for result in ("hit", "miss"):
        cache.add_metric([result], float(stats.cache.get(result, 0)))
    yield from (finished, calls, cache)


#: Each target's call limit (``core.capacity``): (snapshot field, kind, name, help).
_LIMIT_METRICS: tuple[tuple[str, type[GaugeMetricFamily | CounterMetricFamily], str, str], ...] = (
    ("limit", GaugeMetricFamily, "genq_upstream_limit", "Calls the cluster may have in flight"),
    ("in_flight", GaugeMetricFamily, "genq_upstream_in_flight", "Calls in flight (slot leases)"),
    (
        "interactive_waiting",
        GaugeMetricFamily,
        "genq_upstream_interactive_waiting",
        "Interactive jobs waiting for a slot",
    ),
    ("batch_waiting", GaugeMetricFamily, "genq_upstream_batch_waiting", "Batch items waiting"),
    ("throttled", CounterMetricFamily, "genq_upstream_throttled", "429s seen by calls"),
    ("waited_s", CounterMetricFamily, "genq_upstream_slot_wait_seconds", "Time waited for slots"),
    ("waits", CounterMetricFamily, "genq_upstream_slot_waits", "Jobs that waited for a slot"),
    ("wait_timeouts", CounterMetricFamily, "genq_upstream_slot_wait_timeouts", "Waits, no slot"),
)


def _limit_families(circuits: list[dict[str, Any]]) -> Iterator[Metric]:
    """One family per ``_LIMIT_METRICS`` row, labelled by the circuit's name."""
    for field, kind, name, text in _LIMIT_METRICS:
        family = kind(name, text, labels=["circuit"])
        for circuit in circuits:
            if limit := circuit.get("limit"):
                family.add_metric([circuit["name"]], float(limit[field]))
        yield family


router = APIRouter(tags=["metrics"])


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """Prometheus text format; no key needed. The cluster's state is what the background
    monitor last read (at most ``CLUSTER_EVERY_S`` old), so a scrape never waits on Redis."""
    monitor: Monitor = request.app.state.monitor
    cluster: ClusterSnapshot | None = monitor.cluster if monitor.redis.fresh_up() else None
    scrape = CollectorRegistry(auto_describe=False)
    scrape.register(ClusterCollector(cluster))
    return Response(
        generate_latest(REGISTRY) + generate_latest(scrape), media_type=CONTENT_TYPE_LATEST
    )
