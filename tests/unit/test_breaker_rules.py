"""The breaker's rules without Redis: option validation, outcomes and the in-process store."""

from __future__ import annotations

import math

import pytest
import redis

from core.circuits import CircuitState
from core.errors import UpstreamRateLimited, UpstreamRejected, UpstreamUnavailable
from worker.breaker import SharedCircuitBreaker
from worker.breaker.codes import OutcomeKind, Transition, Verdict
from worker.breaker.local_store import LocalStore
from worker.breaker.rules import Options, Outcome, SlowCall, classify

CLOSED, OPEN, HALF_OPEN = CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN
ADMIT, PROBE, RECORDED = Verdict.ADMIT, Verdict.PROBE, Verdict.RECORDED
REJECT_OPEN, REJECT_PROBE = Verdict.REJECT_OPEN, Verdict.REJECT_PROBE
OK, FAIL, NEUTRAL = OutcomeKind.OK, OutcomeKind.FAIL, OutcomeKind.NEUTRAL


def out(kind: OutcomeKind, retry_ms: int = 0) -> Outcome:
    return Outcome(kind, retry_ms=retry_ms)


class Clock:
    """A hand-driven monotonic clock in seconds."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def local(**options: object) -> tuple[LocalStore, Clock]:
    clock = Clock()
    return LocalStore(Options(**options), clock), clock  # type: ignore[arg-type]


def fail(b: LocalStore, times: int = 1, retry_ms: int = 0) -> int:
    """Admit and fail ``times`` calls; returns the last transition."""
    moved = 0
    for _ in range(times):
        ticket = b.admit("t")
        moved = b.record(ticket.gen, "", out(FAIL, retry_ms)).transition
    return moved


@pytest.mark.parametrize(
    "options",
    [
        {"fail_max": 0},
        {"fail_max": 2.5},
        {"fail_max": True},
        {"reset_timeout": 0},
        {"reset_timeout": -1.0},
        {"reset_timeout": math.inf},
        {"reset_timeout": 0.0001},
        {"success_threshold": 0},
        {"probe_lease_s": 0},
        {"reset_timeout": 10.0, "max_reset_timeout": 5.0},
        {"window_s": 10.0},
        {"failure_rate_threshold": 0.5},
        {"window_s": 10.0, "failure_rate_threshold": 1.5},
        {"window_s": 10.0, "failure_rate_threshold": 0},
        {"min_calls": 0},
        {"slow_call_s": 0},
        {"reset_timeout": "60"},
    ],
)
def test_bad_options_are_refused(options: dict[str, object]) -> None:
    """Each nonsensical option raises ValueError when the breaker is built."""
    with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
        SharedCircuitBreaker("c", lambda: pytest.fail("no I/O expected"), **options)  # type: ignore[arg-type]


def test_bad_name_and_exclusion_are_refused() -> None:
    """An empty name or an exclusion that is neither a type nor callable raises ValueError."""
    with pytest.raises(ValueError, match="name"):
        SharedCircuitBreaker("", lambda: pytest.fail("no I/O"))
    with pytest.raises(ValueError, match="exclude"):
        SharedCircuitBreaker("c", lambda: pytest.fail("no I/O"), exclude=["nope"])  # type: ignore[list-item]


def test_construction_does_no_io() -> None:
    """Building a breaker never calls the Redis factory."""
    calls: list[int] = []

    def factory() -> redis.Redis:
        calls.append(1)
        raise AssertionError("the factory must not be called at construction")

    breaker = SharedCircuitBreaker("c", factory)
    assert (breaker.name, breaker.fail_max, breaker.reset_timeout) == ("c", 5, 60.0)
    assert calls == []


def test_classify_counts_upstream_errors_and_skips_client_errors() -> None:
    """Upstream failures count; ValueError, TypeError, excluded types and predicates are neutral."""
    opts = Options()
    exclude = (UpstreamRejected, lambda e: "ignore me" in str(e))
    assert classify(UpstreamUnavailable("503"), 0.1, opts, exclude).kind == FAIL
    assert classify(RuntimeError("boom"), 0.1, opts, exclude).kind == FAIL
    for neutral in (ValueError("v"), TypeError("t"), UpstreamRejected("400"), OSError("ignore me")):
        assert classify(neutral, 0.1, opts, exclude).kind == NEUTRAL
    assert classify(KeyboardInterrupt(), 0.1, opts, exclude).kind == NEUTRAL
    assert classify(None, 0.1, opts, exclude).kind == OK


def test_classify_reads_retry_after_and_slow_calls() -> None:
    """A failure's retry_after becomes ms (capped); a slow success becomes a SlowCall failure."""
    opts = Options(slow_call_s=0.5, max_reset_timeout=600.0)
    limited = classify(UpstreamRateLimited("429", retry_after=12.5), 0.1, opts, ())
    assert (limited.kind, limited.retry_ms) == (FAIL, 12_500)
    assert classify(UpstreamRateLimited("429", retry_after=1e9), 0.1, opts, ()).retry_ms == 600_000
    assert classify(UpstreamRateLimited("429", retry_after=math.nan), 0.1, opts, ()).retry_ms == 0
    slow = classify(None, 0.6, opts, ())
    assert slow.kind == FAIL
    assert isinstance(slow.error, SlowCall)
    assert slow.text.startswith("SlowCall: call took 0.600 s")


def test_failure_text_is_type_and_200_chars() -> None:
    """The recorded failure reason is the type name and the first 200 chars of the message."""
    text = classify(RuntimeError("x" * 500), 0.0, Options(), ()).text
    assert text == "RuntimeError: " + "x" * 200


def test_opens_after_exactly_fail_max_consecutive_failures() -> None:
    """The fail_max-th consecutive failure opens the circuit, not one before."""
    b, _ = local(fail_max=3, reset_timeout=1.0)
    assert fail(b, 2) == 0
    assert b.code == CLOSED
    assert fail(b, 1) == Transition.FAIL_MAX
    assert b.code == OPEN
    rejected = b.admit("t")
    assert (rejected.verdict, rejected.retry_ms) == (REJECT_OPEN, 1000)


def test_success_resets_and_neutral_outcomes_do_not() -> None:
    """A success zeroes the count; a neutral outcome neither counts nor resets."""
    b, _ = local(fail_max=3)
    fail(b, 2)
    b.record(b.gen, "", out(NEUTRAL))
    assert b.fails == 2
    b.record(b.gen, "", out(OK))
    assert b.fails == 0


def test_outcomes_from_an_older_generation_are_ignored() -> None:
    """A failure admitted before the last transition does not count."""
    b, clock = local(fail_max=1, reset_timeout=1.0)
    old = b.admit("t").gen
    fail(b, 1)
    clock.now += 1.0
    probe = b.admit("p")
    b.record(probe.gen, "p", out(OK))
    assert b.code == CLOSED
    b.record(old, "", out(FAIL))
    assert (b.code, b.fails) == (CLOSED, 0)


def test_half_open_admits_one_probe_and_its_success_closes() -> None:
    """After reset_timeout one caller gets the probe, others probe_in_flight; success closes."""
    b, clock = local(fail_max=1, reset_timeout=1.0)
    fail(b)
    clock.now += 1.0
    probe = b.admit("p1")
    assert (probe.verdict, probe.transition, probe.code) == (PROBE, Transition.HALF_OPEN, HALF_OPEN)
    assert b.admit("p2").verdict == REJECT_PROBE
    assert b.record(probe.gen, "p2", out(OK)).transition == 0  # not the lease holder
    assert b.record(probe.gen, "p1", out(OK)).transition == Transition.CLOSED
    assert b.admit("x").verdict == ADMIT


def test_success_threshold_needs_that_many_probes() -> None:
    """With success_threshold=2, the first successful probe frees the lease but keeps half-open."""
    b, clock = local(fail_max=1, reset_timeout=1.0, success_threshold=2)
    fail(b)
    clock.now += 1.0
    first = b.admit("a")
    assert b.record(first.gen, "a", out(OK)).transition == 0
    second = b.admit("b")
    assert second.verdict == PROBE
    assert b.record(second.gen, "b", out(OK)).transition == Transition.CLOSED


def test_failed_probes_double_the_window_up_to_the_cap() -> None:
    """Each failed probe reopens for twice the last window, never more than max_reset_timeout."""
    b, clock = local(fail_max=1, reset_timeout=1.0, max_reset_timeout=3.0)
    fail(b)
    windows = []
    for _ in range(3):
        clock.now += 10.0
        probe = b.admit("p")
        assert b.record(probe.gen, "p", out(FAIL)).transition == Transition.PROBE_FAILED
        windows.append(b.admit("x").retry_ms)
    assert windows == [2000, 3000, 3000]


def test_retry_after_lengthens_the_open_window() -> None:
    """A failure carrying retry_after opens the circuit for that long instead of reset_timeout."""
    b, _ = local(fail_max=1, reset_timeout=1.0)
    fail(b, 1, retry_ms=5000)
    assert b.admit("x").retry_ms == 5000


def test_an_expired_probe_lease_lets_another_probe_go() -> None:
    """A probe that never reports (its process died) stops blocking once its lease expires."""
    b, clock = local(fail_max=1, reset_timeout=1.0, probe_lease_s=2.0)
    fail(b)
    clock.now += 1.0
    dead = b.admit("dead")
    clock.now += 2.0
    assert b.admit("next").verdict == PROBE
    assert b.record(dead.gen, "dead", out(OK)).transition == 0


def test_failure_rate_trips_only_with_enough_calls() -> None:
    """The rate rule opens at threshold once min_calls calls are in the window, not before."""
    b, clock = local(fail_max=100, window_s=10.0, failure_rate_threshold=0.5, min_calls=4)
    for outcome in (OK, FAIL, OK):
        b.record(b.gen, "", out(outcome))
        clock.now += 0.1
    assert b.code == CLOSED
    assert b.record(b.gen, "", out(FAIL)).transition == Transition.RATE


def test_failure_rate_forgets_calls_outside_the_window() -> None:
    """Failures older than window_s no longer count toward the rate."""
    b, clock = local(fail_max=100, window_s=1.0, failure_rate_threshold=0.5, min_calls=2)
    b.record(b.gen, "", out(FAIL))
    clock.now += 2.0
    b.record(b.gen, "", out(OK))
    assert b.record(b.gen, "", out(OK)).code == CLOSED
    assert b.record(b.gen, "", out(FAIL)).transition == 0  # 1 of 3 in the window


def test_seed_keeps_an_open_circuit_open() -> None:
    """Seeding from a view that is open keeps rejecting for the rest of its window."""
    source, _ = local(fail_max=1, reset_timeout=5.0)
    fail(source)
    view = source.admit("x")
    b, _ = local(fail_max=1, reset_timeout=5.0)
    b.seed(view)
    assert b.admit("y").verdict == REJECT_OPEN
    assert b.record(None, "", out(OK)).verdict == RECORDED


def test_only_a_fresh_closed_reply_without_failures_is_quiet() -> None:
    """A success may skip its record only under a fresh, closed, failure-free reply of its gen."""
    b, clock = local(fail_max=2, reset_timeout=1.0)
    closed = b.admit("t")
    assert closed.quiet(closed.gen, 60.0, clock.now)
    assert not closed.quiet(closed.gen + 1, 60.0, clock.now)  # admitted in another generation
    assert not closed.quiet(closed.gen, 0.0, clock.now)  # stale
    failed = b.record(closed.gen, "", out(FAIL))
    assert not failed.quiet(failed.gen, 60.0, clock.now)  # a failure to reset
    opened = b.record(closed.gen, "", out(FAIL))
    assert opened.code == OPEN
    assert not opened.quiet(opened.gen, 60.0, clock.now)


def test_an_open_reply_rejects_alone_only_while_younger_than_open_ttl() -> None:
    """An open reply rejects without asking for ``open_ttl_s``, then asks (an operator may
    have closed the circuit), however long the open window it knows of still runs."""
    b, clock = local(fail_max=1, reset_timeout=30.0)
    fail(b)
    opened = b.admit("t")
    assert opened.code == OPEN
    verdict = opened.cached_verdict(0.25, 0.5, clock.now + 0.4)
    assert verdict is not None
    assert verdict[0] == REJECT_OPEN and verdict[1] == pytest.approx(29.6)
    assert opened.cached_verdict(0.25, 0.5, clock.now + 0.5) is None


def test_a_closed_reply_admits_alone_only_while_younger_than_its_ttl() -> None:
    """A quiet closed reply admits for ``ttl_s``; the open bound does not stretch it."""
    b, clock = local()
    closed = b.admit("t")
    assert closed.cached_verdict(0.25, 0.5, clock.now + 0.2) == (ADMIT, 0.0)
    assert closed.cached_verdict(0.25, 0.5, clock.now + 0.3) is None
