"""After a run, Flower shows every task in the state its job ended in (issue #25)."""

from __future__ import annotations

import json
import re
import secrets
import time
from collections import Counter
from typing import Any

import pytest
import redis
import requests

from devstack.redis import RedisProcess, free_port
from simulator.server import SimulatorServer
from tests.integration.conftest import (
    auth,
    completion_lines,
    genq_env,
    start_flower,
    wait_http,
)
from tests.integration.redis_support import genq_processes, stop, unique

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

JOBS = 100
BATCH_ITEMS = 31
CONTEXT = [{"id": "doc-1", "text": "Flower shows the tasks a worker runs, from its events."}]


def test_flower_lists_every_task_in_the_state_of_its_job(
    redis_proc: RedisProcess, sim: SimulatorServer
) -> None:
    """131 tasks (100 jobs and a batch of 31; the upstream fails 3 calls in 10 and its
    circuit opens: jobs answered, degraded to an excerpt of their context or failed, batch
    items retried while the circuit is open): once every job is final, Flower's /api/tasks
    lists each task, and only those, as SUCCESS (the task returns for every job it ends)
    with what it returned: the answer's summary, "(degraded)" when it is, or None."""
    redis_url = redis_proc.url.rsplit("/", 1)[0] + "/8"  # own database: only this run's tasks
    redis.Redis.from_url(redis_url).flushdb()
    login = ("genq", secrets.token_urlsafe(12))
    # No retries: an upstream error ends the job at once, degraded or failed.
    env = genq_env(redis_url, sim.url, FLOWER_BASIC_AUTH=":".join(login), GENQ_MAX_RETRIES="0")
    sim.configure(latency_ms=20, error_rate=0.3, seed=25)
    port = free_port()
    flower_url = f"http://127.0.0.1:{port}"
    flower = start_flower(env, port, unique("flower-states"))
    try:
        with genq_processes(env, "flower-states") as genq:
            wait_http(f"{flower_url}/healthcheck")
            _wait_watched(flower_url, "flower-states@")
            jobs = [_submit(genq.api_url, i) for i in range(JOBS)]
            batch_id = _submit_batch(genq.api_url)
            expected = {job: _job_outcome(genq.api_url, job) for job in jobs}
            expected |= _batch_outcomes(genq.api_url, batch_id)
            shown = _tasks_once_settled(flower_url, login, expected)
    finally:
        stop(flower)
    assert len(expected) == JOBS + BATCH_ITEMS
    wrong = {
        task: shown[task]["state"] if task in shown else "MISSING"
        for task, outcome in expected.items()
        if not _agrees(shown.get(task), outcome)
    }
    assert not wrong, (
        f"{len(wrong)} of {len(expected)} tasks disagree with their jobs in Flower: "
        f"{dict(Counter(wrong.values()))}"
    )
    assert shown.keys() == expected.keys()
    assert set(expected.values()) == {"answered", "degraded", "failed"}, "not every ending ran"


def _wait_watched(flower_url: str, worker: str, timeout_s: float = 20.0) -> None:
    """Until Flower has the worker's events (its online gauge, fed by worker-online and
    heartbeats): Flower sees nothing published before it listens."""
    online = re.compile(rf'flower_worker_online\{{worker="{re.escape(worker)}[^"]*"\}} 1\.0')
    deadline = time.monotonic() + timeout_s
    while not online.search(requests.get(f"{flower_url}/metrics", timeout=5).text):
        assert time.monotonic() < deadline, f"Flower never saw {worker} online"
        time.sleep(0.1)


def _submit(api_url: str, i: int) -> str:
    body: dict[str, Any] = {"prompt": f"flower states {i}", "cache": "off"}
    if i % 2:
        body["context"] = CONTEXT  # an excerpt can answer it, degraded
    resp = requests.post(f"{api_url}/v1/jobs", json=body, headers=auth(), timeout=10)
    assert resp.status_code == 202, resp.text
    job_id: str = resp.json()["id"]
    return job_id


def _submit_batch(api_url: str) -> str:
    data = completion_lines(BATCH_ITEMS, "flower states batch", prefix="item")
    upload = requests.post(
        f"{api_url}/v1/files",
        files={"file": ("in.jsonl", data)},
        data={"purpose": "batch"},
        headers=auth(),
        timeout=10,
    )
    assert upload.status_code == 200, upload.text
    body = {
        "input_file_id": upload.json()["id"],
        "endpoint": "/v1/completions",
        "completion_window": "24h",
    }
    batch = requests.post(f"{api_url}/v1/batches", json=body, headers=auth(), timeout=10)
    assert batch.status_code == 200, batch.text
    batch_id: str = batch.json()["id"]
    return batch_id


def _job_outcome(api_url: str, job_id: str) -> str:
    """How the job's record says it ended: answered, degraded or failed."""
    resp = requests.get(f"{api_url}/v1/jobs/{job_id}?wait_s=20", headers=auth(), timeout=25)
    job = resp.json()
    assert job["status"] in ("succeeded", "failed"), job
    if job["status"] == "failed":
        return "failed"
    return "degraded" if job["result"]["degraded"] else "answered"


def _batch_outcomes(api_url: str, batch_id: str, timeout_s: float = 30.0) -> dict[str, str]:
    """Each item's task id (its request id) and how its output or error line says it ended."""
    deadline = time.monotonic() + timeout_s
    while True:
        batch = requests.get(f"{api_url}/v1/batches/{batch_id}", headers=auth(), timeout=5).json()
        if batch["status"] in ("completed", "failed", "cancelled", "expired"):
            break
        assert time.monotonic() < deadline, f"batch not final after {timeout_s} s: {batch}"
        time.sleep(0.1)
    outcomes = {}
    for file_id in (batch["output_file_id"], batch["error_file_id"]):
        if file_id is None:
            continue
        content = requests.get(f"{api_url}/v1/files/{file_id}/content", headers=auth(), timeout=5)
        for line in map(json.loads, content.text.splitlines()):
            if line["error"] is not None:
                outcomes[line["id"]] = "failed"
            else:
                degraded = line["response"]["body"]["genq"]["degraded"]
                outcomes[line["id"]] = "degraded" if degraded else "answered"
    return outcomes


def _tasks_once_settled(
    flower_url: str, login: tuple[str, str], expected: dict[str, str], timeout_s: float = 5.0
) -> dict[str, Any]:
    """Flower's tasks, once they agree with ``expected`` or ``timeout_s`` has passed (a
    task's last event may still be on its way when its record is final)."""
    deadline = time.monotonic() + timeout_s
    while True:
        resp = requests.get(f"{flower_url}/api/tasks", auth=login, timeout=10)
        assert resp.status_code == 200, resp.text
        shown: dict[str, Any] = resp.json()
        settled = all(_agrees(shown.get(task), outcome) for task, outcome in expected.items())
        if settled or time.monotonic() > deadline:
            return shown
        time.sleep(0.25)


def _agrees(task: dict[str, Any] | None, outcome: str) -> bool:
    """Flower's task says what the job's record says: SUCCESS for every job the task
    ended, with the summary the task returned (``worker.tasks.summary``)."""
    if task is None or task["state"] != "SUCCESS":
        return False
    result = str(task["result"])
    if outcome == "failed":
        return result == "None"
    return result != "None" and ("(degraded)" in result) == (outcome == "degraded")
