"""Chaos soak: 2,000 jobs through four worker processes while 30% of upstream calls fail
(500, 429 with Retry-After, 503 loading, hangs past the timeout, dropped connections).

Every job ends final, the open-jobs index ends empty, and the outcomes add up: each
upstream call the simulator received is an attempt recorded on a job (so no call was
made around the circuit breaker: an attempt the open circuit refused is ``rejected``,
and made none), and each answer it gave is one job's upstream result."""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis
import requests

from core import keys
from devstack.redis import RedisProcess, free_port
from simulator.server import SimulatorServer
from tests.integration.conftest import auth, genq_env, start_process, start_worker, wait_http

pytestmark = pytest.mark.reliability

JOBS = 2000
WORKERS = 4
FINAL = ("succeeded", "failed")

ENV = {
    "GENQ_UPSTREAM_TIMEOUT_S": "0.5",  # the simulator's hangs (2 s) go past it
    "GENQ_UPSTREAM_CONNECT_TIMEOUT_S": "0.5",
    "GENQ_RETRY_BASE_S": "0.1",
    "GENQ_RETRY_CAP_S": "1",
    "GENQ_MAX_RETRIES": "3",
    "GENQ_BREAKER_FAIL_MAX": "8",
    "GENQ_BREAKER_RESET_TIMEOUT_S": "0.5",
    "GENQ_BREAKER_MAX_RESET_TIMEOUT_S": "2",
    "GENQ_WORKER_CONCURRENCY": "4",
    # The soak's faults are random, not a provider at its capacity: an adaptive call limit
    # reads its hangs and 429s as "too many calls" and halves the soak's pace (66 s against
    # ~30 s, measured). The limit is tested in test_call_limit.py; here it holds all 16.
    "GENQ_UPSTREAM_LIMIT": "fixed",
    "GENQ_UPSTREAM_MAX_IN_FLIGHT": "16",
}
FAULTS: dict[str, Any] = {
    "latency_ms": 10,
    "error_rate": 0.06,  # 500
    # of the other 94%: 0.94 x 0.26 = 24% more, 30% in all
    "fault_rates": {"rate_limit": 0.065, "loading": 0.065, "hang": 0.065, "down": 0.065},
    "retry_after_s": 0.5,
    "estimated_time_s": 0.5,
    "hang_s": 2,
    "seed": 12,
}


def _job(i: int) -> dict[str, Any]:
    """Every other job carries a context document: while the circuit is open, that one is
    answered with an excerpt of it, the other fails at once (``circuit_open``)."""
    if i % 2:
        return {"prompt": f"soak {i}"}
    doc = {"id": f"doc-{i}", "text": f"Soak document {i}. It says what the answer is."}
    return {"prompt": f"soak {i}: what is the answer?", "context": [doc]}


def _submit(api_url: str, first: int, count: int) -> list[str]:
    with requests.Session() as http:
        return [
            http.post(f"{api_url}/v1/jobs", json=_job(i), headers=auth(), timeout=10).headers[
                "Location"
            ]
            for i in range(first, first + count)
        ]


def _jobs(api_url: str, locations: list[str]) -> list[dict[str, Any]]:
    with requests.Session() as http:
        return [http.get(f"{api_url}{loc}", headers=auth(), timeout=10).json() for loc in locations]


def test_chaos_soak_ends_with_every_job_final_and_every_call_accounted(
    own_redis: RedisProcess,
) -> None:
    with SimulatorServer() as sim:
        sim.configure(**FAULTS)
        env = genq_env(own_redis.url, sim.url, **ENV)
        port = str(free_port())
        api = [sys.executable, "-m", "uvicorn", "api.main:app", "--log-level", "warning"]
        procs: list[subprocess.Popen[bytes]] = [
            start_process([*api, "--port", port], env, "soak-api"),
            *(start_worker(env, f"soak-{n}", f"soak-{n}") for n in range(WORKERS)),
        ]
        api_url = f"http://127.0.0.1:{port}"
        try:
            wait_http(f"{api_url}/readyz")
            started = time.monotonic()
            with ThreadPoolExecutor(4) as pool:
                share = JOBS // 4
                parts = pool.map(lambda n: _submit(api_url, n * share, share), range(4))
                locations = [loc for part in parts for loc in part]
            assert len(set(locations)) == JOBS

            deadline = time.monotonic() + 120
            jobs = _jobs(api_url, locations)
            while any(j["status"] not in FINAL for j in jobs) and time.monotonic() < deadline:
                time.sleep(2)
                jobs = _jobs(api_url, locations)
            elapsed = time.monotonic() - started
            stuck = Counter(j["status"] for j in jobs if j["status"] not in FINAL)
            assert not stuck, f"not final after {elapsed:.0f} s: {dict(stuck)}"

            stats = sim.stats()
            by_outcome: dict[str, int] = stats["by_outcome"]  # type: ignore[assignment]
            attempts = Counter(a["outcome"] for j in jobs for a in j["attempts"])
            sources = Counter(j["result"]["source"] for j in jobs if j["result"])
            statuses = Counter(j["status"] for j in jobs)
            print(f"soak: {JOBS} jobs final in {elapsed:.1f} s; {dict(statuses)};")
            print(f"sources {dict(sources)}; attempts {dict(attempts)};")
            print(f"simulator {stats['calls']} calls {by_outcome}")

            # Every call the simulator received is a recorded attempt, and no other.
            assert stats["calls"] == attempts["succeeded"] + attempts["failed"]
            # Each 200 it sent in time is one job's upstream answer (a hang's late 200
            # comes after the timeout: a failed attempt).
            assert by_outcome.get("ok", 0) == attempts["succeeded"] == sources["upstream"]
            faults = stats["calls"] - by_outcome.get("ok", 0)
            assert 0.2 < faults / stats["calls"] < 0.4  # the soak did see ~30% faults
            client = redis.Redis.from_url(own_redis.url)
            assert client.zcard(keys.open_jobs()) == 0  # nothing left for the reconciler
            assert all(proc.poll() is None for proc in procs)
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(timeout=15)
