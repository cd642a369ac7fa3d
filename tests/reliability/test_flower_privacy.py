"""Flower never shows a prompt: a task retried after a 503, throttled by a 429, failed by
a 400, or redelivered after its worker was SIGKILLed shows the ids-only arguments of its
first run (``core.contract.task_argsrepr``), in Flower's API and in its task table."""

from __future__ import annotations

import signal
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import requests

from devstack.redis import RedisProcess, free_port
from simulator.server import SimulatorServer
from tests.integration.conftest import (
    REDELIVERY_ENV,
    auth,
    genq_env,
    start_process,
    start_worker,
    wait_final,
    wait_http,
)

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(180)]

LOGIN = ("genq", "flower-privacy-test-login")
SECRET = "PROMPT-SECRET"


@contextmanager
def flower(env: dict[str, str]) -> Iterator[str]:
    port = free_port()
    args = [sys.executable, "-m", "celery", "-A", "worker.app", "flower"]
    proc = start_process([*args, "--address=127.0.0.1", f"--port={port}"], env, "privacy-flower")
    try:
        wait_http(f"http://127.0.0.1:{port}/healthcheck")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def submit(api: str, sim: SimulatorServer, **sim_config: Any) -> str:
    sim.configure(**sim_config)
    body = {"prompt": f"{SECRET} {uuid.uuid4().hex}", "cache": "off", "fallback": "none"}
    resp = requests.post(f"{api}/v1/jobs", json=body, headers=auth(), timeout=10)
    assert resp.status_code == 202, resp.text
    return str(resp.headers["Location"])


def shown(url: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    """Flower's /api/tasks, its task table, and both as text."""
    tasks = requests.get(f"{url}/api/tasks", auth=LOGIN, timeout=10)
    params = {
        "draw": 1,
        "start": 0,
        "length": 100,
        "search[value]": "",
        "order[0][column]": 0,
        "columns[0][data]": "name",
        "order[0][dir]": "asc",
    }
    table = requests.get(f"{url}/tasks/datatable", params=params, auth=LOGIN, timeout=10)
    assert tasks.status_code == table.status_code == 200
    return tasks.json(), {row["uuid"]: row for row in table.json()["data"]}, tasks.text + table.text


def test_flower_shows_ids_never_the_prompt_of_retried_failed_or_redelivered_tasks(
    own_redis: RedisProcess,
) -> None:
    """Four jobs, each a way a task is sent again or ends badly: Flower's API and table
    list each with ``['<job id>']`` as its arguments and nothing of its prompt."""
    with SimulatorServer() as sim:
        env = genq_env(
            own_redis.url,
            sim.url,
            **{**REDELIVERY_ENV, "GENQ_RETRY_BASE_S": "0.1", "GENQ_RETRY_CAP_S": "0.5"},
            FLOWER_BASIC_AUTH=":".join(LOGIN),
        )
        port = str(free_port())
        uvicorn = [sys.executable, "-m", "uvicorn", "api.main:app", "--log-level", "warning"]
        api_proc = start_process([*uvicorn, "--port", port], env, "privacy-api")
        api = f"http://127.0.0.1:{port}"
        workers = [start_worker(env, "privacy-0", "privacy-0")]
        try:
            wait_http(f"{api}/readyz")
            with flower(env) as url:
                time.sleep(6)  # Flower switches the worker's events on (every 5 s)
                jobs: dict[str, str] = {}
                jobs["retried"] = submit(api, sim, script=[{"status": 503}])
                wait_final(api, jobs["retried"])
                jobs["throttled"] = submit(api, sim, script=[{"status": 429, "retry_after": 0}])
                wait_final(api, jobs["throttled"])
                jobs["failed"] = submit(api, sim, script=[{"status": 400}])
                wait_final(api, jobs["failed"])
                sim.configure(latency_ms=2500)
                jobs["redelivered"] = submit(api, sim)
                time.sleep(1.0)  # taken and calling the simulator
                workers[0].send_signal(signal.SIGKILL)
                workers[0].wait(timeout=10)
                sim.configure(latency_ms=0)
                workers.append(start_worker(env, "privacy-1", "privacy-1"))
                finals = {name: wait_final(api, loc, timeout_s=60) for name, loc in jobs.items()}
                time.sleep(2)  # the last events reach Flower
                tasks, table, text = shown(url)
        finally:
            for proc in [api_proc, *workers]:
                if proc.poll() is None:
                    proc.terminate()
                    proc.wait(timeout=15)
    assert finals["retried"]["status"] == finals["throttled"]["status"] == "succeeded"
    assert [a["outcome"] for a in finals["retried"]["attempts"]] == ["failed", "succeeded"]
    assert finals["failed"]["error"]["type"] == "upstream_rejected"
    assert finals["redelivered"]["status"] == "succeeded"
    for name, final in finals.items():
        job_id = final["id"]
        assert tasks[job_id]["args"] == f"[{job_id!r}]", (name, tasks[job_id])
        assert table[job_id]["args"] == f"[{job_id!r}]", (name, table[job_id])
    assert SECRET not in text
