"""Failover with two simulators on loopback: a real API, a real worker, the primary (hf)
failing in each of its ways, a second target (openai, its own token) behind it."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import requests

from core import circuits
from core.circuits import circuit_name
from devstack.redis import RedisProcess, ensure_redis_server
from simulator.server import SimulatorServer
from tests.integration.conftest import (
    ADMIN_KEY,
    auth,
    genq_env,
    serve_api,
    start_worker,
    wait_final,
)
from worker.breaker.circuit import DEFAULT_OPEN_VIEW_TTL_S as OPEN_VIEW_TTL_S

pytestmark = pytest.mark.integration

FAIL_MAX = 4
CONCURRENCY = 4
SECOND_MODEL = "simulator/echo-2"
SECOND_TOKEN = "failover-secret-token-0123"
DOC = {"id": "d1", "text": "The failover target answers when the primary cannot."}


class Cluster:
    """Two simulators, one API and one worker configured with the second as failover, on
    a redis-server of their own."""

    def __init__(
        self, url: str, redis_url: str, primary: SimulatorServer, second: SimulatorServer
    ) -> None:
        self.url, self.redis_url, self.primary, self.second = url, redis_url, primary, second
        self.primary_circuit = circuit_name("hf", primary.url, "simulator/echo-1")
        self.second_circuit = circuit_name("openai", f"{second.url}/v1", SECOND_MODEL)

    def reset(self) -> None:
        for sim in (self.primary, self.second):
            sim.reset()
        self.second.configure(require_token=SECOND_TOKEN)
        reset = False
        for name in (self.primary_circuit, self.second_circuit):
            circuit = self.circuit(name)
            if circuit["state"] == "closed" and not circuit["failure_count"]:
                continue  # untouched: a reset would leave the worker's view a generation behind
            response = requests.post(
                f"{self.url}/v1/circuits/{name}/reset", headers=auth(ADMIN_KEY), timeout=5
            )
            response.raise_for_status()
            reset = True
        if reset:
            time.sleep(OPEN_VIEW_TTL_S + 0.2)  # every worker's view of the circuits is new

    def submit(self, prompt: str, **extra: Any) -> str:
        body = {"prompt": prompt, "context": [DOC], **extra}
        response = requests.post(f"{self.url}/v1/jobs", json=body, headers=auth(), timeout=5)
        assert response.status_code == 202, response.text
        return str(response.headers["Location"])

    def run(self, prompts: list[str], **extra: Any) -> list[dict[str, Any]]:
        locations = [self.submit(p, **extra) for p in prompts]
        return [wait_final(self.url, location, timeout_s=30) for location in locations]

    def circuit(self, name: str) -> dict[str, Any]:
        listed = requests.get(f"{self.url}/v1/circuits", headers=auth(), timeout=5).json()
        return next(c for c in listed if c["name"] == name)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """Its own redis-server: the session's worker (another primary, no failover) must not
    take these jobs."""
    own = RedisProcess(ensure_redis_server(say=lambda _: None))
    own.start()
    with SimulatorServer() as primary, SimulatorServer() as second:
        redis_url = own.url
        failover = [
            {
                "url": f"{second.url}/v1",
                "protocol": "openai",
                "model": SECOND_MODEL,
                "token_env": "GENQ_TEST_FAILOVER_TOKEN",
            }
        ]
        env = genq_env(
            redis_url,
            primary.url,
            GENQ_UPSTREAM_FAILOVER=json.dumps(failover),
            GENQ_TEST_FAILOVER_TOKEN=SECOND_TOKEN,
            GENQ_BREAKER_FAIL_MAX=str(FAIL_MAX),
            GENQ_BREAKER_RESET_TIMEOUT_S="1",
            GENQ_BREAKER_MAX_RESET_TIMEOUT_S="1",
            GENQ_WORKER_CONCURRENCY=str(CONCURRENCY),
            GENQ_UPSTREAM_TIMEOUT_S="1",
            GENQ_UPSTREAM_CONNECT_TIMEOUT_S="0.5",
        )
        worker = start_worker(env, "failover", "worker-failover")
        try:
            with serve_api(env, "api-failover") as url:
                cluster = Cluster(url, redis_url, primary, second)
                cluster.reset()
                cluster.run(["warm up"])  # the worker is consuming
                yield cluster
        finally:
            worker.terminate()
            worker.wait(timeout=20)
            own.stop()


@pytest.fixture
def fresh(cluster: Cluster) -> Iterator[Cluster]:
    cluster.reset()
    yield cluster
    cluster.reset()


def test_primary_down_every_job_is_answered_by_the_second_target(fresh: Cluster) -> None:
    """The primary drops every connection: all 30 jobs are answered upstream by the
    failover target (never an excerpt), each saying which target and that it failed
    over; the primary is called no more than its trip count, the calls already in flight
    when it tripped, and its probes."""
    fresh.primary.configure(mode="down")
    jobs = fresh.run([f"outage {i}" for i in range(30)])
    results = [job["result"] for job in jobs]
    assert [job["status"] for job in jobs] == ["succeeded"] * 30
    assert {(r["source"], r["degraded"], r["failover"]) for r in results} == {
        ("upstream", False, True)
    }
    assert {(r["target"], r["model"]) for r in results} == {(fresh.second_circuit, SECOND_MODEL)}
    probes = fresh.circuit(fresh.primary_circuit)["transitions"]["half_open"]
    primary_calls = int(fresh.primary.stats()["calls"])  # type: ignore[call-overload]
    assert primary_calls <= FAIL_MAX + (CONCURRENCY - 1) + probes
    assert fresh.circuit(fresh.primary_circuit)["state"] in ("open", "half-open")
    # The jobs the primary failed before its circuit opened (its trip needed FAIL_MAX
    # failures) show both attempts: the primary's failure, then the second's answer.
    hopped = [job for job in jobs if len(job["attempts"]) > 1]
    assert len(hopped) >= 1
    for job in hopped:
        first, last = job["attempts"][0], job["attempts"][-1]
        assert (first["outcome"], first["error_type"]) == ("failed", "upstream_unavailable")
        assert last["outcome"] == "succeeded"


def test_failover_none_is_answered_by_the_primary_or_not_at_all(fresh: Cluster) -> None:
    """With the primary's circuit open, a job that says ``failover: none`` gets the
    fallback (an excerpt), and the second target is never called for it."""
    fresh.primary.configure(mode="down")
    fresh.run([f"trip {i}" for i in range(8)])  # the primary's circuit opens
    second_calls = int(fresh.second.stats()["calls"])  # type: ignore[call-overload]
    (job,) = fresh.run(["primary only"], failover="none")
    result = job["result"]
    assert (result["source"], result["degraded"], result["target"]) == ("excerpt", True, None)
    assert result["failover"] is False
    assert fresh.second.stats()["calls"] == second_calls


def test_both_down_answers_from_the_cache_then_an_excerpt(fresh: Cluster) -> None:
    """Both targets down: a request answered before comes from the cache (which says
    which target's answer it holds), a new one gets an excerpt."""
    (before,) = fresh.run(["asked twice"])
    assert before["result"]["target"] == fresh.primary_circuit
    fresh.primary.configure(mode="outage")
    fresh.second.configure(mode="outage")
    fresh.run([f"trip both {i}" for i in range(12)])
    cached, new = fresh.run(["asked twice", "asked once"])
    assert cached["result"]["source"] == "cache"
    assert cached["result"]["cached_from"] == fresh.primary_circuit
    assert cached["result"]["target"] is None
    assert new["result"]["source"] == "excerpt"


def test_the_primary_answers_again_after_its_probe(fresh: Cluster) -> None:
    """The primary recovers: once its circuit's window has passed, a probe goes to it,
    and the jobs after it are the primary's again (failover false)."""
    fresh.primary.configure(mode="down")
    fresh.run([f"trip {i}" for i in range(8)])
    assert fresh.circuit(fresh.primary_circuit)["state"] in ("open", "half-open")
    fresh.primary.configure(mode="ok")
    time.sleep(1.5)  # past the 1 s window: the next call is the probe
    jobs = fresh.run([f"back {i}" for i in range(5)])
    assert fresh.circuit(fresh.primary_circuit)["state"] == "closed"
    last = jobs[-1]["result"]
    assert (last["target"], last["failover"]) == (fresh.primary_circuit, False)


def test_a_hanging_primary_moves_the_job_on_at_its_timeout(fresh: Cluster) -> None:
    """The primary answers nothing for longer than the read timeout: the timeout ends
    the call, and the job is answered by the second target at once (no backoff), the
    primary's timeout recorded as its first attempt. (A primary that trickles its answer
    is cut off at the same deadline: tests/unit/test_upstream.py.)"""
    fresh.primary.configure(mode="hang", hang_s=5)
    started = time.monotonic()
    (job,) = fresh.run(["slow primary"])
    elapsed = time.monotonic() - started
    assert (job["result"]["target"], job["result"]["failover"]) == (fresh.second_circuit, True)
    assert [a["error_type"] for a in job["attempts"]] == ["upstream_timeout", None]
    assert elapsed < 4  # a 1 s read timeout, then the hop; no retry backoff


def test_a_batch_during_the_primary_outage(fresh: Cluster) -> None:
    """A batch created while the primary is down is answered by the second target:
    every output line says so, and counts_by_source counts them as failover."""
    fresh.primary.configure(mode="down")
    fresh.run([f"trip {i}" for i in range(8)])
    lines = "".join(
        json.dumps(
            {
                "custom_id": f"c{i}",
                "method": "POST",
                "url": "/v1/completions",
                "body": {"prompt": f"batch item {i}", "max_tokens": 8},
            }
        )
        + "\n"
        for i in range(10)
    )
    files = {"file": ("in.jsonl", io.BytesIO(lines.encode()))}
    upload = requests.post(
        f"{fresh.url}/v1/files", files=files, data={"purpose": "batch"}, headers=auth(), timeout=5
    ).json()
    body = {
        "input_file_id": upload["id"],
        "endpoint": "/v1/completions",
        "completion_window": "24h",
    }
    batch = requests.post(f"{fresh.url}/v1/batches", json=body, headers=auth(), timeout=10).json()
    deadline = time.monotonic() + 30
    while batch["status"] != "completed" and time.monotonic() < deadline:
        time.sleep(0.2)
        batch = requests.get(
            f"{fresh.url}/v1/batches/{batch['id']}", headers=auth(), timeout=5
        ).json()
    assert batch["status"] == "completed", batch
    assert batch["genq"]["counts_by_source"] == {
        "upstream": 0,
        "failover": 10,
        "cache": 0,
        "excerpt": 0,
    }
    output = requests.get(
        f"{fresh.url}/v1/files/{batch['output_file_id']}/content", headers=auth(), timeout=5
    )
    found = [json.loads(line)["response"]["body"] for line in output.text.splitlines()]
    assert {(b["model"], b["genq"]["target"], b["genq"]["failover"]) for b in found} == {
        (SECOND_MODEL, fresh.second_circuit, True)
    }


def test_every_target_is_listed_with_its_circuit_and_call_limit(fresh: Cluster) -> None:
    """/v1/circuits lists both configured targets, each with its call limit (once called),
    and /metrics reports each one's circuit state; a configured target never called yet
    is listed closed."""
    with redis.Redis.from_url(fresh.redis_url) as r:
        listed_now = circuits.list_circuits(r, ["openai~never.called~m"])
    unused = next(c for c in listed_now if c["name"] == "openai~never.called~m")
    assert (unused["state"], unused["failure_count"]) == ("closed", 0)
    listed = requests.get(f"{fresh.url}/v1/circuits", headers=auth(), timeout=5).json()
    by_name = {c["name"]: c for c in listed}
    assert fresh.primary_circuit in by_name and fresh.second_circuit in by_name
    assert by_name[fresh.primary_circuit]["limit"]["mode"] == "adaptive"  # called: a limit
    metrics = requests.get(f"{fresh.url}/metrics", timeout=5).text
    for name in (fresh.primary_circuit, fresh.second_circuit):
        assert f'genq_circuit_state{{circuit="{name}",state="closed"}}' in metrics


def test_the_failover_token_is_in_no_log(fresh: Cluster) -> None:
    """The second target's token reaches the second target (it requires it: every job is
    answered there) and no log line, result or error."""
    fresh.primary.configure(mode="down")
    jobs = fresh.run([f"secret check {i}" for i in range(6)])
    assert {job["result"]["target"] for job in jobs} == {fresh.second_circuit}
    assert SECOND_TOKEN[:12] not in json.dumps(jobs)
    for log in ("worker-failover", "api-failover"):
        with open(f"/tmp/genq-test-{log}.log", encoding="utf-8", errors="replace") as handle:
            text = handle.read()
        assert SECOND_TOKEN not in text and SECOND_TOKEN[:12] not in text


def test_a_hop_onto_a_refusing_target_backs_off_and_asks_the_primary_again(
    fresh: Cluster,
) -> None:
    """The primary fails once (a 503) while the second target's circuit is forced open:
    the hop finds no target to take the job, so it backs off and the primary, asked
    again, answers. No degraded answer while the primary may still answer."""
    force = f"{fresh.url}/v1/circuits/{fresh.second_circuit}/open"
    requests.post(force, headers=auth(ADMIN_KEY), timeout=5).raise_for_status()
    time.sleep(OPEN_VIEW_TTL_S + 0.2)
    fresh.primary.configure(script=[{"status": 503}])
    (job,) = fresh.run(["once unlucky"])
    result = job["result"]
    assert (result["source"], result["target"], result["failover"]) == (
        "upstream",
        fresh.primary_circuit,
        False,
    )
    outcomes = [(a["outcome"], a["error_type"]) for a in job["attempts"]]
    assert outcomes[0] == ("failed", "upstream_unavailable")
    assert outcomes[1] == ("rejected", "circuit_open")
    assert outcomes[-1] == ("succeeded", None)
