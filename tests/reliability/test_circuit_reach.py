"""The breaker's word is final, with real worker processes and the API over HTTP.

An operator's open, close and reset reach every worker within the views' bounds
(``DEFAULT_OPEN_VIEW_TTL_S``, 0.5 s); a job that waited for a call slot asks its circuit
again before it calls; batch items with nothing to fall back on wait out an outage
instead of failing. The circuits' reset timeout is 30 s here, so an old open window that
a worker kept would outlast every check.
"""

from __future__ import annotations

import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests

from devstack.redis import RedisProcess, free_port
from simulator.server import SimulatorServer
from tests.integration.conftest import (
    ADMIN_KEY,
    auth,
    genq_env,
    settings_for,
    start_process,
    start_worker,
    wait_http,
)
from worker.upstream import UpstreamTarget

pytestmark = pytest.mark.reliability

FAIL_MAX = 3
ENV = {
    "GENQ_BREAKER_FAIL_MAX": str(FAIL_MAX),
    "GENQ_BREAKER_RESET_TIMEOUT_S": "30",
    "GENQ_MAX_RETRIES": "0",
    "GENQ_WORKER_CONCURRENCY": "4",
}
WORKERS = ("reach-0", "reach-1")


class Cluster:
    """The API and two workers on a Redis and a simulator of the test's own."""

    def __init__(self, url: str, env: dict[str, str]) -> None:
        self.url, self.env = url, env
        self.model = f"simulator/reach-{uuid.uuid4().hex[:8]}"
        self.circuit = UpstreamTarget.from_settings(settings_for(env), self.model).name

    def submit(self, count: int, **body: Any) -> list[str]:
        with requests.Session() as http:
            return [
                http.post(
                    f"{self.url}/v1/jobs",
                    json={"prompt": f"reach {uuid.uuid4().hex}", "model": self.model, **body},
                    headers=auth(),
                    timeout=10,
                ).headers["Location"]
                for _ in range(count)
            ]

    def finals(self, locations: list[str], timeout_s: float = 30) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout_s
        with requests.Session() as http:
            while True:
                jobs = [
                    http.get(f"{self.url}{loc}", headers=auth(), timeout=10).json()
                    for loc in locations
                ]
                if all(j["status"] in ("succeeded", "failed") for j in jobs):
                    return jobs
                assert time.monotonic() < deadline, Counter(j["status"] for j in jobs)
                time.sleep(0.1)

    def steer(self, action: str) -> str:
        resp = requests.post(
            f"{self.url}/v1/circuits/{self.circuit}/{action}",
            headers=auth(ADMIN_KEY),
            timeout=10,
        )
        assert resp.status_code == 200, resp.text
        return str(resp.json()["state"])

    def report(self) -> dict[str, Any]:
        listed = requests.get(f"{self.url}/v1/circuits", headers=auth(), timeout=10).json()
        return next(c for c in listed if c["name"] == self.circuit)


@contextmanager
def cluster(redis_url: str, sim_url: str, **env: str) -> Iterator[Cluster]:
    full_env = genq_env(redis_url, sim_url, **{**ENV, **env})
    port = str(free_port())
    api = [sys.executable, "-m", "uvicorn", "api.main:app", "--log-level", "warning"]
    procs = [start_process([*api, "--port", port], full_env, "reach-api")]
    procs += [start_worker(full_env, name, name) for name in WORKERS]
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz")
        yield Cluster(f"http://127.0.0.1:{port}", full_env)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=15)


def outcomes(jobs: list[dict[str, Any]]) -> Counter[str]:
    """``upstream``, ``excerpt``…, or the error type of a failed job."""
    return Counter(j["result"]["source"] if j["result"] else j["error"]["type"] for j in jobs)


def ran_on_both_workers(jobs: list[dict[str, Any]]) -> bool:
    """Whether each worker's log shows it received one of ``jobs`` (task id = job id)."""
    logs = [Path(f"/tmp/genq-test-{name}.log").read_text(errors="replace") for name in WORKERS]
    return all(any(f"[{j['id']}]" in log for j in jobs) for log in logs)


def test_open_close_and_reset_reach_both_workers_within_a_second(
    own_redis: RedisProcess,
) -> None:
    """Force open, force close and reset (of a circuit tripped for 30 s), each followed
    1 s later by 12 jobs spread over two workers: every job is answered per the new state."""
    with SimulatorServer() as sim:
        sim.configure(latency_ms=150)
        with cluster(own_redis.url, sim.url) as c:
            warm = c.finals(c.submit(12))
            assert outcomes(warm) == {"upstream": 12}
            assert ran_on_both_workers(warm)  # both hold a closed view now

            assert c.steer("open") == "forced_open"
            time.sleep(1)
            calls = sim.stats()["calls"]
            refused = c.finals(c.submit(12, fallback="none"))
            assert outcomes(refused) == {"service_unavailable": 12}
            assert sim.stats()["calls"] == calls
            assert ran_on_both_workers(refused)  # both hold a forced-open view now

            assert c.steer("close") == "forced_closed"
            time.sleep(1)
            closed = c.finals(c.submit(12, fallback="none"))
            assert outcomes(closed) == {"upstream": 12}
            assert ran_on_both_workers(closed)

            assert c.steer("reset") == "closed"
            sim.configure(mode="outage")
            tripped = c.finals(c.submit(12, fallback="none"))
            assert c.report()["state"] == "open" and c.report()["retry_after"] > 20
            assert ran_on_both_workers(tripped)  # both saw the 30 s window
            sim.configure(mode="ok")
            assert c.steer("reset") == "closed"
            time.sleep(1)
            after = c.finals(c.submit(12, fallback="none"))
            assert outcomes(after) == {"upstream": 12}


def test_jobs_that_waited_for_a_slot_do_not_call_a_provider_that_went_down(
    own_redis: RedisProcess,
) -> None:
    """Fixed limit 2, 1.5 s calls, 20 jobs admitted and waiting for a slot, then the
    provider goes down: no more calls reach it than the trip count, the calls in flight
    and the probes; the rest are refused by the circuit they asked again."""
    env = {
        "GENQ_UPSTREAM_LIMIT": "fixed",
        "GENQ_UPSTREAM_MAX_IN_FLIGHT": "2",
        "GENQ_WORKER_CONCURRENCY": "12",
        "GENQ_INTERACTIVE_SLOT_WAIT_S": "30",
    }
    with SimulatorServer() as sim:
        sim.configure(latency_ms=1500)
        with cluster(own_redis.url, sim.url, **env) as c:
            locations = c.submit(20, fallback="none")
            deadline = time.monotonic() + 10
            while sim.stats()["calls"] < 2:
                assert time.monotonic() < deadline, "the first two calls never started"
                time.sleep(0.02)
            sim.configure(mode="outage")
            at_outage = int(sim.stats()["calls"])
            jobs = c.finals(locations, timeout_s=40)
            report = c.report()
    later = int(sim.stats()["calls"]) - at_outage
    probes = report["transitions"]["half_open"]
    counts = outcomes(jobs)
    print(f"calls after the outage began: {later}; probes {probes}; {dict(counts)}")
    assert later <= FAIL_MAX + 2 + probes
    assert counts["service_unavailable"] >= 20 - (at_outage + later)
    assert report["state"] == "open"
