"""A job whose worker is killed mid-call is redelivered and completed by another worker."""

from __future__ import annotations

import signal
import subprocess
import time
import uuid

import pytest
import redis

from core.contract import QUEUE_INTERACTIVE, TASK_GENERATE, GenerateRequest, JobMessage
from core.records import JobStore
from devstack.redis import RedisProcess
from simulator.server import SimulatorServer, simulated_text
from tests.integration.conftest import (
    REDELIVERY_ENV,
    genq_env,
    publisher_for,
    settings_for,
    start_worker,
)

pytestmark = pytest.mark.integration

CRASH_ENV = {**REDELIVERY_ENV, "GENQ_RETRY_CAP_S": "4", "GENQ_WORKER_CONCURRENCY": "2"}


def _worker(env: dict[str, str], name: str) -> subprocess.Popen[bytes]:
    return start_worker(env, name, f"crash-{name}")


def _wait(predicate, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_killed_worker_job_is_redelivered_and_completed(redis_proc: RedisProcess) -> None:
    """SIGKILL a worker mid-job: after the visibility timeout another worker finishes it."""
    redis_url = redis_proc.url.rsplit("/", 1)[0] + "/1"  # own database: own broker queues
    with SimulatorServer() as sim:
        sim.configure(latency_ms=2500)
        env = genq_env(redis_url, sim.url, **CRASH_ENV)
        settings = settings_for(env)
        client = redis.Redis.from_url(redis_url, decode_responses=True)
        client.flushdb()
        store = JobStore(client, settings.job_ttl_s)
        publisher = publisher_for(settings)

        job_id = uuid.uuid4().hex
        store.create(job_id, owner="crash-test")
        message = JobMessage(job_id=job_id, request=GenerateRequest(prompt="survive a crash"))
        first = _worker(env, "first")
        try:
            publisher.send_task(
                TASK_GENERATE,
                args=[message.model_dump(mode="json")],
                task_id=job_id,
                queue=QUEUE_INTERACTIVE,
                ignore_result=True,
            )
            _wait(lambda: sim.stats()["calls"] >= 1, 30, "the first worker to call upstream")
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=10)
            record = store.get(job_id)
            assert record is not None and record.status == "running"

            second = _worker(env, "second")
            try:
                _wait(lambda: store.get(job_id).status == "succeeded", 40, "redelivery")  # type: ignore[union-attr]
            finally:
                second.terminate()
                second.wait(timeout=15)
        finally:
            if first.poll() is None:
                first.kill()
        record = store.get(job_id)
        assert record is not None and record.result is not None
        assert record.result.text == simulated_text("survive a crash", 256)
        assert sim.stats()["calls"] == 2
