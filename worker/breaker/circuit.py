"""``SharedCircuitBreaker``: pybreaker's surface over one circuit that every process shares.

Each process keeps the last reply of the store, its "view". While the view is closed,
free of recent failures and younger than ``view_ttl_s``, calls are admitted without a
round trip, and a success that ends while the view still is so costs none either (there
is nothing to reset; not so with ``window_s``, where successes count toward the rate).
Any other outcome costs one RECORD, whose reply refreshes the view. While open, calls
are rejected locally until the known deadline. When Redis does not answer, a
``LocalStore`` seeded from the view takes over (one warning) until Redis answers again.

docs/breaker.md lists every difference from pybreaker.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple, ParamSpec, TypeVar

import pybreaker
from redis import Redis
from redis.exceptions import RedisError

from core.circuits import CircuitState, Event
from worker.breaker.codes import TRANSITIONS, OutcomeKind, Transition, Verdict
from worker.breaker.local_store import LocalStore
from worker.breaker.redis_store import RedisStore
from worker.breaker.rules import (
    IGNORED,
    Exclusion,
    Options,
    Outcome,
    Reply,
    classify,
    is_failure,
    rejection,
)

__all__ = [
    "DEFAULT_OPEN_VIEW_TTL_S",
    "DEFAULT_VIEW_TTL_S",
    "REDIS_RETRY_S",
    "Permit",
    "SharedCircuitBreaker",
]

logger = logging.getLogger("worker.breaker")  # one logger name for every breaker event
P = ParamSpec("P")
T = TypeVar("T")

REDIS_RETRY_S = 1.0
"""While Redis is unreachable, it is tried again at most this often."""
DEFAULT_VIEW_TTL_S = 0.25
"""How long a healthy view admits calls without asking Redis."""
DEFAULT_OPEN_VIEW_TTL_S = 0.5
"""How long an open view rejects calls without asking Redis. With ``DEFAULT_VIEW_TTL_S``
it bounds how late an operator's force open, close or reset reaches a process."""


def _readonly(attr: str, *, option: bool = False) -> Any:
    """A read-only attribute; the class annotation gives mypy its type."""
    return property(lambda self: getattr(self._opts if option else self, attr))


class Permit(NamedTuple):
    """An admitted call: which store admitted it, in which generation, its probe token
    (empty unless it is the probe), and whether its outcome counts (not when forced closed).
    """

    local: bool
    gen: int
    token: str
    counted: bool


class SharedCircuitBreaker:
    """A pybreaker-compatible circuit breaker whose state every process shares via Redis.

    ``fail_max`` consecutive failures open it for ``reset_timeout`` seconds (longer when a
    failure carries ``retry_after``, doubling per failed probe up to ``max_reset_timeout``);
    then one probe, holding a lease of ``probe_lease_s`` (set it above the upstream
    timeout), may pass; ``success_threshold`` probe successes close it. With ``window_s``
    and ``failure_rate_threshold``, a failure rate at or over the threshold among at least
    ``min_calls`` calls in the last ``window_s`` seconds also opens it; with
    ``slow_call_s``, slower successes count as failures. Construction does no I/O; ``redis``
    may be a client or a factory called on first use. ``view_ttl_s`` bounds how stale a
    healthy view may be (0: ask Redis on every call), ``open_view_ttl_s`` how stale an
    open one may be; ``clock`` (tests only, seconds) replaces Redis ``TIME`` and this
    process's monotonic clock.
    """

    def __init__(
        self,
        name: str,
        redis: Redis | Callable[[], Redis],
        *,
        fail_max: int = 5,
        reset_timeout: float = 60.0,
        success_threshold: int = 1,
        exclude: Iterable[Exclusion] = (),
        listeners: Iterable[pybreaker.CircuitBreakerListener] = (),
        probe_lease_s: float = 60.0,
        max_reset_timeout: float = 600.0,
        window_s: float | None = None,
        failure_rate_threshold: float | None = None,
        min_calls: int = 10,
        slow_call_s: float | None = None,
        view_ttl_s: float = DEFAULT_VIEW_TTL_S,
        open_view_ttl_s: float = DEFAULT_OPEN_VIEW_TTL_S,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty string, got {name!r}")
        self._exclude = tuple(exclude)
        if not all(callable(rule) for rule in self._exclude):
            raise ValueError(f"exclude takes exception types or predicates, got {exclude!r}")
        for option, value in (("view_ttl_s", view_ttl_s), ("open_view_ttl_s", open_view_ttl_s)):
            if not value >= 0:
                raise ValueError(f"{option} must be >= 0, got {value!r}")
        self._opts = Options(
            fail_max,
            reset_timeout,
            success_threshold,
            probe_lease_s,
            max_reset_timeout,
            window_s,
            failure_rate_threshold,
            min_calls,
            slow_call_s,
        )
        self._name, self._source, self._listeners = name, redis, tuple(listeners)
        self._view_ttl_s, self._open_view_ttl_s = view_ttl_s, open_view_ttl_s
        self._test_clock = clock
        self._clock: Callable[[], float] = clock or time.monotonic
        self._remote: RedisStore | None = None
        self._local = LocalStore(self._opts, self._clock)
        self._cb: Any = self  # listeners are typed for pybreaker.CircuitBreaker, our model
        self._view: Reply | None = None
        self._lock = threading.Lock()  # view swaps and the degraded flag; never across I/O
        self._degraded, self._next_redis_try = False, 0.0

    def call(self, func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Call ``func`` if the circuit admits it; raises ``CircuitOpenError`` if not."""
        permit = self.admit()  # before the context manager: rejections stay cheap
        with self._guard(permit, func, *args, **kwargs):
            return func(*args, **kwargs)

    def calling(self) -> contextlib.AbstractContextManager[None]:
        """The guarded call as a ``with`` block; raises ``CircuitOpenError`` on entry."""
        return self._guard(None, self.calling)

    def __call__(self, func: Callable[P, T]) -> Callable[P, T]:
        """Use the breaker as a decorator: ``@breaker``."""

        @functools.wraps(func)
        def guarded(*args: P.args, **kwargs: P.kwargs) -> T:
            return self.call(func, *args, **kwargs)

        return guarded

    def admit(self) -> Permit:
        """The first phase of a call on its own: a ``Permit`` for :meth:`guard`, or
        ``CircuitOpenError``. Work that must not count (marking a job running) goes
        between the two; a permit whose call is not made goes back through :meth:`cancel`."""
        view = self._view  # None while degraded
        known = self._known(view)
        if view and known and known[0] is Verdict.ADMIT:
            return Permit(False, view.gen, "", view.code is not CircuitState.FORCED_CLOSED)
        if known:
            raise rejection(self._name, *known)
        token = secrets.token_hex(8)
        remote = self._redis(lambda store: store.admit(token))
        reply = remote or self._local.admit(token)
        self._report(reply, remote is None)
        if reply.verdict in (Verdict.ADMIT, Verdict.PROBE):
            probe = token if reply.verdict is Verdict.PROBE else ""
            counted = reply.code is not CircuitState.FORCED_CLOSED
            return Permit(remote is None, reply.gen, probe, counted)
        raise rejection(self._name, reply.verdict, reply.retry_ms / 1000)

    def recheck(self, permit: Permit) -> Permit:
        """Admission again, for a call about to be made long after its permit (it waited
        for a call slot): the same permit while this process's view still admits it in
        the permit's generation (no round trip), else a new admission, which may raise
        ``CircuitOpenError`` (the old permit is given back). A probe keeps its lease."""
        view = self._view
        if permit.token or permit.local or view is None:
            return permit
        known = self._known(view)
        if known and known[0] is Verdict.ADMIT and view.gen == permit.gen:
            return permit
        self.cancel(permit)
        return self.admit()

    def _known(self, view: Reply | None) -> tuple[Verdict, float] | None:
        """What ``view`` alone decides now; None: ask the store."""
        if view is None:
            return None
        return view.cached_verdict(self._view_ttl_s, self._open_view_ttl_s, self._clock())

    def guard(self, permit: Permit) -> contextlib.AbstractContextManager[None]:
        """The second phase: run the admitted call in a ``with`` block; its outcome is
        recorded when the block ends (an exception counts as :meth:`is_system_error` says)."""
        return self._guard(permit, self.guard)

    def cancel(self, permit: Permit) -> None:
        """Give back a permit whose call will not be made: nothing counts, and a probe's
        lease is released so another call can probe."""
        self._record(permit, IGNORED)

    name: str = _readonly("_name")
    fail_max: int = _readonly("fail_max", option=True)
    reset_timeout: float = _readonly("reset_timeout", option=True)
    success_threshold: int = _readonly("success_threshold", option=True)
    listeners: tuple[pybreaker.CircuitBreakerListener, ...] = _readonly("_listeners")
    excluded_exceptions: tuple[Exclusion, ...] = _readonly("_exclude")

    @property
    def current_state(self) -> str:
        """``closed`` | ``open`` | ``half-open``, as this process knows it."""
        return self._peek().code.pybreaker_name

    @property
    def fail_counter(self) -> int:
        """Consecutive failures, as this process knows them."""
        return self._peek().fails

    def add_listener(self, listener: pybreaker.CircuitBreakerListener) -> None:
        self._listeners = (*self._listeners, listener)

    def is_system_error(self, exception: BaseException) -> bool:
        """Whether ``exception`` counts as a failure of the upstream."""
        return is_failure(exception, self._exclude)

    @contextlib.contextmanager
    def _guard(
        self, permit: Permit | None, func: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> Iterator[None]:
        permit = permit or self.admit()
        try:
            for listener in self._listeners:
                listener.before_call(self._cb, func, *args, **kwargs)
        except BaseException:
            self._record(permit, IGNORED)  # a probe must hand its lease back
            raise
        started = time.monotonic()
        try:
            yield
        except BaseException as exc:
            self._finish(permit, exc, time.monotonic() - started)
            raise
        self._finish(permit, None, time.monotonic() - started)

    def _finish(self, permit: Permit, exc: BaseException | None, elapsed: float) -> None:
        outcome = classify(exc, elapsed, self._opts, self._exclude)
        self._record(permit, outcome)
        for listener in self._listeners:
            if outcome.kind is OutcomeKind.OK:
                listener.success(self._cb)
            elif outcome.error is not None:
                listener.failure(self._cb, outcome.error)

    def _record(self, permit: Permit, out: Outcome) -> None:
        if not permit.counted or (out.kind is OutcomeKind.NEUTRAL and not permit.token):
            return  # nothing would change: spare the round trip
        view = self._view
        only_zeroes = out.kind is OutcomeKind.OK and not (permit.token or self._opts.window_ms)
        if only_zeroes and view and view.quiet(permit.gen, self._view_ttl_s, self._clock()):
            return  # a success that only zeroes fails (no rate window): none to zero here
        reply = None
        if not permit.local:
            reply = self._redis(lambda store: store.record(permit.gen, permit.token, out))
        local = reply is None
        if reply is None:  # a Redis permit settled during an outage counts against local state
            reply = self._local.record(permit.gen if permit.local else None, permit.token, out)
        self._report(reply, local)

    def _redis(self, action: Callable[[RedisStore], Reply]) -> Reply | None:
        """Run ``action`` on Redis; None (and degraded mode) when Redis does not answer."""
        if self._degraded:
            with self._lock:
                if self._clock() < self._next_redis_try:
                    return None  # a retry every REDIS_RETRY_S, not one per call
                self._next_redis_try = self._clock() + REDIS_RETRY_S
        try:
            if self._remote is None:
                source = self._source
                client = source if isinstance(source, Redis) else source()
                self._remote = RedisStore(client, self._name, self._opts, self._test_clock)
            reply = action(self._remote)
        except RedisError as exc:
            self._enter_degraded(exc)
            return None
        with self._lock:
            restored, self._degraded = self._degraded, False
            old = self._view
            if old is None or reply.now_ms >= old.now_ms:
                self._view = reply  # replies can arrive out of order; keep the newest
        if restored:
            logger.info("breaker.redis_restored", extra={"circuit": self._name})
        return reply

    def _enter_degraded(self, exc: RedisError) -> None:
        with self._lock:
            if self._degraded:
                return
            self._degraded, self._next_redis_try = True, self._clock() + REDIS_RETRY_S
            view, self._view = self._view, None
        self._local.seed(view)
        extra = {"circuit": self._name, "reason": f"{type(exc).__name__}: {str(exc)[:200]}"}
        logger.warning("breaker.redis_unavailable", extra=extra)

    def _peek(self) -> Reply:
        view = self._view  # None while degraded: then _redis retries at most every second
        if view is None or self._clock() - view.seen_at >= self._view_ttl_s:
            view = self._redis(lambda store: store.peek())
        return view or self._local.peek()

    def _report(self, reply: Reply, local: bool) -> None:
        """Log and tell listeners about the transition this process's script made, if any."""
        if reply.transition is Transition.NONE:
            return
        info = TRANSITIONS[reply.transition]
        counts = {"fails": reply.fails, "generation": reply.gen}
        extra = {"circuit": self._name, "reason": info.reason, "counts": counts, "degraded": local}
        level = logging.WARNING if info.event is Event.OPENED else logging.INFO
        logger.log(level, f"breaker.{info.event}", extra=extra)
        for listener in self._listeners:
            listener.state_change(self._cb, info.old(self._cb, None), info.new(self._cb, None))
