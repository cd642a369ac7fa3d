"""The API's probes while Redis hangs (SIGSTOP) and 60 requests wait on it: /healthz,
/readyz and /metrics answer at once instead of queueing behind the blocked threads."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Iterator

import pytest
import redis
import requests

from devstack.redis import RedisProcess, ensure_redis_server, free_port
from simulator.server import SimulatorServer
from tests.integration.conftest import auth, genq_env, start_process, wait_http

pytestmark = pytest.mark.reliability

WAITING = 60


@pytest.fixture
def hung_api(simulator: SimulatorServer) -> Iterator[tuple[str, RedisProcess]]:
    """An API process on a Redis of its own, which the test may freeze."""
    own = RedisProcess(ensure_redis_server(say=lambda _: None))
    own.start()
    port = free_port()
    env = genq_env(own.url, simulator.url)
    args = [sys.executable, "-m", "uvicorn", "api.main:app", "--port", str(port)]
    proc = start_process([*args, "--log-level", "warning"], env, f"hung-api-{os.getpid()}")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/readyz")
        yield url, own
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        own.stop()


def test_probes_answer_at_once_while_redis_hangs_under_load(
    hung_api: tuple[str, RedisProcess],
) -> None:
    """With Redis stopped and 60 requests blocked on it (each for the 2 s socket timeout),
    /readyz turns 503 within seconds, and each probe answers at once (0.25 s allows for
    a loaded machine): /healthz ok, /readyz and /metrics saying Redis is unavailable."""
    url, own = hung_api
    pid = own.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        blocked = [
            threading.Thread(
                target=lambda: requests.get(f"{url}/v1/jobs/x", headers=auth(), timeout=30),
                daemon=True,
            )
            for _ in range(WAITING)
        ]
        for thread in blocked:
            thread.start()
        time.sleep(0.5)  # every request thread of the API is now waiting on Redis
        deadline = time.monotonic() + 8  # the monitor notices within its staleness window
        while requests.get(f"{url}/readyz", timeout=1).status_code == 200:
            assert time.monotonic() < deadline, "/readyz never noticed the hung Redis"
            time.sleep(0.2)
        timings = {}
        for path in ("/healthz", "/readyz", "/metrics"):
            started = time.monotonic()
            resp = requests.get(f"{url}{path}", timeout=5)
            timings[path] = (time.monotonic() - started, resp)
        print({path: round(seconds * 1000, 1) for path, (seconds, _) in timings.items()})
    finally:
        os.kill(pid, signal.SIGCONT)
    for path, (seconds, _) in timings.items():
        assert seconds < 0.25, (path, seconds)
    assert timings["/healthz"][1].status_code == 200
    assert timings["/readyz"][1].status_code == 503
    assert "genq_redis_up 0.0" in timings["/metrics"][1].text


def test_a_submit_answered_503_on_a_hung_redis_leaves_nothing_behind(
    hung_api: tuple[str, RedisProcess],
) -> None:
    """Redis frozen: the submit answers 503 after the socket timeout; once Redis resumes
    (and runs what it had buffered), there is no job record and no queued message."""
    url, own = hung_api
    client = redis.Redis.from_url(own.url)
    # A first submit warms the API's connection: the next one's script is then written
    # to a socket Redis will read when it resumes.
    warm = requests.post(f"{url}/v1/jobs", json={"prompt": "warm"}, headers=auth(), timeout=5)
    assert warm.status_code == 202
    before = (set(client.scan_iter("genq:job:*")), client.llen("interactive"))
    os.kill(own.pid, signal.SIGSTOP)
    try:
        resp = requests.post(f"{url}/v1/jobs", json={"prompt": "p"}, headers=auth(), timeout=15)
    finally:
        os.kill(own.pid, signal.SIGCONT)
    assert resp.status_code == 503, resp.text
    assert "nothing was accepted" in resp.json()["detail"]
    time.sleep(0.5)  # Redis has read and run whatever was left in its sockets
    assert (set(client.scan_iter("genq:job:*")), client.llen("interactive")) == before
