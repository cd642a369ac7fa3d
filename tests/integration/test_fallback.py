"""Degrade, don't retry: cache and excerpt answers while the circuit is open; retries only
while it is closed. Each test that breaks a circuit uses its own model, so its own circuit."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
import requests

from core.settings import Settings
from simulator.server import SimulatorServer
from tests.integration.conftest import ADMIN_KEY, OTHER_KEY, auth, wait_final
from worker.upstream import UpstreamTarget

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("celery_session_worker")]

CONTEXT = [
    {
        "id": "runbook",
        "title": "Runbook",
        "url": "https://example.test/runbook",
        "text": "When the upstream fails, genq serves cached answers. Breakers open after "
        "consecutive failures and probe again after the reset timeout.",
    },
    {"id": "menu", "title": "Menu", "text": "Soup of the day is tomato. Bread is fresh."},
]


def submit(api_url: str, body: dict[str, Any]) -> str:
    resp = requests.post(f"{api_url}/v1/jobs", json=body, headers=auth(), timeout=10)
    assert resp.status_code == 202, resp.text
    return str(resp.headers["Location"])


def run(api_url: str, body: dict[str, Any], timeout_s: float = 20) -> dict[str, Any]:
    return wait_final(api_url, submit(api_url, body), timeout_s=timeout_s)


def own_model() -> str:
    return f"simulator/test-{uuid.uuid4().hex[:8]}"


def circuit(settings: Settings, model: str) -> str:
    return UpstreamTarget.from_settings(settings, model).name


def seconds(job: dict[str, Any]) -> float:
    def parse(ts: str) -> float:
        from datetime import datetime

        return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()

    return parse(job["finished_at"]) - parse(job["created_at"])


def trip(api_url: str, model: str, fail_max: int = 4) -> None:
    """Send jobs at a failing upstream until the model's circuit has opened."""
    for _ in range(fail_max):
        run(api_url, {"prompt": "trip", "model": model, "fallback": "none"})


def test_outage_answers_at_once_from_cache_excerpt_or_not_at_all(
    api_url: str, sim: SimulatorServer, genq_settings: Settings
) -> None:
    """With the circuit open: cached prompt → cache, context → excerpt, neither → failed now."""
    model = own_model()
    primed = run(api_url, {"prompt": "what is genq", "model": model})
    assert primed["result"]["source"] == "upstream"
    sim.configure(mode="outage", latency_ms=0)
    trip(api_url, model)
    calls_at_open = sim.stats()["calls"]
    # The open window is 1 s, growing with failed probes; these jobs finish within it or
    # meet at most a probe or two, which the assertion below allows for.
    cached = run(api_url, {"prompt": "what is genq", "model": model})
    excerpt = run(
        api_url,
        {"prompt": "what happens when the upstream fails", "model": model, "context": CONTEXT},
    )
    nothing = run(api_url, {"prompt": "no fallback here", "model": model})

    assert cached["status"] == "succeeded"
    assert cached["result"]["source"] == "cache"
    assert cached["result"]["degraded"] is True
    assert cached["result"]["text"] == primed["result"]["text"]
    assert cached["result"]["fallback_reason"] in ("circuit_open", "probe_in_flight")
    assert cached["result"]["circuit"] == circuit(genq_settings, model)
    assert cached["result"]["retry_after"] > 0

    assert excerpt["result"]["source"] == "excerpt"
    assert excerpt["result"]["degraded"] is True
    assert "[1]" in excerpt["result"]["text"]
    assert excerpt["result"]["citations"][0]["id"] == "runbook"

    assert nothing["status"] == "failed"
    assert nothing["error"]["type"] == "service_unavailable"
    assert nothing["error"]["retry_after"] > 0

    for job in (cached, excerpt, nothing):
        # No retry, no sleep: one rejected attempt, answered well under the retry base.
        assert [a["outcome"] for a in job["attempts"]] == ["rejected"], job["attempts"]
        assert seconds(job) < 1.0, job
        assert job["started_at"] is not None
    probes = sim.stats()["calls"] - calls_at_open
    assert probes <= 1


def test_recovery_closes_the_circuit_through_one_probe(
    api_url: str, sim: SimulatorServer, genq_settings: Settings
) -> None:
    """After an outage, the first probe that succeeds closes the circuit; jobs go upstream."""
    model = own_model()
    sim.configure(mode="outage")
    trip(api_url, model)
    sim.configure(mode="ok")
    deadline = time.monotonic() + 15
    sources = []
    while time.monotonic() < deadline:
        job = run(api_url, {"prompt": f"after outage {len(sources)}", "model": model})
        sources.append(job["result"]["source"] if job["status"] == "succeeded" else "failed")
        if sources[-1] == "upstream":
            break
        time.sleep(0.2)
    assert sources[-1] == "upstream", sources
    after = [run(api_url, {"prompt": f"closed {i}", "model": model}) for i in range(3)]
    assert all(job["result"]["source"] == "upstream" for job in after)
    circuits = requests.get(f"{api_url}/v1/circuits", headers=auth(), timeout=5).json()
    state = {c["name"]: c["state"] for c in circuits}[circuit(genq_settings, model)]
    assert state == "closed"


def test_rate_limited_twice_then_success_honours_retry_after(
    api_url: str, sim: SimulatorServer
) -> None:
    """Two 429s with Retry-After: 1, then 200: succeeds after ≥ 2 s with both attempts kept."""
    sim.configure(script=[{"status": 429, "retry_after": 1}, {"status": 429, "retry_after": 1}])
    job = run(api_url, {"prompt": "patience", "model": own_model()})
    assert job["status"] == "succeeded"
    assert job["result"]["source"] == "upstream"
    outcomes = [(a["outcome"], a.get("error_type")) for a in job["attempts"]]
    assert outcomes == [("failed", "upstream_rate_limited")] * 2 + [("succeeded", None)]
    assert seconds(job) >= 2.0


def test_client_error_fails_at_once_without_retry(api_url: str, sim: SimulatorServer) -> None:
    """A 400 fails the job after exactly one attempt and never falls back."""
    sim.configure(script=[{"status": 400, "body": {"error": "bad input"}}])
    job = run(api_url, {"prompt": "bad", "model": own_model(), "context": CONTEXT})
    assert job["status"] == "failed"
    assert job["error"]["type"] == "upstream_rejected"
    assert len(job["attempts"]) == 1
    assert sim.stats()["calls"] == 1


def test_retries_exhausted_degrade_with_upstream_failed(api_url: str, sim: SimulatorServer) -> None:
    """Transient errors on every attempt end in an excerpt with fallback_reason upstream_failed."""
    sim.configure(error_rate=1.0)
    job = run(api_url, {"prompt": "upstream fails", "model": own_model(), "context": CONTEXT})
    assert job["status"] == "succeeded"
    assert job["result"]["source"] == "excerpt"
    assert job["result"]["fallback_reason"] == "upstream_failed"
    # max_retries (2) is used up before fail_max (4) failures could open the circuit.
    assert [a["outcome"] for a in job["attempts"]] == ["failed"] * 3


def test_cache_key_ignores_parameter_order(api_url: str, sim: SimulatorServer) -> None:
    """Same request, params in another order → cache hit; another temperature → miss."""
    model = own_model()
    first = run(
        api_url,
        {
            "prompt": "order",
            "model": model,
            "params": {"temperature": 0.5, "max_new_tokens": 8, "top_p": 0.9},
        },
    )
    assert first["result"]["source"] == "upstream"
    same = run(
        api_url,
        {
            "prompt": "order",
            "model": model,
            "cache": "prefer",
            "params": {"top_p": 0.9, "max_new_tokens": 8, "temperature": 0.5},
        },
    )
    other = run(
        api_url,
        {
            "prompt": "order",
            "model": model,
            "cache": "prefer",
            "params": {"top_p": 0.9, "max_new_tokens": 8, "temperature": 0.6},
        },
    )
    assert same["result"]["source"] == "cache"
    assert same["result"]["fallback_reason"] is None
    assert other["result"]["source"] == "upstream"
    assert sim.stats()["calls"] == 2


def test_generate_route_answers_503_or_degraded_while_forced_open(
    api_url: str, sim: SimulatorServer, genq_settings: Settings
) -> None:
    """/v1/generate: 503 + Retry-After with no fallback, 200 degraded with context."""
    model = own_model()
    name = circuit(genq_settings, model)
    admin = auth(ADMIN_KEY)
    assert (
        requests.post(f"{api_url}/v1/circuits/{name}/open", headers=auth(), timeout=5).status_code
        == 403
    )
    opened = requests.post(f"{api_url}/v1/circuits/{name}/open", headers=admin, timeout=5)
    assert opened.json()["state"] == "forced_open"
    try:
        url = f"{api_url}/v1/generate"
        bare = requests.post(url, json={"prompt": "x", "model": model}, headers=auth(), timeout=15)
        assert bare.status_code == 503
        assert int(bare.headers["Retry-After"]) >= 1
        assert bare.json()["error"]["type"] == "service_unavailable"
        body = {"prompt": "upstream fails", "model": model, "context": CONTEXT}
        degraded = requests.post(url, json=body, headers=auth(), timeout=15)
        assert degraded.status_code == 200
        result = degraded.json()["result"]
        assert result["source"] == "excerpt"
        assert result["fallback_reason"] == "circuit_forced_open"
        # /metrics shows the cluster as the API's monitor last read it (every 5 s).
        shown = f'genq_circuit_state{{circuit="{name}",state="forced_open"}} 1.0'
        deadline = time.monotonic() + 7
        while shown not in requests.get(f"{api_url}/metrics", timeout=5).text:
            assert time.monotonic() < deadline, "the forced-open circuit never reached /metrics"
            time.sleep(0.5)
        health = requests.get(f"{api_url}/v1/health/circuit-breaker", headers=auth(), timeout=5)
        assert health.status_code == 503
        assert "Retry-After" in health.headers
    finally:
        requests.post(f"{api_url}/v1/circuits/{name}/reset", headers=admin, timeout=5)
    assert sim.stats()["calls"] == 0
    # Workers notice a reset within DEFAULT_OPEN_VIEW_TTL_S (0.5 s).
    deadline = time.monotonic() + 5
    while True:
        ok = requests.post(url, json={"prompt": "y", "model": model}, headers=auth(), timeout=15)
        if ok.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert ok.status_code == 200
    assert ok.json()["result"]["source"] == "upstream"


def test_circuits_report_the_retry_after_a_job_is_told(
    api_url: str, sim: SimulatorServer, genq_settings: Settings
) -> None:
    """A forced-open circuit: /v1/circuits, the health route and a rejected job agree on
    retry_after (the breakers' reset timeout), not a fixed figure of their own."""
    model = own_model()
    name = circuit(genq_settings, model)
    admin = auth(ADMIN_KEY)
    requests.post(f"{api_url}/v1/circuits/{name}/open", headers=admin, timeout=5)
    try:
        job = run(api_url, {"prompt": "x", "model": model, "context": CONTEXT})
        told = job["result"]["retry_after"]
        listed = requests.get(f"{api_url}/v1/circuits", headers=auth(), timeout=5).json()
        health = requests.get(f"{api_url}/v1/health/circuit-breaker", headers=auth(), timeout=5)
    finally:
        requests.post(f"{api_url}/v1/circuits/{name}/reset", headers=admin, timeout=5)
    reset_timeout = genq_settings.breaker_reset_timeout_s
    assert told == pytest.approx(reset_timeout, abs=0.3)
    assert {c["name"]: c["retry_after"] for c in listed}[name] == pytest.approx(told, abs=0.3)
    in_health = {c["name"]: c["retry_after"] for c in health.json()["circuits"]}[name]
    assert in_health == pytest.approx(told, abs=0.3)
    assert sim.stats()["calls"] == 0


def test_generate_answers_503_with_retry_after_when_retries_run_out(
    api_url: str, sim: SimulatorServer
) -> None:
    """Upstream down, retries spent, nothing to fall back on: 503 + Retry-After, not 502."""
    sim.configure(mode="outage", latency_ms=0)
    body = {"prompt": "nothing can answer", "model": own_model(), "fallback": "none"}
    resp = requests.post(f"{api_url}/v1/generate?wait_s=15", json=body, headers=auth(), timeout=20)
    assert resp.status_code == 503, resp.text
    assert int(resp.headers["Retry-After"]) >= 1
    assert resp.json()["error"]["type"] == "upstream_unavailable"


def test_admin_cannot_steer_a_circuit_no_served_model_would_use(api_url: str) -> None:
    """Forcing open a name that is not one of the upstream's circuits is a 404 that
    creates nothing."""
    admin = auth(ADMIN_KEY)
    name = "openai~elsewhere.example~anything"
    resp = requests.post(f"{api_url}/v1/circuits/{name}/open", headers=admin, timeout=5)
    assert resp.status_code == 404
    listed = requests.get(f"{api_url}/v1/circuits", headers=auth(), timeout=5).json()
    assert name not in [c["name"] for c in listed]


def test_a_cached_answer_serves_only_the_key_that_caused_it(
    api_url: str, sim: SimulatorServer, genq_settings: Settings
) -> None:
    """With the circuit open, key A's job is answered from A's cached answer; key B's
    same prompt is not (it gets no answer rather than A's)."""
    model = own_model()
    body = {"prompt": f"private question {uuid.uuid4().hex}", "model": model}
    primed = run(api_url, body)
    assert primed["result"]["source"] == "upstream"
    name = circuit(genq_settings, model)
    admin = auth(ADMIN_KEY)
    requests.post(f"{api_url}/v1/circuits/{name}/open", headers=admin, timeout=5)
    time.sleep(0.3)  # a forced open reaches every worker within its view TTL (0.25 s)
    try:
        mine = run(api_url, body)
        location = requests.post(
            f"{api_url}/v1/jobs", json=body, headers=auth(OTHER_KEY), timeout=10
        ).headers["Location"]
        theirs = wait_final(api_url, location, key=OTHER_KEY)
    finally:
        requests.post(f"{api_url}/v1/circuits/{name}/reset", headers=admin, timeout=5)
    assert mine["result"]["source"] == "cache"
    assert mine["result"]["text"] == primed["result"]["text"]
    assert theirs["status"] == "failed"
    assert theirs["error"]["type"] == "service_unavailable"
