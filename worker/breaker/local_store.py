"""One circuit in this process's memory, under the rules of the Lua scripts.

The breaker falls back to it while Redis is unreachable (seeded from the last Redis
reply, so an open circuit stays open), and unit tests drive it with a hand-moved clock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from core.circuits import CircuitState
from worker.breaker.codes import OutcomeKind, Transition, Verdict
from worker.breaker.rules import BUCKETS, Options, Outcome, Reply

__all__ = ["LocalStore"]

NEUTRAL = OutcomeKind.NEUTRAL

_FRESH = Reply(CircuitState.CLOSED, 0, 0, 0, 0, False, Verdict.ADMIT, 0, Transition.NONE, 0.0)


class LocalStore:
    """A circuit in memory; ``clock`` gives seconds (monotonic by default)."""

    def __init__(self, options: Options, clock: Callable[[], float] = time.monotonic) -> None:
        self.options, self._clock = options, clock
        self._lock = threading.Lock()  # held for bookkeeping only, never across a call
        self.code, self.gen, self.fails = CircuitState.CLOSED, 0, 0
        self._until = self._window = self._lastfail = self._probe_ok = 0
        self._lease: tuple[str, int] | None = None  # (token, expiry) of the probe
        self._buckets: dict[int, list[int]] = {}  # rate window: bucket -> [calls, failures]

    def seed(self, view: Reply | None) -> None:
        """Start afresh from ``view`` (the last Redis reply), so an open circuit stays open."""
        view = view or _FRESH
        with self._lock:
            self.fails, left = view.fails, max(0, view.until_ms - view.now_ms)
            half_open = view.code is CircuitState.HALF_OPEN
            self._move(CircuitState.OPEN if half_open else view.code)
            self._until = self._now() + left if left else 0
            self._window, self._lease = left, None

    def peek(self) -> Reply:
        with self._lock:
            return self._reply(self._now(), Verdict.ADMIT)

    def admit(self, token: str) -> Reply:
        with self._lock:
            now, opts = self._now(), self.options
            if self.code in (CircuitState.CLOSED, CircuitState.FORCED_CLOSED):
                return self._reply(now, Verdict.ADMIT)
            if self.code is CircuitState.FORCED_OPEN:
                return self._reply(now, Verdict.REJECT_FORCED, opts.reset_ms)
            moved = Transition.NONE
            if self.code is CircuitState.OPEN:
                if now < self._until:
                    return self._reply(now, Verdict.REJECT_OPEN, self._until - now)
                moved = self._move(CircuitState.HALF_OPEN, Transition.HALF_OPEN)
            if self._lease is None or self._lease[1] <= now:
                self._lease = (token, now + opts.lease_ms)
                return self._reply(now, Verdict.PROBE, 0, moved)
            left = min(self._lease[1] - now, max(self._window, opts.reset_ms))
            return self._reply(now, Verdict.REJECT_PROBE, max(0, left), moved)

    def record(self, gen: int | None, token: str, outcome: Outcome) -> Reply:
        with self._lock:
            now, moved = self._now(), Transition.NONE
            if gen is not None and gen != self.gen:
                pass  # admitted before the last transition: ignored
            elif self.code is CircuitState.HALF_OPEN and self._holds_lease(token, now):
                moved = self._settle_probe(now, outcome)
            elif self.code is CircuitState.CLOSED and not token and outcome.kind is not NEUTRAL:
                moved = self._count(now, outcome)
            return self._reply(now, Verdict.RECORDED, 0, moved)

    def _holds_lease(self, token: str, now: int) -> bool:
        # An expired lease may already belong to another probe, as its Redis key would.
        lease = self._lease
        return bool(token) and lease is not None and lease[0] == token and lease[1] > now

    def _settle_probe(self, now: int, outcome: Outcome) -> Transition:
        self._lease = None
        if outcome.kind is OutcomeKind.OK:
            self._probe_ok += 1
            if self._probe_ok >= self.options.success_threshold:
                return self._close()
        elif outcome.kind is OutcomeKind.FAIL:
            window = max(self._window * 2, self.options.reset_ms, outcome.retry_ms)
            return self._open(now, window, Transition.PROBE_FAILED)
        return Transition.NONE

    def _count(self, now: int, outcome: Outcome) -> Transition:
        failed = outcome.kind is OutcomeKind.FAIL
        rate_tripped = self._tally(now, failed=failed)
        if not failed:  # a success never trips, whatever the rate
            self.fails = 0
            return Transition.NONE
        self.fails, self._lastfail = self.fails + 1, now
        window = max(self.options.reset_ms, outcome.retry_ms)
        if self.fails >= self.options.fail_max:
            return self._open(now, window, Transition.FAIL_MAX)
        return self._open(now, window, Transition.RATE) if rate_tripped else Transition.NONE

    def _move(self, code: CircuitState, why: Transition = Transition.NONE) -> Transition:
        self.code, self.gen, self._probe_ok, self._buckets = code, self.gen + 1, 0, {}
        return why

    def _open(self, now: int, window: int, why: Transition) -> Transition:
        self._window = min(self.options.max_ms, window)
        self._until, self._lease = now + self._window, None
        return self._move(CircuitState.OPEN, why)

    def _close(self) -> Transition:
        self.fails = self._until = self._window = self._lastfail = 0
        return self._move(CircuitState.CLOSED, Transition.CLOSED)

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

    def _reply(
        self,
        now: int,
        verdict: Verdict,
        retry_ms: int = 0,
        moved: Transition = Transition.NONE,
    ) -> Reply:
        window, last = self.options.window_ms, self._lastfail
        hot = self.fails > 0 or (window > 0 and last > 0 and now - last < window)
        forced_open = self.code is CircuitState.FORCED_OPEN
        until = now + self.options.reset_ms if forced_open else self._until
        state = (self.code, self.gen, self.fails, until, now, hot)
        return Reply(*state, verdict, retry_ms, moved, self._clock())
