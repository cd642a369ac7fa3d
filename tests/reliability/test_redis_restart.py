"""Redis is killed (SIGKILL) while two workers run a few hundred jobs, and restarted on
the same port and data: both workers stay up, reconnect, and every accepted job
succeeds; none is lost between a failed retry and the restart.

This is the test that holds Celery below 5.7: celery 5.7.0 closes the broker connection
after the consumer collects it, kombu's restore of unacknowledged messages then finds
no client, and the worker exits (``'NoneType' object has no attribute 'hostname'``)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
import requests

from devstack.redis import RedisProcess, ensure_redis_server, free_port
from simulator.server import SimulatorServer
from tests.integration.conftest import auth, genq_env, start_process, start_worker, wait_http

pytestmark = pytest.mark.reliability

RUN_S = 16.0
KILL_AT_S = 5.0
DOWN_S = 4.0

# Small timeouts, as the worker-crash test has them, so redelivery is seen in the test.
ENV = {
    "GENQ_UPSTREAM_TIMEOUT_S": "3",
    "GENQ_UPSTREAM_CONNECT_TIMEOUT_S": "0.5",
    "GENQ_TASK_SOFT_TIME_LIMIT_S": "6",
    "GENQ_TASK_TIME_LIMIT_S": "7",
    "GENQ_VISIBILITY_TIMEOUT_S": "9",
    "GENQ_RETRY_CAP_S": "2",
    "GENQ_MAX_RETRIES": "20",
    "GENQ_UNACKED_RESTORE_INTERVAL_S": "1",
    "GENQ_WORKER_CONCURRENCY": "4",
}


@pytest.fixture
def persistent_redis() -> Iterator[RedisProcess]:
    """A Redis that keeps every write in its append-only file, as a production one does."""
    binary = ensure_redis_server(say=lambda _: None)
    proc = RedisProcess(binary, extra_args=["--appendonly", "yes", "--appendfsync", "always"])
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


def _statuses(api_url: str, locations: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for location in locations:
        job = requests.get(f"{api_url}{location}", headers=auth(), timeout=5).json()
        counts[job["status"]] = counts.get(job["status"], 0) + 1
    return counts


def _submit(api_url: str, until: float, accepted: list[str]) -> None:
    """A steady client (~20 jobs/s) that keeps going through the outage; a 503 is not
    an accepted job."""
    with requests.Session() as http:
        while time.monotonic() < until:
            try:
                answer = http.post(
                    f"{api_url}/v1/jobs", json={"prompt": "hello"}, headers=auth(), timeout=5
                )
                if answer.status_code == 202:
                    accepted.append(answer.headers["Location"])
            except requests.RequestException:
                pass
            time.sleep(0.05)


def test_workers_survive_a_redis_restart_and_lose_no_job(
    persistent_redis: RedisProcess,
) -> None:
    with SimulatorServer() as sim:
        sim.configure(latency_ms=200)
        env = genq_env(persistent_redis.url, sim.url, **ENV)
        api = [sys.executable, "-m", "uvicorn", "api.main:app", "--log-level", "warning"]
        port = str(free_port())
        procs: list[subprocess.Popen[bytes]] = [
            start_process([*api, "--port", port], env, "restart-api"),
            start_worker(env, "restart-a", "restart-a"),
            start_worker(env, "restart-b", "restart-b"),
        ]
        api_url = f"http://127.0.0.1:{port}"
        accepted: list[str] = []
        try:
            wait_http(f"{api_url}/readyz")
            client = threading.Thread(
                target=_submit, args=(api_url, time.monotonic() + RUN_S, accepted)
            )
            client.start()
            time.sleep(KILL_AT_S)
            persistent_redis.stop()  # SIGKILL
            time.sleep(DOWN_S)
            persistent_redis.start()
            client.join()
            for proc in procs[1:]:  # both workers outlived the outage
                assert proc.poll() is None, f"a worker exited with {proc.returncode}"

            deadline = time.monotonic() + 60
            counts = _statuses(api_url, accepted)
            while counts.get("succeeded", 0) < len(accepted) and time.monotonic() < deadline:
                time.sleep(1)
                counts = _statuses(api_url, accepted)
            assert counts == {"succeeded": len(accepted)}
            assert len(accepted) > 100
            assert all(proc.poll() is None for proc in procs[1:])
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(timeout=15)
