"""Long-poll: ``GET /v1/jobs/{id}?wait_s=N`` answers when the job's final write happens,
reads nothing from Redis while it waits, and answers the record as it is when N runs out.

The API runs as a uvicorn process on a Redis of the test's own, with no worker: the test
writes the job's record itself, so the only reads of job records are the API's.
"""

from __future__ import annotations

import sys
import threading
import time
import uuid
from typing import Any

import pytest
import redis
import requests

from api.auth import owner_of
from core.contract import JobResult
from core.records import JobStore
from devstack.redis import RedisProcess, free_port
from tests.integration.conftest import API_KEY, OTHER_KEY, auth, genq_env, start_process, wait_http

pytestmark = pytest.mark.reliability

RESULT = JobResult(text="done", model="m", source="upstream", degraded=False, latency_ms=1.0)


def reads(client: redis.Redis) -> int:
    """Job-record reads Redis has served: a record read is one HMGET and one LRANGE."""
    stats = client.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("hmget", "lrange"))


def test_a_long_poll_answers_at_the_final_write_and_reads_nothing_while_it_waits(
    own_redis: RedisProcess,
) -> None:
    """A job finished 1.5 s into a 10 s long-poll: answered within 0.3 s of the write,
    succeeded, with no Retry-After; no record read while it waited; another key's long
    poll is a 404 at once; a 0.5 s long-poll of a job that stays queued answers it
    queued, with Retry-After, after 0.5 s."""
    env = genq_env(own_redis.url, "http://127.0.0.1:9")
    port = free_port()
    uvicorn = [sys.executable, "-m", "uvicorn", "api.main:app", "--log-level", "warning"]
    api = start_process([*uvicorn, "--port", str(port)], env, "long-poll-api")
    url = f"http://127.0.0.1:{port}"
    client = redis.Redis.from_url(own_redis.url, decode_responses=True)
    store = JobStore(client, 600)
    try:
        wait_http(f"{url}/healthz")
        job_id, idle_id = uuid.uuid4().hex, uuid.uuid4().hex
        for new in (job_id, idle_id):
            store.create(new, owner_of(API_KEY))
        answer: dict[str, Any] = {}

        def long_poll() -> None:
            resp = requests.get(f"{url}/v1/jobs/{job_id}?wait_s=10", headers=auth(), timeout=15)
            answer.update(resp=resp, at=time.monotonic())

        poller = threading.Thread(target=long_poll)
        poller.start()
        time.sleep(0.5)  # the request is waiting now
        before = reads(client)
        time.sleep(1.0)
        during = reads(client) - before
        assert store.finish(job_id, result=RESULT)
        written = time.monotonic()
        poller.join(timeout=10)
        other = requests.get(
            f"{url}/v1/jobs/{job_id}?wait_s=10", headers=auth(OTHER_KEY), timeout=5
        )
        started = time.monotonic()
        idle = requests.get(f"{url}/v1/jobs/{idle_id}?wait_s=0.5", headers=auth(), timeout=5)
        idle_s = time.monotonic() - started
    finally:
        api.terminate()
        api.wait(timeout=15)
    assert during == 0, f"{during} record reads while the long-poll waited"
    resp = answer["resp"]
    assert resp.status_code == 200
    assert resp.json()["status"] == "succeeded" and resp.json()["result"]["text"] == "done"
    assert "Retry-After" not in resp.headers
    assert answer["at"] - written < 0.3
    assert other.status_code == 404
    assert idle.status_code == 200 and idle.json()["status"] == "queued"
    assert idle.headers["Retry-After"] == "1"
    assert 0.5 <= idle_s < 1.5
