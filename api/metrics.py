"""``/metrics``: Prometheus metrics of this API process, and of the cluster read from Redis.

Counters of this process (jobs accepted) are prometheus-client counters. The cluster's
state (circuits, queue depth) lives in Redis, so a collector reads it at scrape time:
any API replica reports the same numbers. A scrape while Redis is down reports
``genq_redis_up 0`` instead of failing.
"""

from __future__ import annotations

from collections.abc import Iterator

import redis
from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from core.circuits import CircuitState, list_circuits
from core.connections import get_redis
from worker.app import QUEUES

__all__ = ["JOBS_SUBMITTED", "ClusterCollector", "router"]

JOBS_SUBMITTED = Counter("genq_jobs_submitted", "Jobs accepted by this API process")
STATE_LABELS = tuple(code.label for code in CircuitState)


class ClusterCollector(Collector):
    """Circuit states and transitions, and queue depths, read from Redis per scrape."""

    def describe(self) -> Iterator[Metric]:
        # Registration would otherwise call collect(): Redis I/O at import time.
        return iter(())

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("genq_redis_up", "Whether Redis answered this scrape")
        try:
            client = get_redis()
            circuits = list_circuits(client)
            depths = [(queue, int(client.llen(queue))) for queue in QUEUES]
        except (redis.ConnectionError, redis.TimeoutError):
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
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
        yield from (state, retry, transitions, queued)


REGISTRY.register(ClusterCollector())

router = APIRouter(tags=["metrics"])


@router.get("/metrics", include_in_schema=False)
def metrics() -> Response:
    """Prometheus text format; no key needed."""
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
