"""The breaker's rules that need no store: options, what a call counts as, replies.

``classify`` decides what a finished call counts as; a ``Reply`` is a circuit as a
store left it, and tells a process what it may decide alone until it asks again.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from core.circuits import KEY_TTL_MS, CircuitState
from core.contract import RefusalReason
from core.errors import CircuitOpenError
from worker.breaker.codes import OutcomeKind, Transition, Verdict

__all__ = [
    "Exclusion",
    "Options",
    "Outcome",
    "Reply",
    "SlowCall",
    "classify",
    "is_failure",
    "rejection",
]

BUCKETS = 10
"""A rate window is kept as 10 buckets, so it slides in tenths."""

Exclusion = type[BaseException] | Callable[[BaseException], bool]
"""As pybreaker's ``exclude``: an exception type, or a predicate on the exception."""

_REJECTIONS: dict[Verdict, tuple[RefusalReason, str]] = {  # verdict -> (reason, message)
    Verdict.REJECT_OPEN: ("circuit_open", "is open after repeated upstream failures"),
    Verdict.REJECT_FORCED: ("circuit_forced_open", "was forced open by an operator"),
    Verdict.REJECT_PROBE: ("probe_in_flight", "is testing the upstream with one probe call"),
}


def _check(name: str, value: object, *, integer: bool = False, optional: bool = False) -> None:
    if value is None and optional:
        return
    kinds = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value):
        kind = "an integer" if integer else "a number"
        raise ValueError(f"{name} must be {kind}, got {value!r}")
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
    reset_ms: int = field(init=False)  # the times the stores use, in ms, derived below
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
            raise ValueError("reset_timeout must be at least 0.001 s (circuits count in ms)")
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


def rejection(circuit: str, verdict: Verdict, retry_after: float) -> CircuitOpenError:
    """The error a caller gets instead of the call: what happened and when to come back."""
    reason, what = _REJECTIONS[verdict]
    retry_after = round(retry_after, 3)  # circuits count in ms
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

    kind: OutcomeKind
    error: BaseException | None = None  # the failure, for listeners
    retry_ms: int = 0  # the upstream's own retry_after, lengthening the open window
    text: str = ""  # "Type: message" (200 chars), stored as the last failure


SUCCESS, IGNORED = Outcome(OutcomeKind.OK), Outcome(OutcomeKind.NEUTRAL)


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
    return Outcome(OutcomeKind.FAIL, exc, retry_ms, f"{type(exc).__name__}: {str(exc)[:200]}")


class Reply(NamedTuple):  # a tuple: built on every call, and cheaper than a dataclass
    """A circuit as a store left it, and the store's verdict on the call that asked."""

    code: CircuitState
    gen: int
    fails: int
    until_ms: int  # open: when the next probe may go, in the circuit's clock
    now_ms: int  # the circuit's clock when it answered
    hot: bool  # a failure is recent: admission must ask, not trust this reply
    verdict: Verdict
    retry_ms: int
    transition: Transition
    seen_at: float  # the breaker's clock (seconds) when this process got it

    @classmethod
    def parse(cls, packed: str | bytes, seen_at: float) -> Reply:
        """A reply from a script's nine integers, packed in one string (cheaper to read)."""
        text = packed.decode() if isinstance(packed, bytes) else packed
        n = [int(v) for v in text.split(":")]
        state, verdict, moved = CircuitState(n[0]), Verdict(n[6]), Transition(n[8])
        return cls(state, n[1], n[2], n[3], n[4], bool(n[5]), verdict, n[7], moved, seen_at)

    def decisions(self) -> tuple[int, ...]:
        """Everything but when it was seen: what two stores given the same calls agree on."""
        return tuple(self[:-1])

    def cached_verdict(
        self, ttl_s: float, open_ttl_s: float, now: float
    ) -> tuple[Verdict, float] | None:
        """(ADMIT or REJECT_*, seconds left) this reply alone allows at ``now`` (the
        breaker's clock); None: ask the store. It admits while younger than ``ttl_s``
        and rejects while younger than ``open_ttl_s`` (and the window it knows lasts):
        past those, an operator may have changed the circuit since."""
        age = now - self.seen_at
        closed = self.code is CircuitState.CLOSED and not self.hot
        if age < ttl_s and (self.code is CircuitState.FORCED_CLOSED or closed):
            return Verdict.ADMIT, 0.0
        if age >= open_ttl_s:
            return None
        left_ms = self.until_ms - (self.now_ms + age * 1000)
        if left_ms > 0 and self.code is CircuitState.OPEN:
            return Verdict.REJECT_OPEN, left_ms / 1000
        if left_ms > 0 and self.code is CircuitState.FORCED_OPEN:
            return Verdict.REJECT_FORCED, left_ms / 1000
        return None

    def quiet(self, gen: int, ttl_s: float, now: float) -> bool:
        """Fresh, closed in ``gen`` and without failures: a success has nothing to reset."""
        fresh = now - self.seen_at < ttl_s
        return fresh and self.code is CircuitState.CLOSED and self.gen == gen and not self.fails
