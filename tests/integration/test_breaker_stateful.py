"""Random interleavings of admissions, outcomes and clock steps against the real Redis scripts.

Three breakers stand for three processes sharing one circuit. Time moves through one
``ManualClock`` they share (it replaces Redis ``TIME`` inside the scripts), so windows
pass without sleeping. ``view_ttl_s`` is 0 on these instances so every admission asks Redis
and every success is recorded (no view is fresh enough to skip one as having nothing to
reset): the test then knows the generation each call was admitted in, and can model the
count exactly. test_breaker_shared.py covers the skipped successes of a fresh view.
"""

from __future__ import annotations

import uuid
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from core.circuits import snapshot
from core.errors import CircuitOpenError, UpstreamUnavailable
from worker.breaker import SharedCircuitBreaker
from worker.testing import ManualClock

pytestmark = pytest.mark.integration


@dataclass
class Call:
    """A call admitted and not yet finished."""

    guard: AbstractContextManager[None]
    gen: int
    probe: bool


class SharedCircuit(RuleBasedStateMachine):
    """Model: consecutive counted failures in the current closed generation."""

    client: redis.Redis

    def __init__(self) -> None:
        super().__init__()
        self.name = f"stateful-{uuid.uuid4().hex[:10]}"
        self.breakers: list[SharedCircuitBreaker] = []
        self.calls: list[Call] = []
        self.consecutive = 0
        self.fail_max = 1
        self.clock = ManualClock()

    @initialize(fail_max=st.integers(1, 3), threshold=st.integers(1, 2))
    def build(self, fail_max: int, threshold: int) -> None:
        self.fail_max = fail_max
        for _ in range(3):
            b = SharedCircuitBreaker(
                self.name,
                self.client,
                fail_max=fail_max,
                reset_timeout=1.0,
                max_reset_timeout=4.0,
                success_threshold=threshold,
                view_ttl_s=0.0,
                clock=self.clock,
            )
            self.breakers.append(b)

    def state(self) -> dict[str, Any]:
        return snapshot(self.client, self.name)

    @rule(which=st.integers(0, 2))
    def admit(self, which: int) -> None:
        guard = self.breakers[which].calling()
        rejected: str | None = None
        try:
            guard.__enter__()
        except CircuitOpenError as exc:
            rejected = exc.reason
        if rejected == "probe_in_flight":
            assert any(c.probe for c in self.calls), "probe_in_flight without a probe"
        if rejected is not None:
            assert rejected == "circuit_open" or rejected == "probe_in_flight"
            return
        after = self.state()
        probe = after["state"] == "half-open"
        if probe:
            live = [c for c in self.calls if c.probe and c.gen == after["generation"]]
            assert not live, "two probes admitted at once"
        self.calls.append(Call(guard, int(after["generation"]), probe))

    @precondition(lambda self: bool(self.calls))
    @rule(data=st.data(), ok=st.booleans())
    def finish(self, data: st.DataObject, ok: bool) -> None:
        call = data.draw(st.sampled_from(self.calls))
        self.calls.remove(call)
        before = self.state()
        if ok:
            call.guard.__exit__(None, None, None)
        else:
            error = UpstreamUnavailable("503", status=503)
            call.guard.__exit__(UpstreamUnavailable, error, None)
        after = self.state()
        if before["state"] != "closed" and after["state"] == "closed":
            assert call.probe and ok, "closed without a successful probe"
            self.consecutive = 0
        counted = before["state"] == "closed" and call.gen == before["generation"]
        if counted:
            self.consecutive = 0 if ok else self.consecutive + 1
        if before["state"] == "closed" and after["state"] == "open":
            assert counted and self.consecutive >= self.fail_max, "opened before fail_max"
            self.consecutive = 0
        if counted and after["state"] == "closed":
            assert self.consecutive < self.fail_max, "fail_max reached but still closed"
            assert after["failure_count"] == self.consecutive
        if before["state"] == "closed" and not counted:
            assert after == before, "an outcome from an older generation changed the circuit"

    @rule(seconds=st.sampled_from([0.4, 1.0, 2.5]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @invariant()
    def at_most_one_probe(self) -> None:
        assert sum(c.probe for c in self.calls if c.gen == self._gen()) <= 1

    def _gen(self) -> int:
        return int(self.state()["generation"])

    def teardown(self) -> None:
        for call in self.calls:  # hand back any lease so the next example starts clean
            call.guard.__exit__(None, None, None)


def test_shared_circuit_state_machine(redis_url: str) -> None:
    """Any interleaving keeps one probe at a time, closes only on a probe, opens at fail_max."""
    SharedCircuit.client = redis.Redis.from_url(redis_url, decode_responses=True)
    runner = SharedCircuit.TestCase
    runner.settings = settings(
        max_examples=30,
        stateful_step_count=30,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    runner().runTest()
