"""SIGKILL one of two workers under 500 jobs, restarted or not: nothing is lost.

At-least-once is the contract: every job told 202 gets its answer unless the provider
itself fails. A killed worker's jobs come back (kombu restores its unacked messages after
the visibility timeout; a message lost between kombu's BRPOP and its unacked record is
sent again by the sweep), its call slots come back within ``SLOT_LEASE_MS``, and no job
is answered by two copies calling the upstream at once. The jobs called twice are those
in flight at the kill: their answers died with the worker. Timeouts are shortened (a
20 s visibility timeout) so that a run takes seconds; README's reliability section gives
what a kill costs with the defaults.
"""

from __future__ import annotations

import io
import json
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pytest
import redis
import requests
from openai import OpenAI

from core import keys
from core.records import JobStore
from devstack.redis import RedisProcess
from simulator.server import SimulatorServer
from tests.integration.conftest import (
    API_KEY,
    auth,
    genq_env,
    serve_api,
    start_worker,
    wait_http,
)

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(240)]

JOBS, KILL_AT = 500, 100
ENV = {
    "GENQ_UPSTREAM_TIMEOUT_S": "3",
    "GENQ_UPSTREAM_CONNECT_TIMEOUT_S": "0.5",
    "GENQ_TASK_SOFT_TIME_LIMIT_S": "6",
    "GENQ_TASK_TIME_LIMIT_S": "7",
    "GENQ_BATCH_SLOT_WAIT_S": "8",
    "GENQ_VISIBILITY_TIMEOUT_S": "20",
    "GENQ_UNACKED_RESTORE_INTERVAL_S": "1",
    "GENQ_SWEEP_EVERY_S": "1",
    "GENQ_SWEEP_GRACE_S": "3",
    "GENQ_RETRY_BASE_S": "0.2",
    "GENQ_RETRY_CAP_S": "4",
}
BOUND_S = 20 + 1 + 30  # visibility timeout + restore interval + 30 s


@contextmanager
def cluster(env: dict[str, str], name: str) -> Iterator[tuple[str, list[subprocess.Popen[bytes]]]]:
    """The API and two workers on ``env``, all stopped afterwards, with any worker the
    test adds to the list; the API's URL and the workers."""
    workers = [start_worker(env, f"{name}-{n}", f"{name}-{n}") for n in range(2)]
    try:
        with serve_api(env, f"{name}-api") as url:
            wait_http(f"{url}/readyz")
            yield url, workers
    finally:
        for proc in workers:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=15)


def submit_all(url: str, run: int) -> list[str]:
    """500 interactive jobs only the provider can answer, from four client threads."""

    def part(n: int) -> list[str]:
        with requests.Session() as http:
            body = {"cache": "off", "fallback": "none"}
            return [
                http.post(
                    f"{url}/v1/jobs",
                    json={**body, "prompt": f"kill {run} {i}"},
                    headers=auth(),
                    timeout=10,
                ).json()["id"]
                for i in range(n, JOBS, 4)
            ]

    with ThreadPoolExecutor(4) as pool:
        return [job for chunk in pool.map(part, range(4)) for job in chunk]


@pytest.mark.parametrize("run", [1, 2, 3])
@pytest.mark.parametrize("restart", [True, False], ids=["restarted", "not-restarted"])
def test_a_sigkilled_worker_loses_no_job(own_redis: RedisProcess, restart: bool, run: int) -> None:
    """Two workers, 500 jobs at 200 ms; one worker SIGKILLed once 100 are final (then
    restarted, or not): every job succeeds, none is called by two copies at once, and the
    last is final within the visibility timeout + restore interval + 30 s of the kill."""
    with SimulatorServer() as sim:
        sim.configure(latency_ms=200)
        env = genq_env(own_redis.url, sim.url, **ENV)
        client = redis.Redis.from_url(own_redis.url, decode_responses=True)
        with cluster(env, "kill") as (url, workers):
            ids = submit_all(url, run)
            open_jobs = lambda: int(client.zcard(keys.open_jobs()))  # noqa: E731
            deadline = time.monotonic() + 60
            while open_jobs() > JOBS - KILL_AT:
                assert time.monotonic() < deadline, "100 jobs never finished"
                time.sleep(0.05)
            workers[0].send_signal(signal.SIGKILL)
            killed_at = time.monotonic()
            # The killed worker's calls stay open in the simulator until their answers go
            # out (200 ms) to a socket nobody reads: they are counted here.
            in_flight = int(sim.stats()["in_flight"])  # type: ignore[call-overload]
            workers[0].wait(timeout=10)
            if restart:
                workers.append(start_worker(env, "kill-again", "kill-again"))
            while open_jobs():
                assert time.monotonic() - killed_at < BOUND_S, f"{open_jobs()} jobs not final"
                time.sleep(0.2)
            last_final_s = time.monotonic() - killed_at
            store = JobStore(client, 3600)
            records = [store.get(job_id) for job_id in ids]
            stats = sim.stats()
    statuses = Counter(r.status.value if r else "missing" for r in records)
    errors = Counter(str(r.error.type) for r in records if r and r.error)
    print(
        f"restart={restart} run={run}: last final {last_final_s:.1f} s after the kill; "
        f"{stats['repeated']} jobs called twice ({in_flight} calls in flight at the kill); "
        f"{stats['overlapping']} overlapping; {dict(statuses)} {dict(errors)}"
    )
    assert statuses == {"succeeded": JOBS}, (statuses, errors)
    assert stats["overlapping"] == 0
    assert int(stats["repeated"]) <= in_flight  # type: ignore[call-overload]


def test_a_sigkilled_worker_loses_no_batch_item_the_scheduler_released(
    own_redis: RedisProcess,
) -> None:
    """A 300-line batch released 16 at a time (GENQ_BATCH_READY_DEPTH=16), two workers,
    one SIGKILLed once 60 items are done, while the workers release after every item: the
    batch completes with one line per item, none called by two copies at once. There is
    no scheduler lock to die holding: each release is one Lua script, whole or not at all;
    the killed worker's released items come back as its jobs do."""
    total = 300
    with SimulatorServer() as sim:
        sim.configure(latency_ms=100)
        env = genq_env(own_redis.url, sim.url, **ENV, GENQ_BATCH_READY_DEPTH="16")
        with cluster(env, "kill-batch") as (url, workers):
            client = OpenAI(base_url=f"{url}/v1", api_key=API_KEY, max_retries=0)
            lines = [
                {
                    "custom_id": f"item-{i}",
                    "method": "POST",
                    "url": "/v1/completions",
                    "body": {"prompt": f"kill batch {i}", "cache": "off", "fallback": "none"},
                }
                for i in range(total)
            ]
            data = "".join(json.dumps(line) + "\n" for line in lines).encode()
            upload = client.files.create(file=("in.jsonl", io.BytesIO(data)), purpose="batch")
            batch = client.batches.create(
                input_file_id=upload.id, endpoint="/v1/completions", completion_window="24h"
            )
            deadline = time.monotonic() + 60
            while completed(client, batch.id) < 60:
                assert time.monotonic() < deadline, "60 items never finished"
                time.sleep(0.05)
            workers[0].send_signal(signal.SIGKILL)
            killed_at = time.monotonic()
            in_flight = int(sim.stats()["in_flight"])  # type: ignore[call-overload]
            workers[0].wait(timeout=10)
            while (done := client.batches.retrieve(batch.id)).status != "completed":
                assert time.monotonic() - killed_at < BOUND_S, done.request_counts
                time.sleep(0.2)
            output = client.files.content(done.output_file_id or "").text.splitlines()
            stats = sim.stats()
    ids = Counter(json.loads(line)["custom_id"] for line in output)
    assert done.request_counts is not None and done.request_counts.completed == total
    assert ids == Counter(f"item-{i}" for i in range(total))  # each once
    assert stats["overlapping"] == 0
    assert int(stats["repeated"]) <= in_flight  # type: ignore[call-overload]


def completed(client: OpenAI, batch_id: str) -> int:
    counts = client.batches.retrieve(batch_id).request_counts
    return counts.completed if counts else 0
