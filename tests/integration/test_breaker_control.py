"""Operator control, reports and the pybreaker surface of the shared breaker, on real Redis."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import pybreaker
import pytest
import redis

from core.circuits import force_closed, force_open, list_circuits, reset, snapshot
from core.errors import CircuitOpenError, UpstreamUnavailable
from tests.integration.breaker_support import boom, failing
from worker.breaker import DEFAULT_OPEN_VIEW_TTL_S, DEFAULT_VIEW_TTL_S, SharedCircuitBreaker
from worker.testing import ManualClock

pytestmark = pytest.mark.integration


def test_force_open_force_closed_and_reset(r: redis.Redis, name: str) -> None:
    """Forced open rejects once views refresh, forced closed counts nothing, reset zeroes."""
    breaker = SharedCircuitBreaker(name, r, fail_max=2, reset_timeout=0.2)
    breaker.call(lambda: None)
    force_open(r, name, 0.2)
    time.sleep(DEFAULT_VIEW_TTL_S)  # successes alone do not refresh the view
    reasons = []
    for _ in range(3):
        try:
            breaker.call(lambda: None)
        except CircuitOpenError as exc:
            reasons.append(exc.reason)
    assert reasons == ["circuit_forced_open"] * 3
    assert snapshot(r, name)["state"] == "forced_open"
    force_closed(r, name, 0.2)
    time.sleep(DEFAULT_OPEN_VIEW_TTL_S)  # how long an open view rejects without asking
    failing(breaker, 5)
    assert snapshot(r, name)["state"] == "forced_closed"
    assert snapshot(r, name)["failure_count"] == 0
    reset(r, name, 0.2)
    time.sleep(DEFAULT_VIEW_TTL_S)
    failing(breaker, 1)
    report = snapshot(r, name)
    assert (report["state"], report["failure_count"]) == ("closed", 1)
    assert report["transitions"]["forced_open"] == 1
    assert report["transitions"]["forced_closed"] == 1
    assert report["transitions"]["reset"] == 1


def test_operator_actions_reach_a_breaker_within_its_view_bounds(r: redis.Redis, name: str) -> None:
    """A breaker that saw its circuit open for 30 s admits within DEFAULT_OPEN_VIEW_TTL_S
    of a reset or a forced close, and rejects within DEFAULT_VIEW_TTL_S of a forced open."""
    breaker = SharedCircuitBreaker(name, r, fail_max=1, reset_timeout=30.0)
    failing(breaker, 1)
    with pytest.raises(CircuitOpenError):
        breaker.call(lambda: None)
    reset(r, name, 30.0)
    time.sleep(DEFAULT_OPEN_VIEW_TTL_S)
    assert breaker.call(lambda: 1) == 1
    force_open(r, name, 30.0)
    time.sleep(DEFAULT_VIEW_TTL_S)
    with pytest.raises(CircuitOpenError) as info:
        breaker.call(lambda: None)
    assert (info.value.reason, info.value.retry_after) == ("circuit_forced_open", 30.0)
    force_closed(r, name, 30.0)
    time.sleep(DEFAULT_OPEN_VIEW_TTL_S)
    assert breaker.call(lambda: 2) == 2


def test_snapshot_and_list_circuits_report_the_circuit(r: redis.Redis, name: str) -> None:
    """snapshot gives state, count, opened_at, retry_after, last failure and transition counts."""
    breaker = SharedCircuitBreaker(name, r, fail_max=2, reset_timeout=10.0)
    before = time.time()
    failing(breaker, 2, lambda: boom("x" * 300))
    report = snapshot(r, name)
    assert report["name"] == name
    assert report["state"] == "open"
    assert report["failure_count"] == 2
    opened_at = datetime.fromisoformat(report["opened_at"].replace("Z", "+00:00"))
    assert report["opened_at"].endswith("Z") and len(report["opened_at"]) == 24  # ms, UTC
    assert before - 1 < opened_at.timestamp() < time.time() + 1
    assert 9.0 < report["retry_after"] <= 10.0
    assert report["retry_after"] == round(report["retry_after"], 3)
    assert report["probe_due"] is False
    assert report["last_failure"] == "UpstreamUnavailable: " + "x" * 200
    assert report["transitions"]["opened"] == 1
    assert name in [c["name"] for c in list_circuits(r)]
    fresh = snapshot(r, f"{name}-unused")
    assert (fresh["state"], fresh["retry_after"], fresh["opened_at"]) == ("closed", 0.0, None)
    assert fresh["probe_due"] is False


def test_an_open_circuit_past_its_window_reports_its_probe_due(r: redis.Redis, name: str) -> None:
    """Open with its window passed (no call has probed yet): retry_after 0, probe_due."""
    breaker = SharedCircuitBreaker(name, r, fail_max=1, reset_timeout=0.05)
    failing(breaker, 1)
    assert snapshot(r, name)["probe_due"] is False
    time.sleep(0.06)
    report = snapshot(r, name)
    assert (report["state"], report["retry_after"], report["probe_due"]) == ("open", 0.0, True)


def test_keys_expire_when_unused(r: redis.Redis, name: str) -> None:
    """Every key a circuit writes carries an expiry (about a day)."""
    breaker = SharedCircuitBreaker(name, r, fail_max=1)
    failing(breaker, 1)
    keys = r.keys(f"genq:breaker:{{{name}}}:*")
    assert keys
    assert all(86_000_000 < r.pttl(k) <= 86_400_000 for k in keys)


def test_admissions_register_a_healthy_circuit_and_keep_its_keys_alive(
    r: redis.Redis, name: str
) -> None:
    """Successes write nothing: the admission lists the circuit and refreshes its expiry."""
    clock = ManualClock()
    breaker = SharedCircuitBreaker(name, r, view_ttl_s=0.05, clock=clock)
    breaker.call(lambda: None)
    state = f"genq:breaker:{{{name}}}:state"
    assert name in [c["name"] for c in list_circuits(r)]
    assert 86_000_000 < r.pttl(state) <= 86_400_000
    r.pexpire(state, 60_000)
    clock.advance(0.06)
    breaker.call(lambda: None)
    assert r.pttl(state) <= 60_000  # refreshed at most once per quarter of the expiry
    clock.advance(6.1 * 3600)
    breaker.call(lambda: None)
    assert 86_000_000 < r.pttl(state) <= 86_400_000


class Recorder(pybreaker.CircuitBreakerListener):
    """Keeps every listener event it gets."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def before_call(self, cb: Any, func: Any, *args: Any, **kwargs: Any) -> None:
        self.events.append("before")

    def success(self, cb: Any) -> None:
        self.events.append("success")

    def failure(self, cb: Any, exc: BaseException) -> None:
        self.events.append(f"failure:{type(exc).__name__}")

    def state_change(self, cb: Any, old: Any, new: Any) -> None:
        self.events.append(f"{old.name}->{new.name}")


def test_pybreaker_surface_listeners_decorator_and_calling(r: redis.Redis, name: str) -> None:
    """Listeners hear every event in order; ``@breaker`` and ``calling()`` guard calls."""
    recorder = Recorder()
    breaker = SharedCircuitBreaker(name, r, fail_max=2, reset_timeout=0.05, listeners=[recorder])

    @breaker
    def double(x: int) -> int:
        return 2 * x

    assert double(21) == 42
    with pytest.raises(UpstreamUnavailable), breaker.calling():
        boom()
    failing(breaker, 1)
    assert (breaker.current_state, breaker.fail_counter) == ("open", 2)
    time.sleep(0.06)
    with breaker.calling():
        pass
    assert breaker.current_state == "closed"
    assert recorder.events == [
        "before",
        "success",
        "before",
        "failure:UpstreamUnavailable",
        "before",
        "closed->open",
        "failure:UpstreamUnavailable",
        "open->half-open",
        "before",
        "half-open->closed",
        "success",
    ]


def test_a_bytes_client_works_too(redis_url: str, name: str) -> None:
    """A client without decode_responses drives the same circuit and reads the same snapshot."""
    client = redis.Redis.from_url(redis_url)
    breaker = SharedCircuitBreaker(name, lambda: client, fail_max=1)
    failing(breaker, 1)
    assert snapshot(client, name)["state"] == "open"
    assert snapshot(client, name)["last_failure"] == "UpstreamUnavailable: upstream down"
    assert name in [c["name"] for c in list_circuits(client)]
    client.close()
