"""Cluster-wide metrics and logs that follow a job: two real workers, two real API
processes and a simulator on a redis-server of their own (so every count starts at 0).

Jobs of every kind run across both workers; each API's ``/metrics`` then says exactly
what the records say, and both say the same. A job's ``X-Request-ID`` is on the API's
line and the worker's line about it, and no secret is on any line."""

from __future__ import annotations

import io
import json
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from core.circuits import circuit_name
from devstack.redis import RedisProcess, ensure_redis_server, free_port
from simulator.server import SimulatorServer
from tests.integration.conftest import (
    ADMIN_KEY,
    API_KEY,
    auth,
    completion_lines,
    genq_env,
    start_process,
    start_worker,
    wait_final,
    wait_http,
)
from tests.integration.redis_support import log_path, stop, unique
from worker.breaker.circuit import DEFAULT_OPEN_VIEW_TTL_S as OPEN_VIEW_TTL_S

pytestmark = pytest.mark.integration

DOC = {"id": "d1", "text": "An excerpt answers when the circuit is open."}
UPSTREAM_TOKEN = "hf_metrics-upstream-token-0123456789"
SECOND_TOKEN = "sk-metrics-failover-token-0123456789"
Labels = tuple[str, ...]


@dataclass
class Stack:
    apis: list[str]
    sim: SimulatorServer
    second: SimulatorServer
    logs: list[str]
    circuit: str
    second_circuit: str

    def submit(self, body: dict[str, Any], api: int = 0, **headers: str) -> str:
        response = requests.post(
            f"{self.apis[api]}/v1/jobs", json=body, headers={**auth(), **headers}, timeout=5
        )
        assert response.status_code == 202, response.text
        return str(response.headers["Location"])

    def run(self, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Submitted through both APIs in turn; each job once final."""
        locations = [self.submit(body, i % 2) for i, body in enumerate(bodies)]
        return [wait_final(self.apis[0], location, timeout_s=30) for location in locations]

    def scrape(self, api: int) -> dict[str, list[Any]]:
        text = requests.get(f"{self.apis[api]}/metrics", timeout=5).text
        return {f.name: f.samples for f in text_string_to_metric_families(text)}

    def log_text(self) -> str:
        return "".join(log_path(name).read_text(errors="replace") for name in self.logs)


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    """The APIs first, the workers once a job has waited in the queue for a while."""
    own = RedisProcess(ensure_redis_server(say=lambda _: None))
    own.start()
    with ExitStack() as cleanup, SimulatorServer() as sim, SimulatorServer() as second:
        cleanup.callback(own.stop)
        failover = [
            {
                "url": f"{second.url}/v1",
                "protocol": "openai",
                "model": "simulator/echo-2",
                "token_env": "GENQ_TEST_SECOND_TOKEN",
            }
        ]
        env = genq_env(
            own.url,
            sim.url,
            GENQ_WORKER_CONCURRENCY="2",
            GENQ_UPSTREAM_TOKEN=UPSTREAM_TOKEN,
            GENQ_UPSTREAM_FAILOVER=json.dumps(failover),
            GENQ_TEST_SECOND_TOKEN=SECOND_TOKEN,
        )
        sim.configure(require_token=UPSTREAM_TOKEN)
        second.configure(require_token=SECOND_TOKEN)
        names = [unique(f"metrics-{part}") for part in ("api1", "api2", "worker1", "worker2")]
        apis = []
        for name in names[:2]:
            port = free_port()
            uvicorn = [sys.executable, "-m", "uvicorn", "api.main:app", "--port", str(port)]
            # DEBUG: the API's line about each accepted job (api.job_accepted) is one.
            api_env = {**env, "GENQ_LOG_LEVEL": "DEBUG"}
            cleanup.callback(stop, start_process(uvicorn, api_env, name))
            apis.append(f"http://127.0.0.1:{port}")
        for api in apis:
            wait_http(f"{api}/readyz")
        circuit = circuit_name("hf", sim.url, "simulator/echo-1")
        second_circuit = circuit_name("openai", f"{second.url}/v1", "simulator/echo-2")
        built = Stack(apis, sim, second, names, circuit, second_circuit)
        waiting = built.submit({"prompt": "waits for a worker"})
        _wait_for_age(built)
        for name, host in zip(names[2:], ("metrics1", "metrics2"), strict=True):
            cleanup.callback(stop, start_worker(env, host, name))
        wait_final(apis[0], waiting, timeout_s=30)
        yield built


def _wait_for_age(stack: Stack) -> None:
    """The job no worker takes yet: /metrics shows its queue's oldest message aging."""
    deadline = time.monotonic() + 15
    age = 0.0
    while time.monotonic() < deadline:
        samples = stack.scrape(0)["genq_queue_oldest_age_seconds"]
        age = next(s.value for s in samples if s.labels["queue"] == "interactive")
        if age >= 2:
            return
        time.sleep(0.5)
    raise AssertionError(f"the interactive queue's oldest age stayed at {age}")


def _labels(job: dict[str, Any]) -> Labels:
    """``genq_jobs_finished_total``'s labels, as the job's record says."""
    result, error = job.get("result") or {}, job.get("error") or {}
    return (
        "interactive",
        job["status"],
        result.get("source", ""),
        result.get("fallback_reason") or "",
        "true" if result.get("failover") else "false",
        error.get("type", ""),
    )


def _run_batch(stack: Stack, items: int) -> dict[str, Any]:
    lines = completion_lines(items, "batch item")
    files = {"file": ("in.jsonl", io.BytesIO(lines))}
    api = stack.apis[1]
    upload = requests.post(
        f"{api}/v1/files", files=files, data={"purpose": "batch"}, headers=auth(), timeout=5
    ).json()
    body = {"input_file_id": upload["id"], "endpoint": "/v1/completions"}
    body["completion_window"] = "24h"
    batch = requests.post(f"{api}/v1/batches", json=body, headers=auth(), timeout=10).json()
    deadline = time.monotonic() + 30
    while batch["status"] != "completed" and time.monotonic() < deadline:
        time.sleep(0.2)
        batch = requests.get(f"{api}/v1/batches/{batch['id']}", headers=auth(), timeout=5).json()
    assert batch["status"] == "completed", batch
    return batch


def _control(stack: Stack, action: str) -> None:
    """An operator's action on the circuit, once every worker's view of it is new."""
    url = f"{stack.apis[0]}/v1/circuits/{stack.circuit}/{action}"
    requests.post(url, headers=auth(ADMIN_KEY), timeout=5).raise_for_status()
    time.sleep(OPEN_VIEW_TTL_S + 0.2)


def test_metrics_say_what_the_records_say_on_every_api(stack: Stack) -> None:
    """Every kind of ending across two workers: answered, from the cache, refused by the
    upstream, from an excerpt while the circuit is open, failed with nothing to answer,
    a batch, and answered by the failover target while the primary fails. Both APIs'
    finished counts equal the records' exactly, the call histogram counts every call each
    simulator received, and the cache its hits."""
    jobs = stack.run([{"prompt": f"answer {i}"} for i in range(6)])
    jobs += stack.run([{"prompt": f"answer {i}", "cache": "prefer"} for i in range(3)])
    stack.sim.configure(max_context_tokens=8)
    jobs += stack.run([{"prompt": "far too long " * 20, "params": {"max_new_tokens": 8}}])
    stack.sim.configure(max_context_tokens=None)
    _control(stack, "open")
    try:
        alone = {"failover": "none"}  # the primary's fallback, not the failover target
        jobs += stack.run([{"prompt": f"open {i}", "context": [DOC], **alone} for i in range(3)])
        jobs += stack.run([{"prompt": "nothing to answer with", "cache": "off", **alone}])
    finally:
        _control(stack, "reset")
    batch = _run_batch(stack, 5)
    stack.sim.configure(mode="outage")
    try:
        jobs += stack.run([{"prompt": f"primary fails {i}"} for i in range(3)])
    finally:
        stack.sim.configure(mode="ok")
    expected = Counter(_labels(job) for job in jobs)
    expected[("interactive", "succeeded", "upstream", "", "false", "")] += 1  # the first job
    expected[("batch", "succeeded", "upstream", "", "false", "")] += batch["request_counts"][
        "completed"
    ]
    kinds = {(labels[1], labels[2], labels[3], labels[4], labels[5]) for labels in expected}
    assert len(kinds) >= 6, kinds  # upstream, cache, excerpt, rejected, unavailable, failover
    deadline, seen = time.monotonic() + 15, [{}, {}]
    while time.monotonic() < deadline:
        seen = [_finished(stack.scrape(api)) for api in (0, 1)]
        if seen[0] == seen[1] == expected:
            break
        time.sleep(0.5)
    assert seen[0] == expected
    assert seen[1] == expected
    scraped = stack.scrape(1)
    calls = _histogram_counts(scraped, stack.circuit)
    upstream_answers = expected[("interactive", "succeeded", "upstream", "", "false", "")]
    upstream_answers += expected[("batch", "succeeded", "upstream", "", "false", "")]
    assert calls.get("ok") == upstream_answers
    assert sum(calls.values()) == stack.sim.stats()["calls"]
    second = _histogram_counts(scraped, stack.second_circuit)
    assert second == {"ok": expected[("interactive", "succeeded", "upstream", "", "true", "")]}
    assert second["ok"] == stack.second.stats()["calls"] == 3
    hits = sum(n for labels, n in expected.items() if labels[2] == "cache")
    lookups = {s.labels["result"]: s.value for s in scraped["genq_cache_lookups"]}
    assert lookups["hit"] == hits >= 3


def _finished(scraped: dict[str, list[Any]]) -> Counter[Labels]:
    names = ("queue", "status", "source", "fallback_reason", "failover", "error_type")
    return Counter(
        {
            tuple(s.labels[n] for n in names): int(s.value)
            for s in scraped["genq_jobs_finished"]
            if s.name.endswith("_total")
        }
    )


def _histogram_counts(scraped: dict[str, list[Any]], target: str) -> dict[str, int]:
    """Calls by outcome, from each histogram's ``_count``; checks each is cumulative and
    ends at its count."""
    samples = scraped["genq_upstream_call_duration_seconds"]
    counts: dict[str, int] = {}
    for outcome in {s.labels["outcome"] for s in samples if s.labels["target"] == target}:
        mine = [
            s for s in samples if (s.labels["target"], s.labels["outcome"]) == (target, outcome)
        ]
        buckets = [s.value for s in mine if s.name.endswith("_bucket")]
        assert buckets == sorted(buckets)
        count = next(s.value for s in mine if s.name.endswith("_count"))
        assert buckets[-1] == count
        counts[outcome] = int(count)
    return counts


def test_a_job_is_followed_by_its_request_id_through_api_and_worker(stack: Stack) -> None:
    """The id a client sends comes back, and the API's line and a worker's line about the
    job carry it with the job's id, circuit and source; no key or token is logged."""
    request_id = f"trace-{uuid.uuid4().hex}"
    location = stack.submit({"prompt": "follow me"}, **{"X-Request-ID": request_id})
    job = wait_final(stack.apis[0], location)
    deadline = time.monotonic() + 10
    mine: list[str] = []
    while time.monotonic() < deadline:
        mine = [line for line in stack.log_text().splitlines() if request_id in line]
        if any("job.finished" in line for line in mine):
            break
        time.sleep(0.2)
    accepted = [line for line in mine if "api.job_accepted" in line]
    finished = [line for line in mine if "job.finished" in line]
    assert len(accepted) == 1 and f"job_id={job['id']}" in accepted[0]
    assert len(finished) == 1
    for field in (f"job_id={job['id']}", "source=upstream", f"circuit={stack.circuit}"):
        assert field in finished[0], finished[0]
    response = requests.get(f"{stack.apis[1]}/healthz", timeout=5)
    assert len(response.headers["X-Request-ID"]) == 32  # none sent: one made
    text = stack.log_text()
    secrets = (API_KEY, ADMIN_KEY, API_KEY[:12], UPSTREAM_TOKEN, UPSTREAM_TOKEN[3:15])
    for secret in (*secrets, SECOND_TOKEN, SECOND_TOKEN[3:15]):
        assert secret not in text
