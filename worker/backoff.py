"""Whether and when to try a job again: the pure functions behind genq's one retry layer.

Celery's ``retry(countdown=...)`` is the only place genq retries (no urllib3 retries, no
loops around the upstream call). :meth:`RetryPolicy.decide` is the one place that decides
it, for every kind of retry (``worker.outcome.Budget``), from the counts the job's message
carries; its countdown comes from :func:`compute_backoff` or :func:`circuit_wait`. The
policy's options are checked when it is built, not on the first retry.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from core.contract import JobMessage
from worker.outcome import Budget, RetryAfter

__all__ = ["RetryPolicy", "circuit_wait", "compute_backoff"]

# 2.0 ** 1024 overflows a float; far below that the ceiling is the cap anyway.
_MAX_EXPONENT = 1000


def compute_backoff(
    attempt: int,
    *,
    base_s: float = 1.0,
    cap_s: float = 60.0,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait before retry number ``attempt`` (0 = the first retry).

    Exponential backoff with full jitter, and the upstream's ``Retry-After`` as a floor::

        jitter = uniform(0, min(cap_s, base_s * 2 ** attempt))
        delay  = max(jitter, min(max(retry_after, 0), cap_s))   # if retry_after is given

    so the delay is never negative and never above ``cap_s``. Full jitter spreads the
    retries of many workers that failed together; ``rng`` makes the draw reproducible.
    Raises ValueError on a negative ``attempt`` or bad ``base_s``/``cap_s``.
    """
    _check_window(base_s, cap_s)
    if attempt < 0:
        raise ValueError(f"attempt must be >= 0, got {attempt}")
    ceiling = min(cap_s, base_s * 2.0 ** min(attempt, _MAX_EXPONENT))
    jitter = (rng or random).uniform(0.0, ceiling)
    if retry_after is None or math.isnan(retry_after):
        return jitter
    return max(jitter, min(max(retry_after, 0.0), cap_s))


def circuit_wait(
    retry_after: float | None,
    *,
    floor_s: float = 0.5,
    spread: float = 0.2,
    rng: random.Random | None = None,
) -> float:
    """Seconds a batch item waits for an open circuit before it asks again::

        delay = max(retry_after, floor_s) * (1 + uniform(0, spread))

    ``retry_after`` is the circuit's own word (its next probe, or the end of the probe
    in flight); the spread keeps the items that waited together from coming back in the
    same instant, when only one of them can be the probe. NaN or None: ``floor_s``.
    """
    wait = floor_s if retry_after is None or math.isnan(retry_after) else retry_after
    return max(wait, floor_s) * (1.0 + (rng or random).uniform(0.0, spread))


def _check_window(base_s: float, cap_s: float) -> None:
    """Refuse options that cannot give a sensible delay."""
    if not (math.isfinite(base_s) and base_s >= 0):
        raise ValueError(f"base_s must be a finite number >= 0, got {base_s}")
    if not (math.isfinite(cap_s) and cap_s >= base_s):
        raise ValueError(f"cap_s must be finite and >= base_s ({base_s}), got {cap_s}")


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a job is run again, per budget (:meth:`decide`)."""

    max_retries: int = 5
    """Retries after the first try (``Budget.RETRIES``); 0 disables retrying."""
    base_s: float = 1.0
    """Ceiling of the first retry's jittered delay; it doubles with each retry."""
    cap_s: float = 60.0
    """Longest delay, even when the upstream's ``Retry-After`` asks for more."""
    max_throttled_retries: int = 20
    """Retries because the upstream said "slower" (``Budget.THROTTLED``)."""

    def __post_init__(self) -> None:
        for name in ("max_retries", "max_throttled_retries"):
            count = getattr(self, name)
            if not isinstance(count, int) or isinstance(count, bool) or count < 0:
                raise ValueError(f"{name} must be an int >= 0, got {count!r}")
        _check_window(self.base_s, self.cap_s)

    def decide(
        self,
        budget: Budget,
        message: JobMessage,
        retry_after: float | None = None,
        *,
        rng: random.Random | None = None,
    ) -> RetryAfter | None:
        """Run the job again, and when; None when ``budget`` is spent (the caller ends
        the run). ``retry_after`` is the upstream's or the circuit's word on when.

        ======================  ==========================  ================================
        budget                  allowed while               delay
        ======================  ==========================  ================================
        ``RETRIES``             < ``max_retries``           :func:`compute_backoff`
        ``THROTTLED``           < ``max_throttled_retries`` :func:`compute_backoff`
        ``CIRCUIT_WAITS``       always (the batch's window  :func:`circuit_wait`, at
                                bounds it: its caller asks) most ``cap_s``
        ``LEASE_WAITS``         always (the other copy's    ``retry_after``: the lease
                                lease lapses if it dies)
        ``FAILOVERS``           always (the job's targets   none: the next target, at once
                                bound it: its caller asks)
        ======================  ==========================  ================================
        """
        spent = getattr(message, budget.value)
        if budget is Budget.CIRCUIT_WAITS:
            # Capped like every countdown: one held past the visibility timeout would be
            # delivered twice. A longer open window is waited out in several countdowns.
            return RetryAfter(min(circuit_wait(retry_after, rng=rng), self.cap_s), budget)
        if budget is Budget.LEASE_WAITS:
            return RetryAfter(retry_after or self.base_s, budget)
        if budget is Budget.FAILOVERS:
            return RetryAfter(0.0, budget)
        limit = self.max_retries if budget is Budget.RETRIES else self.max_throttled_retries
        if spent >= limit:
            return None
        return RetryAfter(self.delay(spent, retry_after, rng=rng), budget)

    def allows(self, retries_done: int) -> bool:
        """Whether another retry is allowed after ``retries_done`` (Celery's ``retries``)."""
        return retries_done < self.max_retries

    def delay(
        self,
        attempt: int,
        retry_after: float | None = None,
        *,
        rng: random.Random | None = None,
    ) -> float:
        """Seconds before retry ``attempt`` (0 = first); see :func:`compute_backoff`."""
        return compute_backoff(
            attempt, base_s=self.base_s, cap_s=self.cap_s, retry_after=retry_after, rng=rng
        )
