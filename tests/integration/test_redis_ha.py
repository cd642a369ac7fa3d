"""genq against a password-protected Redis, directly and through a real Redis Sentinel:
a job runs end to end (API process → broker → worker process → simulator → job record),
and no password reaches a log."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest
import redis
import requests

from core import circuits, keys
from core.records import JobStore
from core.settings import Settings
from devstack.redis import RedisProcess, SentinelProcess, ensure_redis_server
from simulator.server import SimulatorServer, simulated_text
from tests.integration.conftest import API_KEY, auth, genq_env, settings_for, wait_final
from tests.integration.redis_support import GenqProcesses, genq_processes
from worker.upstream import UpstreamTarget

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

MASTER_NAME = "mymaster"


@pytest.fixture(scope="module")
def redis_binary() -> str:
    return ensure_redis_server(say=lambda _: None)


@pytest.fixture
def master(redis_binary: str) -> Iterator[RedisProcess]:
    """A redis-server of its own that refuses clients without its password."""
    proc = RedisProcess(redis_binary, password=f"master-{secrets.token_hex(12)}")
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


def master_client(master: RedisProcess) -> redis.Redis:
    """A client straight to the master (not through a sentinel), with its password."""
    return redis.Redis(port=master.port, password=master.password, decode_responses=True)


def run_one_job(genq: GenqProcesses, settings: Settings, client: redis.Redis, prompt: str) -> None:
    """Submit a job over HTTP, wait until it is final; it succeeded upstream, and its record
    and the upstream's circuit are on the Redis ``client`` talks to."""
    resp = requests.post(
        f"{genq.api_url}/v1/jobs",
        json={"prompt": prompt, "params": {"max_new_tokens": 4}},
        headers=auth(API_KEY),
        timeout=10,
    )
    assert resp.status_code == 202, resp.text
    job = wait_final(genq.api_url, resp.headers["Location"], timeout_s=20)
    assert job["status"] == "succeeded", job
    assert job["result"]["source"] == "upstream"
    assert job["result"]["text"] == simulated_text(prompt, 4)

    assert client.exists(keys.job(job["id"])) == 1
    record = JobStore(client, settings.job_ttl_s).get(job["id"])
    assert record is not None and record.status == "succeeded"
    name = UpstreamTarget.from_settings(settings).name
    assert name in client.smembers(keys.circuits())
    assert circuits.snapshot(client, name)["state"] == "closed"
    listed = requests.get(f"{genq.api_url}/v1/circuits", headers=auth(API_KEY), timeout=5)
    assert {c["name"]: c["state"] for c in listed.json()}[name] == "closed"


def test_job_runs_end_to_end_through_a_password_protected_sentinel(
    redis_binary: str, master: RedisProcess, sim: SimulatorServer
) -> None:
    """Via sentinel:// (sentinel and master each with a password) a job succeeds upstream,
    its record and circuit are on the master, and neither password is in any log."""
    assert master.password is not None
    sentinel_password = f"sentinel-{secrets.token_hex(12)}"
    sentinel = SentinelProcess(
        redis_binary,
        master.port,
        master_name=MASTER_NAME,
        master_password=master.password,
        password=sentinel_password,
    )
    sentinel.start()
    try:
        env = genq_env(
            sentinel.url,
            sim.url,
            GENQ_REDIS_SENTINEL_MASTER=MASTER_NAME,
            GENQ_REDIS_SENTINEL_PASSWORD=sentinel_password,
            GENQ_WORKER_CONCURRENCY="2",
        )
        settings = settings_for(env)
        assert settings.uses_sentinel
        # The URL names only the sentinel; the master's port is learnt from it.
        assert str(master.port) not in settings.redis_url
        client = master_client(master)
        with genq_processes(env, "sentinel") as genq:
            run_one_job(genq, settings, client, "through the sentinel")
        logs = genq.log_text()
    finally:
        sentinel.stop()
    assert "sentinel://:**@" in logs  # the worker's banner shows the URL, masked
    assert master.password not in logs
    assert sentinel_password not in logs


def test_job_runs_end_to_end_on_a_password_protected_redis(
    master: RedisProcess, sim: SimulatorServer
) -> None:
    """Via redis://:password@ a job succeeds upstream, its record is on that Redis, and the
    password is in no log."""
    assert master.password is not None
    env = genq_env(master.url, sim.url, GENQ_WORKER_CONCURRENCY="2")
    settings = settings_for(env)
    client = master_client(master)
    with genq_processes(env, "requirepass") as genq:
        run_one_job(genq, settings, client, "behind a password")
    logs = genq.log_text()
    assert "redis://:**@" in logs  # the worker's banner shows the URL, masked
    assert master.password not in logs
