"""One circuit breaker per upstream target, shared by every genq process through Redis.

    breaker = SharedCircuitBreaker("hf:gpt2", get_redis, fail_max=5, reset_timeout=30)
    text = breaker.call(upstream.generate, request)   # or ``with breaker.calling():``

State lives in Redis and changes only in Lua scripts (``worker._breaker_scripts``
documents keys and scripts). Each process caches the last script reply, its "view".
While the view is closed, free of recent failures and younger than ``VIEW_TTL_S``, calls
are admitted locally (otherwise ADMIT asks Redis and refreshes the view), and a success
that ends while the view still is so costs nothing either: nothing to reset (not so with
``window_s``: successes count toward the rate). Any other outcome costs one RECORD, whose
reply refreshes the view. While open, calls are rejected locally until the known
deadline. So in an outage the calls beyond ``fail_max`` that reach the upstream are
those in flight when the circuit opened plus, per process, those admitted from a healthy
view before its first failure reply (at most its concurrency).

Differences from pybreaker:

1. State lives in Redis per circuit ``name`` (required), shared by every process; no
   ``state_storage`` argument.
2. No lock is held across the guarded call: N threads run N calls at once.
3. Half-open lets exactly one probe through cluster-wide; every other call is rejected
   with reason ``probe_in_flight`` (pybreaker lets every caller try).
4. Rejections raise ``core.errors.CircuitOpenError`` (a ``CircuitBreakerError``)
   carrying ``retry_after``, ``circuit`` and ``reason``.
5. The failing call that trips the circuit re-raises its own exception (pybreaker's
   ``throw_new_error_on_trip=False``), so callers keep the upstream error.
6. ``ValueError``, ``TypeError``, ``exclude``d exceptions and ``BaseException``s that are
   not ``Exception``s are neutral: they neither count nor reset the failure count, and
   listeners get neither ``success`` nor ``failure`` (pybreaker counts them as successes).
7. A success resets failures made by other processes only if this process has seen them
   (its view is at most ``VIEW_TTL_S`` old); from a fresh view showing none it costs no
   round trip. So in mixed traffic ``fail_max`` failures interleaved with successes in
   processes that had not yet seen them (so made within ``VIEW_TTL_S``) open the circuit:
   earlier than pybreaker, never later. Trips and ``force_open`` made elsewhere reach a
   process at its next failure or refresh.
8. The open window grows: an exception's ``retry_after`` lengthens it, each failed
   probe doubles it, up to ``max_reset_timeout``. Outcomes of calls admitted before the
   last transition are ignored.
9. ``state_change`` fires once per transition, in the process whose script made it.
10. ``current_state`` and ``fail_counter`` come from the view (refreshed when older than
    ``VIEW_TTL_S``); forced states read as open / closed (``snapshot()`` tells).
11. Options are read-only after construction. Not provided: ``open()``, ``close()``,
    ``half_open()`` (use ``force_open``/``force_closed``/``reset``), ``state``,
    ``success_counter``, ``call_async`` (Tornado), wrapping generator functions,
    ``throw_new_error_on_trip``, ``remove_listener``, ``add_excluded_exception(s)``.
12. Redis down never raises to the caller: a ``LocalBreaker`` seeded from the last view
    takes over (one warning) until Redis answers a retry (one per ``REDIS_RETRY_S``); pass
    clients without retries.
13. Added: failure-rate trips (``window_s``), slow calls as failures (``slow_call_s``).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, ClassVar, NamedTuple, ParamSpec, TypeVar

import pybreaker
from redis import Redis
from redis.exceptions import RedisError

from worker import _breaker_rules as rules
from worker import _breaker_scripts as scripts
from worker._breaker_rules import Exclusion, LocalBreaker, Options, Outcome, Reply, SlowCall
from worker._breaker_scripts import KINDS, force_closed, force_open, list_circuits, reset, snapshot

__all__ = ["KINDS", "SharedCircuitBreaker", "SlowCall", "force_closed", "force_open",
           "list_circuits", "reset", "snapshot"]  # fmt: skip
logger = logging.getLogger(__name__)
P = ParamSpec("P")
T = TypeVar("T")
REDIS_RETRY_S = 1.0  # while Redis is unreachable, it is tried again at most this often


def _readonly(attr: str, *, option: bool = False) -> Any:
    """A read-only attribute; the class annotation gives mypy its type."""
    return property(lambda self: getattr(self._opts if option else self, attr))


class _Ticket(NamedTuple):
    """An admitted call: by whom, in which generation, its probe token, whether it counts."""

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
    may be a client or a factory called on first use.
    """

    VIEW_TTL_S: ClassVar[float] = 0.25  # a healthy view admits alone this long; tests: 0

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
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty string, got {name!r}")
        self._exclude = tuple(exclude)
        if not all(callable(rule) for rule in self._exclude):
            raise ValueError(f"exclude takes exception types or predicates, got {exclude!r}")
        self._opts = Options(
            fail_max, reset_timeout, success_threshold, probe_lease_s, max_reset_timeout,
            window_s, failure_rate_threshold, min_calls, slow_call_s,
        )  # fmt: skip
        self._name, self._source, self._listeners = name, redis, tuple(listeners)
        self._circuit: scripts.RedisCircuit | None = None
        self._cb: Any = self  # listeners are typed for pybreaker.CircuitBreaker, our model
        self._offset_ms, self._head = 0, scripts.breaker_head(0, self._opts, name)
        self._local = LocalBreaker(self._opts)
        self._view: Reply | None = None
        self._lock = threading.Lock()  # view swaps and the degraded flag; never across I/O
        self._degraded, self._next_redis_try = False, 0.0

    def call(self, func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Call ``func`` if the circuit admits it; raises ``CircuitOpenError`` if not."""
        ticket = self._admit()  # before the context manager: rejections stay cheap
        with self._guard(ticket, func, *args, **kwargs):
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

    name: str = _readonly("_name")
    fail_max: int = _readonly("fail_max", option=True)
    reset_timeout: float = _readonly("reset_timeout", option=True)
    success_threshold: int = _readonly("success_threshold", option=True)
    listeners: tuple[pybreaker.CircuitBreakerListener, ...] = _readonly("_listeners")
    excluded_exceptions: tuple[Exclusion, ...] = _readonly("_exclude")

    @property
    def current_state(self) -> str:
        """``closed`` | ``open`` | ``half-open``, as this process knows it."""
        return rules.PYBREAKER_NAMES[self._peek()[0]]

    @property
    def fail_counter(self) -> int:
        """Consecutive failures, as this process knows them."""
        return self._peek()[1]

    def add_listener(self, listener: pybreaker.CircuitBreakerListener) -> None:
        self._listeners = (*self._listeners, listener)

    def is_system_error(self, exception: BaseException) -> bool:
        """Whether ``exception`` counts as a failure of the upstream."""
        return rules.is_failure(exception, self._exclude)

    def shift_clock(self, seconds: float) -> None:
        """Testing only: this breaker's scripts see Redis ``TIME`` shifted by ``seconds``."""
        self._offset_ms += round(seconds * 1000)
        self._head = scripts.breaker_head(self._offset_ms, self._opts, self._name)

    @contextlib.contextmanager
    def _guard(self, ticket: _Ticket | None, func: Callable[..., Any], *args: Any,
               **kwargs: Any) -> Iterator[None]:  # fmt: skip
        ticket = ticket or self._admit()
        try:
            for listener in self._listeners:
                listener.before_call(self._cb, func, *args, **kwargs)
        except BaseException:
            self._record(ticket, rules.IGNORED)  # a probe must hand its lease back
            raise
        started = time.monotonic()
        try:
            yield
        except BaseException as exc:
            self._finish(ticket, exc, time.monotonic() - started)
            raise
        self._finish(ticket, None, time.monotonic() - started)

    def _admit(self) -> _Ticket:
        view = self._view  # None while degraded
        known = view.cached_verdict(self.VIEW_TTL_S, self._offset_ms) if view else None
        if view and known and known[0] == rules.ADMIT:
            return _Ticket(False, view.gen, "", view.code != rules.FORCED_CLOSED)
        if known:
            raise rules.rejection(self._name, *known)
        token = secrets.token_hex(8)
        remote = self._redis(lambda c: c.admit(self._head, token))
        reply = remote or self._local.admit(token)
        self._report(reply, remote is None)
        if reply.verdict in (rules.ADMIT, rules.PROBE):
            probe = token if reply.verdict == rules.PROBE else ""
            return _Ticket(remote is None, reply.gen, probe, reply.code != rules.FORCED_CLOSED)
        raise rules.rejection(self._name, reply.verdict, reply.retry_ms / 1000)

    def _finish(self, ticket: _Ticket, exc: BaseException | None, elapsed: float) -> None:
        outcome = rules.classify(exc, elapsed, self._opts, self._exclude)
        self._record(ticket, outcome)
        for listener in self._listeners:
            if outcome.kind == rules.OK:
                listener.success(self._cb)
            elif outcome.error is not None:
                listener.failure(self._cb, outcome.error)

    def _record(self, ticket: _Ticket, out: Outcome) -> None:
        if not ticket.counted or (out.kind == rules.NEUTRAL and not ticket.token):
            return  # nothing would change: spare the round trip
        only_zeroes = out.kind == rules.OK and not (ticket.token or self._opts.window_ms)
        if only_zeroes and (view := self._view) and view.quiet(ticket.gen, self.VIEW_TTL_S):
            return  # a success that only zeroes fails (no rate window): none to zero here
        reply = None
        if not ticket.local:
            reply = self._redis(lambda c: c.record(self._head, ticket.gen, ticket.token, out))
        local = reply is None
        if reply is None:  # a Redis ticket settled during an outage counts against local state
            gen = ticket.gen if ticket.local else None
            reply = self._local.record(out.kind, gen, ticket.token, out.retry_ms)
        self._report(reply, local)

    def _redis(self, action: Callable[[scripts.RedisCircuit], T]) -> T | None:
        """Run ``action`` on Redis; None (and degraded mode) when Redis does not answer."""
        if self._degraded:
            with self._lock:
                if time.monotonic() < self._next_redis_try:
                    return None  # a retry every REDIS_RETRY_S, not one per call
                self._next_redis_try = time.monotonic() + REDIS_RETRY_S
        try:
            self._circuit = self._circuit or scripts.RedisCircuit(self._source, self._name)
            result = action(self._circuit)
        except RedisError as exc:
            self._enter_degraded(exc)
            return None
        with self._lock:
            restored, self._degraded = self._degraded, False
            old = self._view
            if isinstance(result, Reply) and (old is None or result.now_ms >= old.now_ms):
                self._view = result  # replies can arrive out of order; keep the newest
        if restored:
            logger.info("breaker.redis_restored", extra={"circuit": self._name})
        return result

    def _enter_degraded(self, exc: RedisError) -> None:
        with self._lock:
            if self._degraded:
                return
            self._degraded, self._next_redis_try = True, time.monotonic() + REDIS_RETRY_S
            view, self._view = self._view, None
        self._local.seed(view)
        extra = {"circuit": self._name, "reason": f"{type(exc).__name__}: {str(exc)[:200]}"}
        logger.warning("breaker.redis_unavailable", extra=extra)

    def _peek(self) -> tuple[int, int]:
        view = self._view  # None while degraded: then _redis retries at most every second
        if view is None or time.monotonic() - view.seen_at >= self.VIEW_TTL_S:
            view = self._redis(lambda c: c.admit(self._head, "", peek=True))
        return (view.code, view.fails) if view else (self._local.code, self._local.fails)

    def _report(self, reply: Reply, local: bool) -> None:
        """Log and tell listeners about the transition this process's script made, if any."""
        if not reply.transition:
            return
        event, reason, old, new = rules.TRANSITIONS[reply.transition]
        counts = {"fails": reply.fails, "generation": reply.gen}
        extra = {"circuit": self._name, "reason": reason, "counts": counts, "degraded": local}
        level = logging.WARNING if event == "opened" else logging.INFO
        logger.log(level, f"breaker.{event}", extra=extra)
        for listener in self._listeners:
            listener.state_change(self._cb, old(self, None), new(self, None))
