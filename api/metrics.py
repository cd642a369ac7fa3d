"""``/metrics``: Prometheus metrics of this API process, and of the cluster read from Redis.

Counters of this process (jobs accepted) are prometheus-client counters. The cluster's
state (circuits, queue depth) lives in Redis; the API's background monitor
(``api.probes``) reads it every few seconds, so any API replica reports the same numbers
and a scrape never waits on Redis: while Redis is down or hung it reports
``genq_redis_up 0`` at once.
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
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from api.probes import Monitor
from core.capacity import with_limits
from core.circuits import CircuitState, list_circuits
from core.connections import get_redis
from core.scheduler import backlog
from core.settings import get_settings
from worker.app import QUEUES

__all__ = ["JOBS_SUBMITTED", "ClusterCollector", "read_cluster", "router"]

JOBS_SUBMITTED = Counter("genq_jobs_submitted", "Jobs accepted by this API process")
STATE_LABELS = tuple(code.label for code in CircuitState)


Cluster = tuple[list[dict[str, Any]], list[tuple[str, int]], dict[str, int]]
"""What a scrape reads from Redis: every circuit's snapshot, each queue's depth, and the
batch items waiting with the scheduler by owner id."""


def read_cluster() -> Cluster:
    client = get_redis()
    circuits = with_limits(client, list_circuits(client, get_settings().target_circuits))
    depths = [(queue, int(client.llen(queue))) for queue in QUEUES]
    return circuits, depths, backlog(client)


class ClusterCollector(Collector):
    """Circuit states and transitions, and queue depths, as one scrape read them from
    Redis (None: Redis did not answer within the probe budget)."""

    def __init__(self, cluster: Cluster | None) -> None:
        self._cluster = cluster

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("genq_redis_up", "Whether Redis answered this scrape")
        up.add_metric([], 0 if self._cluster is None else 1)
        yield up
        if self._cluster is None:
            return
        circuits, depths, waiting = self._cluster
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
        queued = GaugeMetricFamily("genq_queue_depth", "Messages waiting", labels=["queue"])
        for queue, depth in depths:
            queued.add_metric([queue], float(depth))
        backlog = GaugeMetricFamily(
            "genq_batch_backlog_items",
            "Batch items waiting with the scheduler, by key (its owner id, never the key)",
            labels=["owner"],
        )
        for owner, items in waiting.items():
            backlog.add_metric([owner], float(items))
        yield from (state, retry, transitions, queued, backlog)
        yield from _limit_families(circuits)


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
    cluster: Cluster | None = monitor.cluster if monitor.redis.fresh_up() else None
    scrape = CollectorRegistry(auto_describe=False)
    scrape.register(ClusterCollector(cluster))
    return Response(
        generate_latest(REGISTRY) + generate_latest(scrape), media_type=CONTENT_TYPE_LATEST
    )
