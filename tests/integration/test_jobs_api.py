"""The job path end to end: HTTP API → Redis broker → Celery worker → simulator → job record."""

from __future__ import annotations

from typing import Any

import pytest
import redis
import requests

from simulator.server import SimulatorServer, simulated_text
from tests.integration.conftest import ADMIN_KEY, OTHER_KEY, auth, wait_final

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("celery_session_worker")]


def submit(api_url: str, body: dict[str, Any], key: str | None = None) -> requests.Response:
    headers = auth(key) if key else auth()
    return requests.post(f"{api_url}/v1/jobs", json=body, headers=headers, timeout=10)


def job_count(redis_url: str) -> int:
    """Job records in Redis: the API writes one per accepted job, before publishing it."""
    client = redis.Redis.from_url(redis_url)
    return sum(1 for key in client.scan_iter("genq:job:*") if key.count(b":") == 2)


def test_job_completes_with_the_simulator_text(api_url: str, sim: SimulatorServer) -> None:
    """A job submitted over HTTP is run by the worker and its record holds the simulator's text."""
    resp = submit(api_url, {"prompt": "the quick brown fox", "params": {"max_new_tokens": 3}})
    assert resp.status_code == 202
    created = resp.json()
    assert created["status"] == "queued"
    assert resp.headers["Location"] == f"/v1/jobs/{created['id']}"
    job = wait_final(api_url, resp.headers["Location"])
    assert job["status"] == "succeeded", job
    result = job["result"]
    assert result["text"] == simulated_text("the quick brown fox", 3)
    assert result["source"] == "upstream"
    assert result["degraded"] is False
    assert result["model"] == "simulator/echo-1"
    assert job["started_at"] and job["finished_at"]
    assert [a["outcome"] for a in job["attempts"]] == ["succeeded"]
    assert sim.stats()["calls"] == 1


def test_a_chat_job_completes_with_its_messages_rendered(
    api_url: str, sim: SimulatorServer
) -> None:
    """A job of chat messages runs; to an hf upstream they go as the documented prompt."""
    messages = [{"role": "system", "content": "brief"}, {"role": "user", "content": "hello there"}]
    resp = submit(api_url, {"messages": messages, "params": {"max_tokens": 4}})
    assert resp.status_code == 202, resp.text
    job = wait_final(api_url, resp.headers["Location"])
    assert job["status"] == "succeeded", job
    rendered = "system: brief\nuser: hello there\nassistant:"
    assert job["result"]["text"] == simulated_text(rendered, 4)


def test_unfinished_job_says_when_to_poll(api_url: str, sim: SimulatorServer) -> None:
    """GET on a job that is not final carries Retry-After; a final one does not."""
    sim.configure(latency_ms=1500)
    location = submit(api_url, {"prompt": "slow one"}).headers["Location"]
    first = requests.get(f"{api_url}{location}", headers=auth(), timeout=5)
    assert first.json()["status"] in ("queued", "running")
    assert first.headers["Retry-After"] == "1"
    wait_final(api_url, location)
    final = requests.get(f"{api_url}{location}", headers=auth(), timeout=5)
    assert "Retry-After" not in final.headers


def test_rejected_upstream_request_fails_at_once(api_url: str, sim: SimulatorServer) -> None:
    """A 400 from the upstream fails the job after one attempt, with the upstream's reason."""
    sim.configure(script=[{"status": 400, "body": {"error": "Input validation error: bad"}}])
    job = wait_final(api_url, submit(api_url, {"prompt": "x"}).headers["Location"])
    assert job["status"] == "failed"
    assert job["error"]["type"] == "upstream_rejected"
    assert "Input validation error" in job["error"]["message"]
    assert len(job["attempts"]) == 1
    assert sim.stats()["calls"] == 1


def test_transient_upstream_errors_are_retried(api_url: str, sim: SimulatorServer) -> None:
    """Two 500s then a success: the job succeeds on its third attempt."""
    sim.configure(script=[{"status": 500}, {"status": 500}])
    job = wait_final(api_url, submit(api_url, {"prompt": "retry me"}).headers["Location"])
    assert job["status"] == "succeeded", job
    assert [a["outcome"] for a in job["attempts"]] == ["failed", "failed", "succeeded"]
    assert sim.stats()["calls"] == 3


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "prompt"),
        ({"prompt": "x", "messages": [{"role": "user", "content": "y"}]}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "robot", "content": "y"}]}, "role"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": 5}, "prompt"),
        ({"prompt": "x" * 32_001}, "prompt"),
        ({"prompt": "x", "params": {"temperature": 9}}, "temperature"),
        ({"prompt": "x", "params": {"max_new_tokens": 0}}, "max_new_tokens"),
        ({"prompt": "x", "context": [{"id": str(i), "text": "t"} for i in range(51)]}, "context"),
        ({"prompt": "x", "context": [{"text": "no id"}]}, "id"),
        ({"prompt": "x", "surprise": 1}, "surprise"),
    ],
)
def test_bad_input_is_rejected_naming_the_field(
    api_url: str, redis_url: str, body: dict[str, Any], field: str
) -> None:
    """Invalid bodies get 422 naming the field (where it is, or in the reason), and
    nothing is enqueued."""
    before = job_count(redis_url)
    resp = submit(api_url, body)
    assert resp.status_code == 422
    errors = resp.json()["detail"]
    assert any(field in err["loc"] or field in err["msg"] for err in errors), errors
    assert job_count(redis_url) == before


def test_malformed_json_is_rejected(api_url: str) -> None:
    """A body that is not JSON gets 422, not a server error."""
    resp = requests.post(
        f"{api_url}/v1/jobs",
        data=b"{not json",
        headers={**auth(), "Content-Type": "application/json"},
        timeout=5,
    )
    assert resp.status_code == 422


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "x"}])
def test_requests_without_a_valid_key_get_401(api_url: str, headers: dict[str, str]) -> None:
    """Every /v1 route refuses a missing or unknown key."""
    assert (
        requests.post(
            f"{api_url}/v1/jobs", json={"prompt": "x"}, headers=headers, timeout=5
        ).status_code
        == 401
    )
    assert requests.get(f"{api_url}/v1/jobs/abc", headers=headers, timeout=5).status_code == 401


def test_a_job_is_visible_only_to_its_owner(api_url: str) -> None:
    """Another key (even an admin one) gets 404 for a job it did not create."""
    location = submit(api_url, {"prompt": "mine"}).headers["Location"]
    assert (
        requests.get(f"{api_url}{location}", headers=auth(OTHER_KEY), timeout=5).status_code == 404
    )
    assert (
        requests.get(f"{api_url}{location}", headers=auth(ADMIN_KEY), timeout=5).status_code == 404
    )
    assert requests.get(f"{api_url}{location}", headers=auth(), timeout=5).status_code == 200


def test_unknown_job_is_404(api_url: str) -> None:
    """An id that was never created is 404, not Celery's PENDING."""
    resp = requests.get(f"{api_url}/v1/jobs/0123456789abcdef", headers=auth(), timeout=5)
    assert resp.status_code == 404


def test_health_routes_need_no_key(api_url: str) -> None:
    """/healthz and /readyz answer without a key; /readyz checks Redis."""
    assert requests.get(f"{api_url}/healthz", timeout=5).json() == {"status": "ok"}
    ready = requests.get(f"{api_url}/readyz", timeout=5)
    assert ready.status_code == 200
    assert ready.json()["redis"] == "ok"
    metrics = requests.get(f"{api_url}/metrics", timeout=5, allow_redirects=False)
    assert metrics.status_code == 200
    assert "genq_redis_up 1.0" in metrics.text
    assert 'genq_queue_depth{queue="interactive"}' in metrics.text


@pytest.mark.parametrize(("wait", "says"), [("0", "greater than 0"), ("61", "60"), ("x", "number")])
def test_a_bad_wait_s_is_a_422_naming_it(api_url: str, wait: str, says: str) -> None:
    """``wait_s`` is read by the route, checked with the bounds the schema documents."""
    job_id = submit(api_url, {"prompt": "wait"}).json()["id"]
    resp = requests.get(f"{api_url}/v1/jobs/{job_id}?wait_s={wait}", headers=auth(), timeout=5)
    assert resp.status_code == 422
    (error,) = resp.json()["detail"]
    assert error["loc"] == ["query", "wait_s"] and says in error["msg"]
    assert "input" not in error
