"""One call limit for the whole cluster, against a simulator that serves only so many
calls at once (``capacity``) and answers 429 beyond it.

Two worker processes that could each hold 32 calls keep the simulator within the limit;
an adaptive limit finds the capacity with under 1% 429s once converged, follows it down
and up at run time, and a SIGKILLed worker's slots come back when their leases lapse.
docs/architecture.md ("One call limit for the cluster") gives the bounds checked here."""

from __future__ import annotations

import dataclasses
import io
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import pytest
import redis
import requests
from openai import OpenAI
from openai.types import Batch

from core.batches import BatchStore
from core.capacity import SLOT_LEASE_MS, CallOutcome, CapacityStore
from core.files import FileStore
from core.records import JobStore
from devstack.redis import RedisProcess, free_port
from simulator.server import SimulatorServer
from tests.integration.conftest import (
    API_KEY,
    auth,
    completion_lines,
    genq_env,
    settings_for,
    start_process,
    start_worker,
    wait_http,
)
from worker.app import QUEUES
from worker.limiter import limit_options
from worker.reconciler import Reconciler
from worker.upstream import UpstreamTarget

pytestmark = pytest.mark.reliability

FINAL = ("succeeded", "failed")
ENV = {
    "GENQ_WORKER_CONCURRENCY": "32",
    "GENQ_INTERACTIVE_SLOT_WAIT_S": "10",  # these tests judge the limit, not the budget
    "GENQ_RETRY_BASE_S": "0.1",
    "GENQ_RETRY_CAP_S": "1",
}


@contextmanager
def cluster(redis_url: str, sim_url: str, workers: int, **env: str) -> Iterator[Stack]:
    """The API and ``workers`` worker processes; all stopped on exit."""
    full_env = genq_env(redis_url, sim_url, **{**ENV, **env})
    port = str(free_port())
    api = [sys.executable, "-m", "uvicorn", "api.main:app", "--log-level", "warning"]
    procs = [start_process([*api, "--port", port], full_env, "limit-api")]
    procs += [start_worker(full_env, f"limit-{n}", f"limit-{n}") for n in range(workers)]
    stack = Stack(f"http://127.0.0.1:{port}", procs)
    try:
        wait_http(f"{stack.url}/readyz")
        yield stack
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            proc.wait(timeout=15)


class Stack:
    def __init__(self, url: str, procs: list[subprocess.Popen[bytes]]) -> None:
        self.url, self.procs = url, procs

    def submit(self, count: int, first: int = 0) -> list[str]:
        """Submit ``count`` jobs from four threads; returns their locations."""

        def part(n: int) -> list[str]:
            with requests.Session() as http:
                return [
                    http.post(
                        f"{self.url}/v1/jobs",
                        json={"prompt": f"limit {i}"},
                        headers=auth(),
                        timeout=10,
                    ).headers["Location"]
                    for i in range(first + n, first + count, 4)
                ]

        with ThreadPoolExecutor(4) as pool:
            return [loc for chunk in pool.map(part, range(4)) for loc in chunk]

    def jobs(self, locations: list[str]) -> list[dict[str, Any]]:
        with requests.Session() as http:
            return [
                http.get(f"{self.url}{loc}", headers=auth(), timeout=10).json() for loc in locations
            ]

    def wait_final(self, locations: list[str], timeout_s: float) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout_s
        while True:
            jobs = self.jobs(locations)
            pending = Counter(j["status"] for j in jobs if j["status"] not in FINAL)
            if not pending:
                return jobs
            assert time.monotonic() < deadline, f"not final: {dict(pending)}"
            time.sleep(1)

    def limit(self) -> dict[str, Any] | None:
        circuits = requests.get(f"{self.url}/v1/circuits", headers=auth(), timeout=10).json()
        return circuits[0]["limit"] if circuits else None


def assert_all_upstream(jobs: list[dict[str, Any]]) -> None:
    """No job degraded: every one is the simulator's answer."""
    sources = Counter(j["result"]["source"] if j["result"] else j["status"] for j in jobs)
    assert sources == {"upstream": len(jobs)}, sources


def test_two_workers_never_exceed_a_fixed_cluster_limit(own_redis: RedisProcess) -> None:
    """Two workers of 32 slots each, one limit of 20: the simulator (capacity 20) never
    sees more than 20 calls at once, answers no 429, and every job gets its answer."""
    with SimulatorServer() as sim:
        sim.configure(capacity=20, latency_ms=100, retry_after_s=0.2)
        env = {"GENQ_UPSTREAM_LIMIT": "fixed", "GENQ_UPSTREAM_MAX_IN_FLIGHT": "20"}
        with cluster(own_redis.url, sim.url, 2, **env) as stack:
            jobs = stack.wait_final(stack.submit(600), timeout_s=60)
            stats = sim.stats()
            print(f"fixed: {stats['calls']} calls, peak {stats['peak_concurrent']}")
            assert stats["peak_concurrent"] == 20  # filled, and never more
            assert stats["over_capacity"] == 0
            assert_all_upstream(jobs)
            limit = stack.limit()
            assert limit is not None and (limit["limit"], limit["in_flight"]) == (20, 0)


def test_an_adaptive_limit_finds_the_capacity_with_few_429s(own_redis: RedisProcess) -> None:
    """Unknown capacity (20): after the first 600 jobs, under 1% of calls are 429s, no job
    degrades, and the simulator sees at most 2x its capacity at once (slow start's first
    overshoot: docs/architecture.md)."""
    with SimulatorServer() as sim:
        sim.configure(capacity=20, latency_ms=100, retry_after_s=0.2)
        with cluster(own_redis.url, sim.url, 2) as stack:
            first = stack.wait_final(stack.submit(600), timeout_s=60)
            before = sim.stats()
            rest = stack.wait_final(stack.submit(1400, first=600), timeout_s=90)
            after = sim.stats()
            calls = int(after["calls"]) - int(before["calls"])
            throttled = int(after["over_capacity"]) - int(before["over_capacity"])
            limit = stack.limit()
            print(f"adaptive: converged 429s {throttled}/{calls}; limit {limit}")
            print(f"first 600: {before['calls']} calls, {before['over_capacity']} 429s")
            assert throttled / calls < 0.01
            assert int(after["peak_concurrent"]) <= 2 * 20
            assert_all_upstream(first + rest)
            assert limit is not None and 15 <= limit["limit"] <= 24


def test_an_adaptive_limit_follows_the_capacity_down_and_up(own_redis: RedisProcess) -> None:
    """Capacity 40, then 10, then 40 again, under a steady backlog: the limit is at most 12
    within 3 s of the drop, and back to 34 or more within 10 s of the rise."""
    with SimulatorServer() as sim:
        sim.configure(capacity=40, latency_ms=200, retry_after_s=0.2)
        with cluster(own_redis.url, sim.url, 2) as stack:
            samples: list[tuple[float, float]] = []
            stop = threading.Event()
            locations: list[str] = []

            def feed() -> None:  # keep a backlog: ~100 jobs ahead of the workers
                n = 0
                while not stop.is_set():
                    locations.extend(stack.submit(100, first=n))
                    n += 100
                    time.sleep(0.25)

            feeder = threading.Thread(target=feed, daemon=True)
            feeder.start()
            try:
                start = time.monotonic()

                def sample_until(seconds: float) -> None:
                    end = time.monotonic() + seconds
                    while time.monotonic() < end:
                        limit = stack.limit()
                        if limit:
                            samples.append((time.monotonic() - start, limit["limit"]))
                        time.sleep(0.25)

                sample_until(8)
                dropped = time.monotonic() - start
                sim.configure(capacity=10)
                sample_until(6)
                raised = time.monotonic() - start
                sim.configure(capacity=40)
                sample_until(12)
            finally:
                stop.set()
                feeder.join(timeout=30)
            print("limit over time:", [(round(t, 1), v) for t, v in samples])
            down = next(t for t, v in samples if t > dropped and v <= 12)
            up = next(t for t, v in samples if t > raised and v >= 34)
            print(f"down in {down - dropped:.1f} s, up in {up - raised:.1f} s")
            assert down - dropped < 3
            assert up - raised < 10
            assert_all_upstream(stack.wait_final(locations, timeout_s=120))


def test_a_killed_workers_slots_come_back_when_their_leases_lapse(
    own_redis: RedisProcess,
) -> None:
    """A worker holding 8 slots for calls of 15 s (a read timeout of 20 s) is SIGKILLed:
    nobody releases them, and they come back within SLOT_LEASE_MS (10 s, no longer
    renewed by the dead worker's heartbeat), not at the end of the longest call (41 s)."""
    lease_s = SLOT_LEASE_MS / 1000
    with SimulatorServer() as sim:
        sim.configure(latency_ms=15_000)  # long calls: the kill finds them in flight
        env = {
            "GENQ_UPSTREAM_LIMIT": "fixed",
            "GENQ_UPSTREAM_MAX_IN_FLIGHT": "20",
            "GENQ_WORKER_CONCURRENCY": "8",
            "GENQ_UPSTREAM_TIMEOUT_S": "20",
            "GENQ_UPSTREAM_CONNECT_TIMEOUT_S": "0.5",
        }
        with cluster(own_redis.url, sim.url, 1, **env) as stack:
            stack.submit(8)
            deadline = time.monotonic() + 20
            while (stack.limit() or {}).get("in_flight") != 8:
                assert time.monotonic() < deadline, "the worker never held 8 slots"
                time.sleep(0.1)
            time.sleep(lease_s)  # the leases live on, renewed, past their first term
            assert (stack.limit() or {}).get("in_flight") == 8
            worker = stack.procs[1]
            os.kill(worker.pid, signal.SIGKILL)
            killed = time.monotonic()
            worker.wait(timeout=10)
            time.sleep(1)
            held = stack.limit()
            assert held is not None and held["in_flight"] == 8  # nobody gave them back
            while (stack.limit() or {}).get("in_flight") != 0:
                assert time.monotonic() - killed < lease_s + 1.5, "slots still held"
                time.sleep(0.1)
            print(f"slots back {time.monotonic() - killed:.1f} s after the kill")


def test_batch_items_waiting_for_a_slot_are_not_swept_as_lost(own_redis: RedisProcess) -> None:
    """A fixed limit of 1, its one slot held elsewhere for 12 s: a batch's items wait for
    it past their slot budget (2 s, then a throttled retry) while the batch is quiet
    longer than the sweep's grace. A reconciler sweeping all along finds every item
    queued or held by its worker and fails none; once the slot is back, all succeed."""
    env = {
        "GENQ_UPSTREAM_LIMIT": "fixed",
        "GENQ_UPSTREAM_MAX_IN_FLIGHT": "1",
        "GENQ_WORKER_CONCURRENCY": "8",
        "GENQ_BATCH_SLOT_WAIT_S": "2",
    }
    with SimulatorServer() as sim:
        sim.configure(latency_ms=20)
        settings = settings_for(genq_env(own_redis.url, sim.url, **{**ENV, **env}))
        client = redis.Redis.from_url(own_redis.url, decode_responses=True)
        target = UpstreamTarget.from_settings(settings).name
        held = CapacityStore(client, dataclasses.replace(limit_options(settings), lease_ms=60_000))
        assert held.try_acquire(target, "held-elsewhere").granted
        sweeper = Reconciler(
            client,
            JobStore(client, settings.result_ttl_s),
            QUEUES,
            batches=BatchStore(client, settings.result_ttl_s),
            files=FileStore(client, settings.result_ttl_s),
            grace_s=1,
        )
        with cluster(own_redis.url, sim.url, 1, **env) as stack:
            sdk, batch = start_batch(stack, 20)
            swept: list[str] = []
            until = time.monotonic() + 12
            while time.monotonic() < until:
                client.delete("genq:reconciler:lock")
                swept += sweeper.sweep()
                time.sleep(0.5)
            assert sim.stats()["calls"] == 0  # nothing got past the held slot
            assert swept == []
            held.release(target, "held-elsewhere", CallOutcome.NEUTRAL, 0)
            assert batch_counts(sdk, batch.id, timeout_s=60) == (20, 0)
            assert sim.stats()["calls"] == 20  # each item the upstream's answer


def test_interactive_jobs_go_before_a_batch_that_fills_the_limit(
    own_redis: RedisProcess,
) -> None:
    """A batch fills a fixed limit of 4 (calls of 0.5 s) with 28 more items waiting for a
    slot; interactive jobs submitted meanwhile wait at most 1 s for one
    (``GENQ_INTERACTIVE_SLOT_WAIT_S``), but go before the batch items: every one is the
    upstream's answer, not a ``rate_limited`` fallback, and the batch still completes."""
    env = {
        "GENQ_UPSTREAM_LIMIT": "fixed",
        "GENQ_UPSTREAM_MAX_IN_FLIGHT": "4",
        "GENQ_INTERACTIVE_SLOT_WAIT_S": "1",
    }
    with SimulatorServer() as sim:
        sim.configure(latency_ms=500)
        with cluster(own_redis.url, sim.url, 1, **env) as stack:
            sdk, batch = start_batch(stack, 120)
            deadline = time.monotonic() + 20
            while (stack.limit() or {}).get("waits", 0) < 8:
                assert time.monotonic() < deadline, "the batch never waited for slots"
                time.sleep(0.2)
            locations: list[str] = []
            for i in range(10):
                locations += stack.submit(1, first=i)
                time.sleep(0.2)
            jobs = stack.wait_final(locations, timeout_s=30)
            answers = Counter(
                (j["result"]["source"], j["result"].get("fallback_reason"))
                if j["result"]
                else (j["status"], j["error"]["type"])
                for j in jobs
            )
            print(f"interactive: {answers}")
            assert_all_upstream(jobs)
            assert batch_counts(sdk, batch.id, timeout_s=60) == (120, 0)


def start_batch(stack: Stack, count: int) -> tuple[OpenAI, Batch]:
    """A batch of ``count`` completions, created with the openai SDK."""
    sdk = OpenAI(base_url=f"{stack.url}/v1", api_key=API_KEY, max_retries=0)
    data = completion_lines(count, "batch item")
    upload = sdk.files.create(file=("in.jsonl", io.BytesIO(data)), purpose="batch")
    batch = sdk.batches.create(
        input_file_id=upload.id, endpoint="/v1/completions", completion_window="24h"
    )
    return sdk, batch


def batch_counts(sdk: OpenAI, batch_id: str, timeout_s: float) -> tuple[int, int]:
    """Completed and failed requests of the batch, once it has completed."""
    deadline = time.monotonic() + timeout_s
    while (batch := sdk.batches.retrieve(batch_id)).status != "completed":
        assert time.monotonic() < deadline, batch.status
        time.sleep(0.2)
    assert batch.request_counts is not None
    return batch.request_counts.completed, batch.request_counts.failed
