"""Real processes (spawn) sharing one circuit: one report per trip, and an outage end to end.

Excess calls: when the circuit opens, calls already admitted still reach the upstream
(at most one per thread of every process, less one). These tests bound that excess by
the total concurrency; bench/breaker_bench.py measures it.
"""

from __future__ import annotations

import multiprocessing as mp
import threading
import time
import uuid
from collections import Counter
from typing import Any, cast

import pybreaker
import pytest
import redis
import requests

from core.circuits import snapshot
from core.errors import CircuitOpenError, UpstreamUnavailable
from simulator.server import SimulatorServer
from worker.breaker import SharedCircuitBreaker

pytestmark = pytest.mark.integration
PROCESSES, THREADS = 4, 2


class OpenCounter(pybreaker.CircuitBreakerListener):
    """Counts the transitions to open this process reports."""

    def __init__(self) -> None:
        self.opened = 0

    def state_change(self, cb: Any, old: Any, new: Any) -> None:
        self.opened += new.name == "open"


def always_fails() -> None:
    raise UpstreamUnavailable("down", status=503)


def race_to_trip(redis_url: str, name: str, start: Any, out: Any) -> None:
    """Child process: 4 threads fail through the breaker until it rejects them."""
    listener = OpenCounter()
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    breaker = SharedCircuitBreaker(
        name, client, fail_max=3, reset_timeout=30.0, listeners=[listener]
    )
    calls = Counter[str]()

    def thread() -> None:
        while True:
            try:
                breaker.call(always_fails)
            except UpstreamUnavailable:
                calls["upstream"] += 1
            except CircuitOpenError:
                return

    start.wait()
    threads = [threading.Thread(target=thread) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.put((listener.opened, calls["upstream"]))


def test_a_trip_is_reported_once_when_four_processes_race(redis_url: str) -> None:
    """4 processes x 4 threads failing at once: one opened transition, one listener report."""
    ctx = mp.get_context("spawn")
    name, start, out = f"race-{uuid.uuid4().hex[:8]}", ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=race_to_trip, args=(redis_url, name, start, out)) for _ in range(4)]
    for p in procs:
        p.start()
    results = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=10)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    assert snapshot(client, name)["transitions"]["opened"] == 1
    assert sum(opened for opened, _ in results) == 1
    assert 3 <= sum(calls for _, calls in results) <= 3 + 4 * 4 - 1


def call_simulator(session: requests.Session, url: str) -> None:
    reply = session.post(f"{url}/generate", json={"inputs": "hello there"}, timeout=5)
    if reply.status_code != 200:
        raise UpstreamUnavailable(
            f"simulator answered {reply.status_code}", status=reply.status_code
        )


def traffic(redis_url: str, name: str, sim_url: str, ready: Any, stop: Any, out: Any) -> None:
    """Child process: THREADS threads call the simulator through the breaker until ``stop``."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    breaker = SharedCircuitBreaker(
        name, client, fail_max=5, reset_timeout=0.3, max_reset_timeout=0.3, probe_lease_s=5.0
    )
    seen = Counter[str]()

    def thread() -> None:
        session = requests.Session()
        while not stop.is_set():
            try:
                breaker.call(call_simulator, session, sim_url)
                seen["ok"] += 1
            except (UpstreamUnavailable, CircuitOpenError) as exc:
                seen[type(exc).__name__] += 1
            except Exception as exc:  # anything else is a defect the parent reports
                seen[f"unexpected {type(exc).__name__}"] += 1
            time.sleep(0.01)

    threads = [threading.Thread(target=thread) for _ in range(THREADS)]
    for t in threads:
        t.start()
    ready.wait()
    for t in threads:
        t.join()
    out.put(dict(seen))


def test_four_processes_through_an_outage_send_fail_max_then_one_probe_per_window(
    redis_url: str,
) -> None:
    """Outage: fail_max calls (+ in-flight), then one probe per 0.3 s window; recovery closes."""
    ctx = mp.get_context("spawn")
    name = f"sim-{uuid.uuid4().hex[:8]}"
    ready, stop, out = ctx.Barrier(PROCESSES + 1), ctx.Event(), ctx.Queue()
    with SimulatorServer() as sim:
        args = (redis_url, name, sim.url, ready, stop, out)
        procs = [ctx.Process(target=traffic, args=args) for _ in range(PROCESSES)]
        for p in procs:
            p.start()
        ready.wait(timeout=60)
        time.sleep(0.5)
        sim.configure(mode="outage")
        time.sleep(1.6)
        sim.configure(mode="ok")
        # The simulator counts a call when it decides its answer: none is missed here.
        outage = cast("dict[str, int]", sim.stats()["by_outcome"])
        time.sleep(0.8)
        stop.set()
        results = [out.get(timeout=30) for _ in procs]
        final = cast("dict[str, int]", sim.stats()["by_outcome"])
    for p in procs:
        p.join(timeout=10)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    report = snapshot(client, name)
    failed_probes = report["transitions"]["opened"] - 1
    excess = outage.get("error_503", 0) - 5 - failed_probes
    assert not [k for r in results for k in r if k.startswith("unexpected")]
    assert 0 <= excess <= PROCESSES * THREADS - 1
    assert 3 <= report["transitions"]["half_open"] <= 1.6 / 0.3 + 2
    assert final.get("error_503") == outage.get("error_503")
    assert report["state"] == "closed"
    assert report["transitions"]["closed"] == 1
    assert final["ok"] - outage["ok"] >= 20
