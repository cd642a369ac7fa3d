"""The breaker's rules without Redis: options, outcomes, replies, an in-memory circuit.

``LocalBreaker`` applies the rules of the Lua scripts in ``_breaker_scripts`` to one
process's memory, for when Redis is unreachable and for unit tests. Both answer with a
``Reply``; ``classify`` decides what a finished call counts as.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from pybreaker import CircuitClosedState, CircuitHalfOpenState, CircuitOpenState

from core.errors import CircuitOpenError

__all__ = ["LocalBreaker", "Options", "Outcome", "Reply", "SlowCall", "classify", "rejection"]

# Circuit codes, shared with the Lua scripts (the state hash's ``code``).
CLOSED, OPEN, HALF_OPEN, FORCED_OPEN, FORCED_CLOSED = 0, 1, 2, 3, 4
STATE_NAMES = ("closed", "open", "half-open", "forced_open", "forced_closed")
PYBREAKER_NAMES = ("closed", "open", "half-open", "open", "closed")  # current_state's
# Verdicts of an admission; RECORDED answers a recorded outcome.
ADMIT, PROBE, REJECT_OPEN, REJECT_FORCED, REJECT_PROBE, RECORDED = 0, 1, 2, 3, 4, -1
REJECTIONS = {  # verdict -> (CircuitOpenError.reason, message)
    REJECT_OPEN: ("circuit_open", "is open after repeated upstream failures"),
    REJECT_FORCED: ("circuit_forced_open", "was forced open by an operator"),
    REJECT_PROBE: ("probe_in_flight", "is testing the upstream with one probe call"),
}
# Transitions a script can make: code -> (event, reason, pybreaker states before, after).
T_FAIL_MAX, T_RATE, T_PROBE_FAILED, T_HALF_OPEN, T_CLOSED = 1, 2, 3, 4, 5
TRANSITIONS = {
    T_FAIL_MAX: ("opened", "fail_max", CircuitClosedState, CircuitOpenState),
    T_RATE: ("opened", "failure_rate", CircuitClosedState, CircuitOpenState),
    T_PROBE_FAILED: ("opened", "probe_failed", CircuitHalfOpenState, CircuitOpenState),
    T_HALF_OPEN: ("half_open", "reset_timeout", CircuitOpenState, CircuitHalfOpenState),
    T_CLOSED: ("closed", "probe_succeeded", CircuitHalfOpenState, CircuitClosedState),
}
OK, FAIL, NEUTRAL = "ok", "fail", "neutral"
KEY_TTL_MS = 86_400_000  # idle circuits vanish after a day (every write refreshes it)
BUCKETS = 10  # a rate window is kept as 10 buckets, so it slides in tenths
Exclusion = type[BaseException] | Callable[[BaseException], bool]  # as pybreaker's exclude


def _check(name: str, value: object, *, integer: bool = False, optional: bool = False) -> None:
    if value is None and optional:
        return
    kinds = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value):
        raise ValueError(f"{name} must be {'an integer' if integer else 'a number'}, got {value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")


@dataclass(frozen=True, slots=True)
class Options:
    """A breaker's tuning, validated; see ``SharedCircuitBreaker`` for each field."""

    fail_max: int = 5
    reset_timeout: float = 60.0
    success_threshold: int = 1
    probe_lease_s: float = 60.0
    max_reset_timeout: float = 600.0
    window_s: float | None = None
    failure_rate_threshold: float | None = None
    min_calls: int = 10
    slow_call_s: float | None = None
    reset_ms: int = field(init=False)  # the times the scripts use, in ms, derived below
    max_ms: int = field(init=False)
    lease_ms: int = field(init=False)
    window_ms: int = field(init=False)  # 0: no failure-rate rule

    def __post_init__(self) -> None:
        for name in ("fail_max", "success_threshold", "min_calls"):
            _check(name, getattr(self, name), integer=True)
        for name in ("reset_timeout", "probe_lease_s", "max_reset_timeout"):
            _check(name, getattr(self, name))
        for name in ("window_s", "failure_rate_threshold", "slow_call_s"):
            _check(name, getattr(self, name), optional=True)
        if self.reset_timeout < 0.001:
            raise ValueError("reset_timeout must be at least 0.001 s (the scripts count in ms)")
        if self.max_reset_timeout < self.reset_timeout:
            raise ValueError("max_reset_timeout must be >= reset_timeout")
        if (self.window_s is None) != (self.failure_rate_threshold is None):
            raise ValueError("window_s and failure_rate_threshold must be given together")
        if (self.failure_rate_threshold or 0) > 1:
            raise ValueError("failure_rate_threshold is a fraction in (0, 1]")
        seconds = (self.reset_timeout, self.max_reset_timeout, self.probe_lease_s)
        for name, value in zip(("reset_ms", "max_ms", "lease_ms"), seconds, strict=True):
            object.__setattr__(self, name, max(1, round(value * 1000)))  # frozen: set once
        window = 0 if self.window_s is None else max(BUCKETS, round(self.window_s * 1000))
        object.__setattr__(self, "window_ms", window)

    @property
    def ttl_ms(self) -> int:
        """Expiry of idle keys: a day, or longer than any window the circuit uses."""
        return max(KEY_TTL_MS, 2 * max(self.max_ms, self.lease_ms, self.window_ms))


def rejection(circuit: str, verdict: int, retry_after: float) -> CircuitOpenError:
    """The error a caller gets instead of the call: what happened and when to come back."""
    reason, what = REJECTIONS[verdict]
    message = f"circuit {circuit!r} {what}; retry in {retry_after:.1f} s"
    return CircuitOpenError(message, circuit=circuit, reason=reason, retry_after=retry_after)


class SlowCall(Exception):
    """Given to ``failure`` listeners when a call succeeded but took over ``slow_call_s``."""


def is_failure(exc: BaseException, exclude: Iterable[Exclusion]) -> bool:
    """Whether ``exc`` counts: any ``Exception`` but ValueError, TypeError and ``exclude``."""
    if not isinstance(exc, Exception) or isinstance(exc, ValueError | TypeError):
        return False
    return not any(isinstance(exc, r) if isinstance(r, type) else r(exc) for r in exclude)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a finished call counts as, and what a failure tells the circuit."""

    kind: str  # OK | FAIL | NEUTRAL
    error: BaseException | None = None  # the failure, for listeners
    retry_ms: int = 0  # the upstream's own retry_after, lengthening the open window
    text: str = ""  # "Type: message" (200 chars), stored as the last failure


SUCCESS, IGNORED = Outcome(OK), Outcome(NEUTRAL)  # shared: classify runs on every call


def classify(
    exc: BaseException | None, elapsed: float, options: Options, exclude: Iterable[Exclusion]
) -> Outcome:
    """The outcome of a call that raised ``exc`` (None: returned) after ``elapsed`` s."""
    slow = options.slow_call_s
    if exc is None and slow is not None and elapsed > slow:
        exc = SlowCall(f"call took {elapsed:.3f} s, over slow_call_s={slow}")
    if exc is None:
        return SUCCESS
    if not is_failure(exc, exclude):
        return IGNORED
    hint, retry_ms = getattr(exc, "retry_after", None), 0
    if isinstance(hint, int | float) and not isinstance(hint, bool) and hint > 0:
        retry_ms = int(min(hint * 1000, options.max_ms))  # NaN fails "> 0"; inf is capped
    return Outcome(FAIL, exc, retry_ms, f"{type(exc).__name__}: {str(exc)[:200]}")


class Reply(NamedTuple):  # a tuple: built on every call, and cheaper than a dataclass
    """The circuit as a script (or the local breaker) left it, and its verdict."""

    code: int
    gen: int
    fails: int
    until_ms: int  # open: when the next probe may go, in the circuit's clock
    now_ms: int  # the circuit's clock when it answered (Redis TIME without test offset)
    hot: bool  # a failure is recent: admission must ask, not trust this reply
    verdict: int
    retry_ms: int
    transition: int
    seen_at: float  # time.monotonic() when this process got it

    @classmethod
    def parse(cls, packed: str | bytes) -> Reply:
        """A reply from a script's nine integers, packed in one string (cheaper to read)."""
        n = [int(v) for v in (packed.decode() if isinstance(packed, bytes) else packed).split(":")]
        return cls(n[0], n[1], n[2], n[3], n[4], bool(n[5]), n[6], n[7], n[8], time.monotonic())

    def cached_verdict(self, ttl_s: float, offset_ms: int) -> tuple[int, float] | None:
        """(ADMIT or REJECT_*, seconds left) this reply alone allows; None: ask Redis."""
        age = time.monotonic() - self.seen_at
        if age < ttl_s and (self.code == FORCED_CLOSED or (self.code == CLOSED and not self.hot)):
            return ADMIT, 0.0
        left_ms = self.until_ms - (self.now_ms + offset_ms + age * 1000)
        if self.code in (OPEN, FORCED_OPEN) and left_ms > 0:
            return (REJECT_OPEN if self.code == OPEN else REJECT_FORCED), left_ms / 1000
        return None

    def quiet(self, gen: int, ttl_s: float) -> bool:
        """Fresh, closed in ``gen`` and without failures: a success there has nothing to reset."""
        fresh = time.monotonic() - self.seen_at < ttl_s
        return fresh and self.code == CLOSED and self.gen == gen and not self.fails


class LocalBreaker:
    """One circuit in this process's memory, under the same rules as the Lua scripts."""

    def __init__(self, options: Options, clock: Callable[[], float] = time.monotonic) -> None:
        self.options, self._clock = options, clock
        self._lock = threading.Lock()  # held for bookkeeping only, never across a call
        self.code = self.gen = self.fails = 0
        self._until = self._window = self._lastfail = self._probe_ok = 0
        self._lease: tuple[str, int] | None = None  # (token, expiry) of the probe
        self._buckets: dict[int, list[int]] = {}  # rate window: bucket -> [calls, failures]

    def seed(self, view: Reply | None) -> None:
        """Start afresh from ``view`` (the last Redis reply), so an open circuit stays open."""
        view = view or Reply(CLOSED, 0, 0, 0, 0, False, ADMIT, 0, 0, 0.0)
        with self._lock:
            self.fails, left = view.fails, max(0, view.until_ms - view.now_ms)
            self._move(OPEN if view.code == HALF_OPEN else view.code, 0)
            self._until, self._window, self._lease = self._now() + left, left, None

    def admit(self, token: str) -> Reply:
        """Admit a call, make it the probe (holding ``token``), or reject it."""
        with self._lock:
            now, opts = self._now(), self.options
            if self.code in (CLOSED, FORCED_CLOSED):
                return self._reply(now, ADMIT)
            if self.code == FORCED_OPEN:
                return self._reply(now, REJECT_FORCED, opts.reset_ms)
            moved = 0
            if self.code == OPEN:
                if now < self._until:
                    return self._reply(now, REJECT_OPEN, self._until - now)
                moved = self._move(HALF_OPEN, T_HALF_OPEN)
            if self._lease is None or self._lease[1] <= now:
                self._lease = (token, now + opts.lease_ms)
                return self._reply(now, PROBE, 0, moved)
            left = min(self._lease[1] - now, max(self._window, opts.reset_ms))
            return self._reply(now, REJECT_PROBE, max(0, left), moved)

    def record(self, outcome: str, gen: int | None, token: str, retry_ms: int) -> Reply:
        """Count one outcome; ``gen=None`` (a call Redis admitted) counts if closed."""
        with self._lock:
            now, moved = self._now(), 0
            if gen is not None and gen != self.gen:
                pass  # admitted before the last transition: ignored
            elif self.code == HALF_OPEN and self._holds_lease(token, now):
                moved = self._settle_probe(now, outcome, retry_ms)
            elif self.code == CLOSED and not token and outcome != NEUTRAL:
                moved = self._count(now, outcome == FAIL, retry_ms)
            return self._reply(now, RECORDED, 0, moved)

    def _holds_lease(self, token: str, now: int) -> bool:
        # An expired lease may already belong to another probe, as its Redis key would.
        lease = self._lease
        return bool(token) and lease is not None and lease[0] == token and lease[1] > now

    def _settle_probe(self, now: int, outcome: str, retry_ms: int) -> int:
        self._lease = None
        if outcome == OK:
            self._probe_ok += 1
            return self._close() if self._probe_ok >= self.options.success_threshold else 0
        if outcome == FAIL:
            window = max(self._window * 2, self.options.reset_ms, retry_ms)
            return self._open(now, window, T_PROBE_FAILED)
        return 0

    def _count(self, now: int, failed: bool, retry_ms: int) -> int:
        rate_tripped = self._tally(now, failed=failed)
        if not failed:  # a success never trips, whatever the rate
            self.fails = 0
            return 0
        self.fails, self._lastfail = self.fails + 1, now
        window = max(self.options.reset_ms, retry_ms)
        if self.fails >= self.options.fail_max:
            return self._open(now, window, T_FAIL_MAX)
        return self._open(now, window, T_RATE) if rate_tripped else 0

    def _move(self, code: int, why: int) -> int:
        self.code, self.gen, self._probe_ok, self._buckets = code, self.gen + 1, 0, {}
        return why

    def _open(self, now: int, window: int, why: int) -> int:
        self._window = min(self.options.max_ms, window)
        self._until, self._lease = now + self._window, None
        return self._move(OPEN, why)

    def _close(self) -> int:
        self.fails = self._until = self._window = self._lastfail = 0
        return self._move(CLOSED, T_CLOSED)

    def _tally(self, now: int, *, failed: bool) -> bool:
        """Count a call in the rate window; True when the failure rate trips the circuit."""
        window = self.options.window_ms
        if not window:
            return False
        bucket = now // max(1, window // BUCKETS)
        counts = self._buckets.setdefault(bucket, [0, 0])
        counts[0], counts[1] = counts[0] + 1, counts[1] + int(failed)
        for old in [b for b in self._buckets if b <= bucket - BUCKETS]:
            del self._buckets[old]
        calls, fails = map(sum, zip(*self._buckets.values(), strict=True))
        rate = self.options.failure_rate_threshold or 1.0
        return calls >= self.options.min_calls and fails / calls >= rate

    def _now(self) -> int:
        return int(self._clock() * 1000)

    def _reply(self, now: int, verdict: int, retry_ms: int = 0, moved: int = 0) -> Reply:
        window, last = self.options.window_ms, self._lastfail
        hot = self.fails > 0 or (window > 0 and last > 0 and now - last < window)
        until = now + self.options.reset_ms if self.code == FORCED_OPEN else self._until
        state = (self.code, self.gen, self.fails, until, now, hot)
        return Reply(*state, verdict, retry_ms, moved, time.monotonic())
