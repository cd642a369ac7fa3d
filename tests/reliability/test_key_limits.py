"""Per-key limits (``GENQ_KEY_MAX_OPEN``, ``GENQ_KEY_RATE_PER_MIN``) against real API
processes on a Redis of the test's own: over a limit, a 429 with ``Retry-After`` naming
it, in each route's error shape, and nothing accepted; other keys are not touched."""

from __future__ import annotations

import concurrent.futures
import io
import json
import math
import time
import uuid

import openai
import pytest
import redis
import requests
from openai import OpenAI

from core.contract import JobResult
from core.records import JobStore
from devstack.redis import RedisProcess
from simulator.server import SimulatorServer
from tests.integration.conftest import (
    API_KEY,
    OTHER_KEY,
    auth,
    genq_env,
    serve_api,
    start_worker,
    wait_final,
)

pytestmark = pytest.mark.reliability

RESULT = JobResult(text="done", model="m", source="upstream", degraded=False, latency_ms=1.0)


def submit(url: str, key: str = API_KEY) -> requests.Response:
    body = {"prompt": f"limits {uuid.uuid4().hex}"}
    return requests.post(f"{url}/v1/jobs", json=body, headers=auth(key), timeout=10)


def jobs(client: redis.Redis) -> int:
    return sum(1 for k in client.scan_iter("genq:job:*") if str(k).count(":") == 2)


def batch_file(client: OpenAI, n: int) -> str:
    lines = [
        {"custom_id": f"r{i}", "method": "POST", "url": "/v1/completions", "body": {"prompt": "x"}}
        for i in range(n)
    ]
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    return client.files.create(file=("in.jsonl", io.BytesIO(data)), purpose="batch").id


def test_a_key_over_its_open_work_gets_429_and_others_do_not(own_redis: RedisProcess) -> None:
    """GENQ_KEY_MAX_OPEN=5, no worker: a key's sixth open job is a 429 naming the limit,
    with Retry-After, and writes nothing; another key still submits; a batch that would
    pass the limit is OpenAI's 429 (the SDK's RateLimitError); once a job is final, the
    key may submit again."""
    env = genq_env(own_redis.url, "http://127.0.0.1:9", GENQ_KEY_MAX_OPEN="5")
    client = redis.Redis.from_url(own_redis.url, decode_responses=True)
    with serve_api(env, "limits-open") as url:
        accepted = [submit(url) for _ in range(5)]
        assert [r.status_code for r in accepted] == [202] * 5
        before = jobs(client)
        refused = submit(url)
        assert refused.status_code == 429, refused.text
        assert "5" in refused.json()["detail"] and "GENQ_KEY_MAX_OPEN" in refused.json()["detail"]
        assert int(refused.headers["Retry-After"]) >= 1
        assert jobs(client) == before  # nothing written
        assert submit(url, OTHER_KEY).status_code == 202
        other = OpenAI(base_url=f"{url}/v1", api_key=OTHER_KEY, max_retries=0)
        assert (
            other.batches.create(
                input_file_id=batch_file(other, 4),
                endpoint="/v1/completions",
                completion_window="24h",
            ).status
            == "in_progress"
        )  # 1 job + 4 items: at the limit
        with pytest.raises(openai.RateLimitError) as caught:
            other.batches.create(
                input_file_id=batch_file(other, 1),
                endpoint="/v1/completions",
                completion_window="24h",
            )
        assert "GENQ_KEY_MAX_OPEN" in str(caught.value)
        assert caught.value.response.headers["Retry-After"]
        JobStore(client, 600).finish(accepted[0].json()["id"], result=RESULT)
        assert submit(url).status_code == 202


def test_a_keys_rate_is_shared_by_every_api_process(own_redis: RedisProcess) -> None:
    """GENQ_KEY_RATE_PER_MIN=3 and two API processes: the key's fourth submission in the
    minute is refused whichever process takes it, with the wait to the next minute;
    another key is not."""
    env = genq_env(own_redis.url, "http://127.0.0.1:9", GENQ_KEY_RATE_PER_MIN="3")
    with serve_api(env, "limits-rate-1") as first, serve_api(env, "limits-rate-2") as second:
        if time.time() % 60 > 55:
            time.sleep(6)  # all four in one minute
        codes = [submit(u).status_code for u in (first, second, first)]
        assert codes == [202, 202, 202]
        refused = submit(second)
        assert refused.status_code == 429
        assert "GENQ_KEY_RATE_PER_MIN" in refused.json()["detail"]
        assert 1 <= int(refused.headers["Retry-After"]) <= 60
        assert submit(second, OTHER_KEY).status_code == 202


def test_a_burst_from_one_key_does_not_keep_another_keys_job_waiting(
    own_redis: RedisProcess, simulator: SimulatorServer
) -> None:
    """Key A sends 1,000 interactive jobs at once; with GENQ_KEY_MAX_OPEN=40 most are
    refused at once (429), so key B's single job waits behind about 40 of them, not the
    whole burst: with 4 threads at 50 ms a call, it is answered within 3 s (the burst
    alone would take 12 s)."""
    simulator.configure(latency_ms=50)
    env = genq_env(
        own_redis.url, simulator.url, GENQ_KEY_MAX_OPEN="40", GENQ_WORKER_CONCURRENCY="4"
    )
    worker = start_worker(env, "limits", "limits-worker")
    try:
        with serve_api(env, "limits-burst") as url:
            burst_started = time.monotonic()
            with concurrent.futures.ThreadPoolExecutor(32) as pool:
                codes = list(pool.map(lambda _: submit(url).status_code, range(1000)))
            burst_s = time.monotonic() - burst_started
            started = time.monotonic()
            theirs = submit(url, OTHER_KEY)
            assert theirs.status_code == 202
            job = wait_final(url, theirs.headers["Location"], OTHER_KEY, timeout_s=20)
            waited = time.monotonic() - started
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        simulator.reset()
    # Accepted: 40, and as many more as were answered while the burst went on: at most 4
    # threads' worth of 50 ms calls (80 a second) over the burst's own length, which the
    # machine sets (0.6-1.5 s here).
    answered_meanwhile = math.ceil(burst_s * 4 / 0.05)
    assert codes.count(202) <= 40 + answered_meanwhile, (codes.count(202), burst_s)
    assert codes.count(429) >= 700 and set(codes) == {202, 429}
    assert job["status"] == "succeeded"
    assert waited < 3.0, f"B's job waited {waited:.1f} s behind A's burst"
