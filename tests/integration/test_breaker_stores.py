"""The Redis store (Lua scripts) and the in-process store, given the same calls, decide alike.

Both stores read one ``ManualClock`` (it replaces Redis ``TIME`` inside the scripts), so
every step reaches them at the same circuit time. Two times in Redis still run on the real
clock, and the drawn options keep both far above the run time of an example, so they never
act: the probe lease key's ``PX`` (``probe_lease_s`` of 30 s or more) and the rate buckets'
``PEXPIRE`` (``window_s`` plus a tenth, 2 s or more). The lease's own expiry, the one that
decides, is on the shared clock and does run out within a sequence.

Probe tokens are any text, not only the hex the breaker uses (``secrets.token_hex``).

Most outcomes settle a call admitted earlier in the sequence, as a breaker would send it
(its generation, and its token if it was the probe); the rest carry a drawn generation and
token, so outcomes of older generations, of no generation and of wrong tokens are replayed
too. Forced states cannot be reached in the in-process store (only ``seed`` sets them);
the last test covers them.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import pytest
import redis
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from core.circuits import CircuitState, force_closed, force_open
from worker.breaker.codes import OutcomeKind, Transition, Verdict
from worker.breaker.local_store import LocalStore
from worker.breaker.redis_store import RedisStore
from worker.breaker.rules import Options, Outcome, Reply
from worker.testing import ManualClock

pytestmark = pytest.mark.integration

TOKENS = ("a1", "p1", "q:2")
"""The probe tokens admissions hold; "dead" is never admitted."""


@dataclass(frozen=True)
class Admit:
    token: str


@dataclass(frozen=True)
class Peek:
    pass


@dataclass(frozen=True)
class Record:
    """An outcome, of a call resolved when the step runs: "permit", an admitted call not yet
    settled, sent as the breaker would (its generation and probe token; the ``back``-th
    newest, the newest if fewer); otherwise the generation ("older": ``back`` before the
    current one, at least 0; "none": the current one) with ``token`` ("probe": the last
    probe's)."""

    of: Literal["permit", "current", "older", "none"]
    back: int
    token: Literal["", "probe", "dead", "a1", "p1", "q:2"]
    kind: OutcomeKind
    retry_ms: int


@dataclass(frozen=True)
class Advance:
    seconds: float


Step = Admit | Peek | Record | Advance


@st.composite
def options(draw: st.DrawFn) -> Options:
    """Options small enough that a sequence of 40 steps opens, probes and closes."""
    reset = draw(st.sampled_from([0.5, 1.0, 2.5]))
    window_s: float | None = None
    threshold: float | None = None
    min_calls = 10
    if draw(st.booleans()):
        window_s = draw(st.sampled_from([2.0, 5.0, 10.0]))
        threshold = draw(st.sampled_from([0.25, 0.5, 1.0]))
        min_calls = draw(st.integers(1, 4))
    return Options(
        fail_max=draw(st.integers(1, 4)),
        reset_timeout=reset,
        success_threshold=draw(st.integers(1, 2)),
        probe_lease_s=draw(st.sampled_from([30.0, 45.0, 60.0])),
        max_reset_timeout=reset * draw(st.sampled_from([1, 2, 4])),
        window_s=window_s,
        failure_rate_threshold=threshold,
        min_calls=min_calls,
    )


OK, FAIL, NEUTRAL = OutcomeKind.OK, OutcomeKind.FAIL, OutcomeKind.NEUTRAL
MIXES = ((OK, FAIL, NEUTRAL), (OK, OK, FAIL, NEUTRAL), (OK, FAIL, FAIL), (OK, FAIL, FAIL, FAIL))
"""Outcome mixes, one per example: a failing upstream opens the circuit, a healthier one
lets probes close it."""

admits = st.builds(Admit, st.sampled_from(TOKENS))
advances = st.builds(
    Advance, st.one_of(st.sampled_from([0.001, 0.5, 1.0, 2.5, 5.0]), st.floats(0.001, 5.0))
)


@st.composite
def sequences(draw: st.DrawFn) -> list[Step]:
    """Up to 40 steps; outcomes weigh most (they move the circuit), then admissions."""
    records = st.builds(
        Record,
        st.sampled_from(["permit", "permit", "permit", "current", "older", "none"]),
        st.sampled_from([1, 1, 1, 2, 3]),
        st.sampled_from(["", "", "", "probe", "probe", "dead", *TOKENS]),
        st.sampled_from(draw(st.sampled_from(MIXES))),
        st.sampled_from([0, 0, 700, 3000]),
    )
    steps = st.one_of(
        records, records, records, admits, admits, advances, advances, st.just(Peek())
    )
    return draw(st.lists(steps, min_size=20, max_size=40))


def _outcome(step: Record) -> Outcome:
    if step.kind is OutcomeKind.FAIL:
        return Outcome(step.kind, retry_ms=step.retry_ms, text="UpstreamUnavailable: 503")
    return Outcome(step.kind)


# `r` is function-scoped but only a client: each example uses a circuit name of its own.
@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(opts=options(), sequence=sequences())
@example(  # every transition at least once: fail_max, probe failed, two probes close, rate
    opts=Options(2, 1.0, 2, 30.0, 4.0, window_s=2.0, failure_rate_threshold=0.5, min_calls=4),
    sequence=[
        *[Admit("a1"), Record("permit", 1, "", FAIL, 0)] * 2,
        Admit("b2"),
        Advance(1.0),
        Admit("a1"),
        Admit("b2"),
        Record("permit", 1, "", FAIL, 3000),
        Advance(3.0),
        *[Admit("c3"), Record("permit", 1, "", OK, 0)] * 2,
        Record("older", 1, "dead", FAIL, 0),
        *[Record("current", 1, "", kind, 0) for kind in (OK, FAIL, OK, FAIL)],
    ],
)
def test_redis_and_local_stores_decide_alike(
    r: redis.Redis, opts: Options, sequence: list[Step]
) -> None:
    """Any sequence of admissions, peeks, outcomes and clock steps gets the same replies
    from the Lua scripts as from the in-process store."""
    clock = ManualClock()
    remote = RedisStore(r, f"stores-{uuid.uuid4().hex[:12]}", opts, clock=clock)
    local = LocalStore(opts, clock)
    gen, probe = 0, ""  # the circuit's generation and last probe token, as replies tell
    permits: list[tuple[int, str]] = []  # admitted calls not yet settled: (gen, probe token)
    for i, step in enumerate(sequence):
        if isinstance(step, Advance):
            clock.advance(step.seconds)
            continue
        pair: tuple[Reply, Reply]
        if isinstance(step, Admit):
            pair = remote.admit(step.token), local.admit(step.token)
        elif isinstance(step, Peek):
            pair = remote.peek(), local.peek()
        else:
            admitted: int | None = gen
            token = probe if step.token == "probe" else step.token
            if step.of == "permit":
                settled = permits.pop(max(0, len(permits) - step.back)) if permits else (gen, "")
                admitted, token = settled
            elif step.of != "current":
                admitted = max(0, gen - step.back) if step.of == "older" else None
            outcome = _outcome(step)
            pair = remote.record(admitted, token, outcome), local.record(admitted, token, outcome)
        on_redis, in_memory = pair
        assert on_redis.decisions() == in_memory.decisions(), (
            f"step {i}: {step}\n  redis: {on_redis}\n  local: {in_memory}"
        )
        event(f"{on_redis.code.name} after {on_redis.verdict.name}")
        if on_redis.transition is not Transition.NONE:
            event(f"transition {on_redis.transition.name}")
        gen = on_redis.gen
        if isinstance(step, Admit) and on_redis.verdict in (Verdict.ADMIT, Verdict.PROBE):
            held = step.token if on_redis.verdict is Verdict.PROBE else ""
            probe = held or probe
            permits.append((gen, held))


def _meaning(reply: Reply) -> tuple[object, ...]:
    """What a seeded store must keep of a reply: everything but the generation (a seeded
    store counts its own)."""
    return (*reply.decisions()[:1], *reply.decisions()[2:])


@pytest.mark.parametrize(
    ("force", "code", "verdict"),
    [
        (force_open, CircuitState.FORCED_OPEN, Verdict.REJECT_FORCED),
        (force_closed, CircuitState.FORCED_CLOSED, Verdict.ADMIT),
    ],
)
def test_forced_states_read_back_with_their_codes(
    r: redis.Redis,
    name: str,
    force: Callable[[redis.Redis, str, float], int],
    code: CircuitState,
    verdict: Verdict,
) -> None:
    """An operator-forced circuit reads back through the Lua scripts with its injected codes
    (forced open rejects for reset_timeout; outcomes count for nothing), and a LocalStore
    seeded from that reply decides alike."""
    opts = Options(fail_max=1, reset_timeout=1.5, probe_lease_s=30.0)
    clock = ManualClock()
    remote = RedisStore(r, name, opts, clock=clock)
    gen = force(r, name, opts.reset_timeout)
    seen = remote.peek()
    assert (seen.code, seen.gen, seen.verdict) == (code, gen, Verdict.ADMIT)
    assert seen.until_ms == (seen.now_ms + opts.reset_ms if code is CircuitState.FORCED_OPEN else 0)
    local = LocalStore(opts, clock)
    local.seed(seen)
    admitted = remote.admit("a1")
    expected_retry = opts.reset_ms if verdict is Verdict.REJECT_FORCED else 0
    assert (admitted.code, admitted.verdict, admitted.retry_ms) == (code, verdict, expected_retry)
    assert admitted.transition is Transition.NONE
    assert _meaning(admitted) == _meaning(local.admit("a1"))
    failed = Outcome(OutcomeKind.FAIL, text="UpstreamUnavailable: 503")
    for _ in range(2):
        clock.advance(2.0)  # past the reset timeout: a forced state does not expire
        on_redis, in_memory = remote.record(gen, "", failed), local.record(None, "", failed)
        assert (on_redis.code, on_redis.gen, on_redis.fails) == (code, gen, 0)
        assert on_redis.transition is Transition.NONE
        assert _meaning(on_redis) == _meaning(in_memory)
        assert _meaning(remote.admit("b2")) == _meaning(local.admit("b2"))
