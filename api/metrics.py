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
from worker.app import QUEUES

__all__ = ["JOBS_SUBMITTED", "ClusterCollector", "read_cluster", "router"]

JOBS_SUBMITTED = Counter("genq_jobs_submitted", "Jobs accepted by this API process")
STATE_LABELS = tuple(code.label for code in CircuitState)


Cluster = tuple[list[dict[str, Any]], list[tuple[str, int]]]
"""What a scrape reads from Redis: every circuit's snapshot, and each queue's depth."""


def read_cluster() -> Cluster:
    client = get_redis()
    circuits = with_limits(client, list_circuits(client))
    return circuits, [(queue, int(client.llen(queue))) for queue in QUEUES]


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
        circuits, depths = self._cluster
        state = GaugeMetricFamily(
            "genq_circuit_state", "1 for the state each circuit is in", labels=["circuit", "state"]
        )
        retry = GaugeMetricFamily(
            "genq_circuit_retry_after_seconds", "Seconds until the next probe", labels=["circuit"]
        )
        transitions = CounterMetricFamily(
            "genq_circuit_transitions", "Transitions made", labels=["circuit", "kind"]
        )
        limits = _LimitMetrics()
        for circuit in circuits:
            name = circuit["name"]
            if circuit.get("limit"):
                limits.add(name, circuit["limit"])
            for option in STATE_LABELS:
                state.add_metric([name, option], float(circuit["state"] == option))
            retry.add_metric([name], float(circuit["retry_after"]))
            for kind, count in circuit["transitions"].items():
                transitions.add_metric([name, kind], float(count))
        queued = GaugeMetricFamily("genq_queue_depth", "Messages waiting", labels=["queue"])
        for queue, depth in depths:
            queued.add_metric([queue], float(depth))
        yield from (state, retry, transitions, queued, *limits.families)


class _LimitMetrics:
    """Each target's call limit (``core.capacity``), labelled by its circuit's name."""

    def __init__(self) -> None:
        labels = ["circuit"]
        self.limit = GaugeMetricFamily(
            "genq_upstream_limit", "Calls the cluster may have in flight", labels=labels
        )
        self.in_flight = GaugeMetricFamily(
            "genq_upstream_in_flight", "Calls in flight (live slot leases)", labels=labels
        )
        self.throttled = CounterMetricFamily(
            "genq_upstream_throttled", "429s seen by calls holding a slot", labels=labels
        )
        self.waited = CounterMetricFamily(
            "genq_upstream_slot_wait_seconds", "Time jobs waited for a call slot", labels=labels
        )
        self.waits = CounterMetricFamily(
            "genq_upstream_slot_waits", "Jobs that waited for a call slot", labels=labels
        )
        self.timeouts = CounterMetricFamily(
            "genq_upstream_slot_wait_timeouts", "Waits that ended without a slot", labels=labels
        )

    def add(self, name: str, limit: dict[str, Any]) -> None:
        self.limit.add_metric([name], float(limit["limit"]))
        self.in_flight.add_metric([name], float(limit["in_flight"]))
        self.throttled.add_metric([name], float(limit["throttled"]))
        self.waited.add_metric([name], float(limit["waited_s"]))
        self.waits.add_metric([name], float(limit["waits"]))
        self.timeouts.add_metric([name], float(limit["wait_timeouts"]))

    @property
    def families(self) -> tuple[Metric, ...]:
        return (self.limit, self.in_flight, self.throttled, self.waited, self.waits, self.timeouts)


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
