"""The shared breaker against a real redis-server: trips, probes, windows and round trips."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any, ClassVar

import pybreaker
import pytest
import redis

from core.circuits import reset, snapshot
from core.errors import (
    CircuitOpenError,
    UpstreamRateLimited,
    UpstreamRejected,
)
from tests.integration.breaker_support import boom, failing
from worker.breaker import SharedCircuitBreaker

pytestmark = pytest.mark.integration


class CountingConnection(redis.Connection):
    """A connection that counts the requests it writes to Redis: one per round trip."""

    writes = 0
    scripts: ClassVar[list[tuple[Any, ...]]] = []  # every EVALSHA's arguments, in order

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.writes += 1
        super().send_packed_command(command, check_health)  # type: ignore[no-untyped-call]

    def send_command(self, *args: Any, **kwargs: Any) -> None:
        if str(args[0]).upper() == "EVALSHA":
            CountingConnection.scripts.append(args)
        super().send_command(*args, **kwargs)  # type: ignore[no-untyped-call]


def records_sent(since: int) -> int:
    """RECORDs among the scripts sent since index ``since``: their ARGV[2] is an outcome
    ("ok:…"), where an ADMIT's is a token (EVALSHA sha numkeys k1..k5 ARGV1 ARGV2 …)."""
    return sum(
        str(args[9]).startswith(("ok:", "fail:", "neutral:"))
        for args in CountingConnection.scripts[since:]
    )


@pytest.fixture
def counted(redis_url: str) -> Iterator[redis.Redis]:
    pool = redis.ConnectionPool.from_url(
        redis_url, connection_class=CountingConnection, decode_responses=True
    )
    client = redis.Redis(connection_pool=pool)
    yield client
    client.close()


def evalsha_calls(client: redis.Redis) -> int:
    stats = client.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("evalsha", "eval"))


def test_opens_after_exactly_fail_max_failures(r: redis.Redis, name: str) -> None:
    """Exactly fail_max failing calls reach the function; the next is rejected as circuit_open."""
    breaker = SharedCircuitBreaker(name, r, fail_max=3, reset_timeout=30.0)
    calls: list[int] = []

    def upstream() -> None:
        calls.append(1)
        boom()

    failing(breaker, 3, upstream)
    with pytest.raises(CircuitOpenError) as rejected:
        breaker.call(upstream)
    assert len(calls) == 3
    assert rejected.value.reason == "circuit_open"
    assert rejected.value.circuit == name
    assert 29.0 < (rejected.value.retry_after or 0) <= 30.0
    assert isinstance(rejected.value, pybreaker.CircuitBreakerError)


def test_rejections_while_open_cost_no_round_trip(
    counted: redis.Redis, r: redis.Redis, name: str
) -> None:
    """Once a process knows the deadline, 200 rejections make no Redis request at all."""
    breaker = SharedCircuitBreaker(name, counted, fail_max=2, reset_timeout=30.0)
    failing(breaker, 2)
    writes, server = CountingConnection.writes, evalsha_calls(r)
    for _ in range(200):
        with pytest.raises(CircuitOpenError):
            breaker.call(lambda: None)
    assert CountingConnection.writes - writes == 0
    assert evalsha_calls(r) - server == 0


def test_closed_successes_from_a_fresh_quiet_view_cost_no_round_trip(
    counted: redis.Redis, r: redis.Redis, name: str
) -> None:
    """After a first call (connect, ADMIT), 200 successes from a quiet view cost no EVALSHA."""
    breaker = SharedCircuitBreaker(name, counted, view_ttl_s=60.0)
    breaker.call(lambda: None)
    writes, server = CountingConnection.writes, evalsha_calls(r)
    for i in range(200):
        assert breaker.call(int, i) == i
    assert CountingConnection.writes - writes == 0
    assert evalsha_calls(r) - server == 0


def test_a_stale_view_costs_one_admit_per_view_ttl_not_one_per_call(
    counted: redis.Redis, r: redis.Redis, name: str
) -> None:
    """Three bursts of 50 successes, each once the view is stale: 3 ADMITs, no RECORD."""
    breaker = SharedCircuitBreaker(name, counted, view_ttl_s=0.2)
    breaker.call(lambda: None)
    writes, server = CountingConnection.writes, evalsha_calls(r)
    sent = len(CountingConnection.scripts)
    for _ in range(3):
        time.sleep(0.2)
        for i in range(50):
            assert breaker.call(int, i) == i
    assert CountingConnection.writes - writes == 3
    assert evalsha_calls(r) - server == 3
    assert len(CountingConnection.scripts) - sent == 3
    assert records_sent(sent) == 0


def test_a_success_after_a_failure_it_has_seen_is_recorded_and_resets_the_count(
    counted: redis.Redis, r: redis.Redis, name: str
) -> None:
    """With failures in the view, the next success costs ADMIT + RECORD and zeroes the count."""
    breaker = SharedCircuitBreaker(name, counted, fail_max=3, view_ttl_s=60.0)
    failing(breaker, 2)
    assert snapshot(r, name)["failure_count"] == 2
    server, sent = evalsha_calls(r), len(CountingConnection.scripts)
    assert breaker.call(lambda: 7) == 7
    assert snapshot(r, name)["failure_count"] == 0
    assert evalsha_calls(r) - server == 2  # the view was hot: ADMIT, then RECORD
    assert records_sent(sent) == 1
    for i in range(50):
        assert breaker.call(int, i) == i
    assert evalsha_calls(r) - server == 2
    failing(breaker, 2)
    assert snapshot(r, name)["state"] == "closed"  # the count restarted at 0


def test_a_success_resets_failures_elsewhere_only_once_its_view_shows_them(
    r: redis.Redis, name: str
) -> None:
    """Another process's failure survives this one's success until its view is refreshed."""
    here = SharedCircuitBreaker(name, r, fail_max=3, view_ttl_s=0.2)
    there = SharedCircuitBreaker(name, r, fail_max=3)
    here.call(lambda: None)
    failing(there, 1)
    here.call(lambda: None)
    assert snapshot(r, name)["failure_count"] == 1  # unseen: nothing to reset, as ``here`` knows
    time.sleep(0.2)
    here.call(lambda: None)  # the refresh shows the failure, so this success is recorded
    assert snapshot(r, name)["failure_count"] == 0


def test_a_success_ending_with_a_stale_view_is_recorded(
    counted: redis.Redis, r: redis.Redis, name: str
) -> None:
    """A call that outlives view_ttl_s records its success: failures made meanwhile reset."""
    here = SharedCircuitBreaker(name, counted, fail_max=3, view_ttl_s=0.1)
    there = SharedCircuitBreaker(name, r, fail_max=3)
    here.call(lambda: None)
    writes = CountingConnection.writes

    def slow() -> None:
        failing(there, 2)
        time.sleep(0.1)

    here.call(slow)  # admitted from the fresh view, no round trip
    assert CountingConnection.writes - writes == 1  # the RECORD
    assert snapshot(r, name)["failure_count"] == 0


def test_with_a_rate_window_every_success_is_recorded(
    counted: redis.Redis, r: redis.Redis, name: str
) -> None:
    """With window_s, each of 200 successes costs one EVALSHA and counts toward the rate."""
    breaker = SharedCircuitBreaker(
        name,
        counted,
        fail_max=100,
        window_s=5.0,
        failure_rate_threshold=0.5,
        min_calls=2,
        view_ttl_s=60.0,
    )
    breaker.call(lambda: None)
    writes, server = CountingConnection.writes, evalsha_calls(r)
    for i in range(200):
        assert breaker.call(int, i) == i
    assert CountingConnection.writes - writes == 200
    assert evalsha_calls(r) - server == 200
    failing(breaker, 2)
    assert snapshot(r, name)["state"] == "closed"  # 2 failures in 203 calls, not 2 in 2


def test_one_probe_among_eight_breakers_after_a_sub_second_window(
    r: redis.Redis, name: str
) -> None:
    """After a 0.1 s window, 8 racing breakers let one probe run; 7 get probe_in_flight."""
    breakers = [SharedCircuitBreaker(name, r, fail_max=1, reset_timeout=0.1) for _ in range(8)]
    failing(breakers[0], 1)
    time.sleep(0.15)
    entered: list[int] = []
    reasons: list[str] = []
    barrier = threading.Barrier(8)

    def probe() -> None:
        entered.append(1)
        time.sleep(0.2)

    def race(b: SharedCircuitBreaker) -> None:
        barrier.wait()
        try:
            b.call(probe)
        except CircuitOpenError as exc:
            reasons.append(exc.reason)

    threads = [threading.Thread(target=race, args=(b,)) for b in breakers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(entered) == 1
    assert reasons == ["probe_in_flight"] * 7
    assert snapshot(r, name)["state"] == "closed"


def test_failed_probe_reopens_for_a_longer_window(r: redis.Redis, name: str) -> None:
    """A failing probe reopens the circuit for twice the last window."""
    breaker = SharedCircuitBreaker(name, r, fail_max=1, reset_timeout=0.1)
    failing(breaker, 1)
    time.sleep(0.12)
    failing(breaker, 1)  # the probe
    with pytest.raises(CircuitOpenError) as rejected:
        breaker.call(lambda: None)
    assert 0.15 < (rejected.value.retry_after or 0) <= 0.2
    assert snapshot(r, name)["transitions"]["opened"] == 2


def test_retry_after_of_the_failure_sets_the_window(r: redis.Redis, name: str) -> None:
    """A 429 carrying retry_after=5 keeps the circuit open about 5 s, not reset_timeout."""
    breaker = SharedCircuitBreaker(name, r, fail_max=1, reset_timeout=0.5)

    def limited() -> None:
        raise UpstreamRateLimited("429", status=429, retry_after=5.0)

    with pytest.raises(UpstreamRateLimited):
        breaker.call(limited)
    assert 4.5 < snapshot(r, name)["retry_after"] <= 5.0


def test_excluded_and_client_errors_neither_count_nor_reset(r: redis.Redis, name: str) -> None:
    """ValueError, TypeError and an excluded UpstreamRejected leave the failure count as it was."""
    breaker = SharedCircuitBreaker(name, r, fail_max=3, exclude=[UpstreamRejected])
    failing(breaker, 2)
    for exc in (ValueError("bad"), TypeError("bad"), UpstreamRejected("400", status=400)):

        def raise_it(exc: Exception = exc) -> None:
            raise exc

        with pytest.raises(type(exc)):
            breaker.call(raise_it)
    assert snapshot(r, name)["failure_count"] == 2
    failing(breaker, 1)
    assert snapshot(r, name)["state"] == "open"


def test_outcomes_admitted_before_a_transition_are_ignored(r: redis.Redis, name: str) -> None:
    """A failure and a success admitted in an older generation change nothing."""
    slow_fail, slow_ok = SharedCircuitBreaker(name, r, fail_max=2), SharedCircuitBreaker(name, r)
    fast = SharedCircuitBreaker(name, r, fail_max=2)
    stale_fail, stale_ok = slow_fail.calling(), slow_ok.calling()
    stale_fail.__enter__()
    stale_ok.__enter__()
    failing(fast, 2)
    reset(r, name, 60.0)
    failing(SharedCircuitBreaker(name, r), 1)  # ``fast`` still rejects from its cached view
    assert stale_fail.__exit__(RuntimeError, RuntimeError("late"), None) is False
    stale_ok.__exit__(None, None, None)
    assert snapshot(r, name)["failure_count"] == 1
    assert snapshot(r, name)["state"] == "closed"


def test_a_dead_probe_frees_the_circuit_when_its_lease_expires(r: redis.Redis, name: str) -> None:
    """A probe that never reports blocks others only until probe_lease_s passes."""
    breaker = SharedCircuitBreaker(name, r, fail_max=1, reset_timeout=0.05, probe_lease_s=0.2)
    failing(breaker, 1)
    time.sleep(0.06)
    probe = breaker.calling()
    probe.__enter__()  # the probe's process "dies" here: it never reports
    with pytest.raises(CircuitOpenError, match="testing"):
        SharedCircuitBreaker(name, r).call(lambda: None)
    time.sleep(0.22)
    assert SharedCircuitBreaker(name, r).call(lambda: 42) == 42
    assert snapshot(r, name)["state"] == "closed"


def test_failure_rate_and_slow_calls_trip_through_the_script(r: redis.Redis, name: str) -> None:
    """Two failures in four calls trip a 50 % rate window; a slow success counts as a failure."""
    breaker = SharedCircuitBreaker(
        name,
        r,
        fail_max=100,
        window_s=5.0,
        failure_rate_threshold=0.5,
        min_calls=4,
        slow_call_s=0.05,
    )
    breaker.call(lambda: None)
    failing(breaker, 1)
    breaker.call(lambda: None)
    assert snapshot(r, name)["state"] == "closed"
    breaker.call(time.sleep, 0.06)
    report = snapshot(r, name)
    assert report["state"] == "open"
    assert report["last_failure"].startswith("SlowCall: call took")


def test_no_lock_is_held_across_the_call(r: redis.Redis, name: str) -> None:
    """8 threads sleeping 0.2 s through one breaker finish in well under 0.6 s."""
    breaker = SharedCircuitBreaker(name, r)
    breaker.call(lambda: None)
    barrier = threading.Barrier(8)

    def work() -> None:
        barrier.wait()
        breaker.call(time.sleep, 0.2)

    threads = [threading.Thread(target=work) for _ in range(8)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert time.monotonic() - started < 0.6


def test_recheck_keeps_a_permit_from_a_fresh_quiet_view_without_a_round_trip(
    counted: redis.Redis, r: redis.Redis, name: str
) -> None:
    """After a slot wait, a closed quiet view of the permit's generation costs nothing."""
    breaker = SharedCircuitBreaker(name, counted, view_ttl_s=60.0)
    permit = breaker.admit()
    server = evalsha_calls(r)
    assert breaker.recheck(permit) is permit
    assert evalsha_calls(r) - server == 0
    breaker.cancel(permit)


def test_recheck_refuses_a_permit_whose_circuit_opened_during_the_wait(
    r: redis.Redis, name: str
) -> None:
    """A permit taken before the circuit opened elsewhere is refused once the view is stale."""
    here = SharedCircuitBreaker(name, r, fail_max=2, reset_timeout=30.0, view_ttl_s=0.1)
    elsewhere = SharedCircuitBreaker(name, r, fail_max=2, reset_timeout=30.0)
    permit = here.admit()
    failing(elsewhere, 2)
    time.sleep(0.1)
    with pytest.raises(CircuitOpenError) as info:
        here.recheck(permit)
    assert info.value.reason == "circuit_open"
    assert 29.0 < info.value.retry_after <= 30.0
    assert info.value.retry_after == round(info.value.retry_after, 3)


def test_recheck_leaves_the_probe_its_lease(r: redis.Redis, name: str) -> None:
    """The probe's permit stays the probe through a recheck, and its success closes."""
    breaker = SharedCircuitBreaker(name, r, fail_max=1, reset_timeout=0.05)
    failing(breaker, 1)
    time.sleep(0.06)
    probe = breaker.admit()
    assert probe.token
    assert breaker.recheck(probe) is probe
    with breaker.guard(probe):
        pass
    assert snapshot(r, name)["state"] == "closed"
