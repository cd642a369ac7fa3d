"""Integration fixtures: genq configured against the session's real redis-server, the
upstream simulator over HTTP, a real Celery worker (pytest-celery's in-process
``celery_session_worker``, threads pool) and the API as a uvicorn process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from celery import Celery

from core.contract import QUEUE_BATCH, QUEUE_INTERACTIVE
from core.settings import Settings
from devstack.redis import free_port
from simulator.server import SimulatorServer
from worker.app import app as genq_app
from worker.app import celery_config
from worker.testing import configured

API_KEY = "integration-key-0123456789"
OTHER_KEY = "integration-other-key-0123456"
ADMIN_KEY = "integration-admin-key-012345"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test in tests/integration carries the ``integration`` marker (``-m`` relies on it)."""
    here = Path(__file__).parent
    unmarked = [
        i.nodeid
        for i in items
        if here in i.path.parents and not i.get_closest_marker("integration")
    ]
    if unmarked:
        raise pytest.UsageError(f"integration tests without the marker: {unmarked}")


@pytest.fixture
def r(redis_url: str) -> Iterator[redis.Redis]:
    """A decoded client of the session's redis-server."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def name() -> str:
    """A circuit name no other test uses."""
    return f"test-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def simulator() -> Iterator[SimulatorServer]:
    """The upstream simulator, shared by the session; tests reset it when they change it."""
    with SimulatorServer() as server:
        yield server


@pytest.fixture
def sim(simulator: SimulatorServer, redis_url: str) -> Iterator[SimulatorServer]:
    """The session simulator, reset to healthy defaults before and after the test, with
    genq's call limits forgotten (a test's 429s must not slow the next test down)."""
    simulator.reset()
    _forget_call_limits(redis_url)
    yield simulator
    simulator.reset()
    _forget_call_limits(redis_url)


def _forget_call_limits(redis_url: str) -> None:
    with redis.Redis.from_url(redis_url) as client:
        names = list(client.scan_iter(match="genq:limit:*", count=1000))
        if names:
            client.delete(*names)


def genq_env(redis_url: str, upstream_url: str, **extra: str) -> dict[str, str]:
    """GENQ_* variables for a test process."""
    return {
        "GENQ_REDIS_URL": redis_url,
        "GENQ_UPSTREAM_URL": upstream_url,
        "GENQ_UPSTREAM_PROTOCOL": "hf",
        "GENQ_UPSTREAM_TIMEOUT_S": "5",
        "GENQ_API_KEYS": f"{API_KEY},{OTHER_KEY}",
        "GENQ_ADMIN_API_KEYS": ADMIN_KEY,
        "GENQ_RETRY_BASE_S": "0.2",
        # Retries stop before the circuit opens, so both paths can be seen from one job.
        "GENQ_MAX_RETRIES": "2",
        "GENQ_BREAKER_FAIL_MAX": "4",
        "GENQ_BREAKER_RESET_TIMEOUT_S": "1",
        "GENQ_REDIS_SOCKET_TIMEOUT_S": "2",
        # Small enough for the batch tests to go past them.
        "GENQ_MAX_UPLOAD_BYTES": "2000000",
        "GENQ_MAX_BATCH_REQUESTS": "300",
        "GENQ_MAX_BODY_BYTES": "200000",
        "GENQ_BODY_TIMEOUT_S": "2",
        "GENQ_MAX_CONTEXT_CHARS": "50000",
        **extra,
    }


#: Small timeouts, so that a redelivery happens within a test: upstream timeout < soft
#: limit < hard limit < visibility timeout, and the longest attempt (0.2 s slot wait +
#: 0.5 + 2 x 3 s call + 2 s Redis) < the visibility timeout, as settings require.
REDELIVERY_ENV = {
    "GENQ_UPSTREAM_TIMEOUT_S": "3",
    "GENQ_UPSTREAM_CONNECT_TIMEOUT_S": "0.5",
    "GENQ_TASK_SOFT_TIME_LIMIT_S": "6",
    "GENQ_TASK_TIME_LIMIT_S": "7",
    "GENQ_VISIBILITY_TIMEOUT_S": "9",
    "GENQ_BATCH_SLOT_WAIT_S": "0.2",
    "GENQ_INTERACTIVE_SLOT_WAIT_S": "0.2",
    "GENQ_UNACKED_RESTORE_INTERVAL_S": "1",
    "GENQ_SWEEP_EVERY_S": "1",
    "GENQ_SWEEP_GRACE_S": "3",
}


def settings_for(env: dict[str, str]) -> Settings:
    """The Settings a process started with ``env`` (GENQ_* variables) reads."""
    return Settings.model_validate({k[5:].lower(): v for k, v in env.items()})


def publisher_for(settings: Settings) -> Celery:
    """A Celery app that publishes as genq's API does, for a worker started elsewhere."""
    app = Celery("genq-test-publisher", set_as_current=False)
    app.conf.update(celery_config(settings))
    return app


@pytest.fixture(scope="session")
def genq_settings(redis_url: str, simulator: SimulatorServer) -> Iterator[Settings]:
    """This process's genq settings, pointing at the test Redis and the simulator."""
    with configured(genq_env(redis_url, simulator.url)) as settings:
        yield settings


@pytest.fixture(scope="session")
def celery_session_app(genq_settings: Settings) -> Celery:
    """genq's own Celery app (not a test app), configured for the test Redis."""
    genq_app.conf.update(celery_config(genq_settings))
    return genq_app


@pytest.fixture(scope="session")
def celery_worker_pool() -> str:
    return "threads"


@pytest.fixture(scope="session")
def celery_worker_parameters() -> dict[str, Any]:
    # No ping check: genq ignores Celery results, and the ping waits on one.
    return {
        "queues": (QUEUE_INTERACTIVE, QUEUE_BATCH),
        "concurrency": 4,
        "perform_ping_check": False,
    }


def start_process(args: list[str], env: dict[str, str], log_name: str) -> subprocess.Popen[bytes]:
    """A child process with the test's env, its output in a log file under /tmp."""
    log = open(f"/tmp/genq-test-{log_name}.log", "wb")  # noqa: SIM115 - lives with the child
    return subprocess.Popen(args, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT)


def start_worker(env: dict[str, str], hostname: str, log_name: str) -> subprocess.Popen[bytes]:
    """A ``celery -A worker.app worker`` process on both queues, as the Procfile starts it."""
    args = [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "-Q", "interactive,batch"]
    args += ["--hostname", f"{hostname}@%h", "--loglevel", "INFO"]
    return start_process(args, env, log_name)


def start_flower(env: dict[str, str], port: int, log_name: str) -> subprocess.Popen[bytes]:
    """``celery -A worker.app flower`` on loopback, as the Procfile starts it."""
    args = [sys.executable, "-m", "celery", "-A", "worker.app", "flower"]
    return start_process([*args, "--address=127.0.0.1", f"--port={port}"], env, log_name)


def completion_lines(count: int, prompt: str, prefix: str = "req") -> bytes:
    """A batch input file: ``count`` ``/v1/completions`` request lines, custom ids
    ``{prefix}-{i}``, prompts ``{prompt} {i}``."""
    lines = [
        {
            "custom_id": f"{prefix}-{i}",
            "method": "POST",
            "url": "/v1/completions",
            "body": {"prompt": f"{prompt} {i}", "max_tokens": 8},
        }
        for i in range(count)
    ]
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def wait_http(url: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=1).status_code < 500:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer in {timeout_s} s")


@contextmanager
def serve_api(env: dict[str, str], log_name: str) -> Iterator[str]:
    """``uvicorn api.main:app`` with ``env`` on a free port, until the block ends; its URL."""
    port = free_port()
    uvicorn = [sys.executable, "-m", "uvicorn", "api.main:app", "--log-level", "warning"]
    proc = start_process([*uvicorn, "--port", str(port)], env, log_name)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/healthz")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=15)


@pytest.fixture(scope="session")
def api_url(redis_url: str, simulator: SimulatorServer) -> Iterator[str]:
    """The API served by a real uvicorn process."""
    with serve_api(genq_env(redis_url, simulator.url), "api") as url:
        yield url


def auth(key: str = API_KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def wait_final(
    api_url: str, location: str, key: str = API_KEY, timeout_s: float = 20.0
) -> dict[str, Any]:
    """Poll a job until it is final; fails the test if it is not within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job: dict[str, Any] = requests.get(
            f"{api_url}{location}", headers=auth(key), timeout=5
        ).json()
        if job["status"] in ("succeeded", "failed"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {location} not final after {timeout_s} s: {job}")
