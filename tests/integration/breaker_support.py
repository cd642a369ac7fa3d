"""Helpers shared by the breaker's integration tests (fixtures ``r`` and ``name`` live in
conftest.py)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from core.errors import UpstreamUnavailable
from worker.breaker import SharedCircuitBreaker


def boom(message: str = "upstream down") -> None:
    """A guarded call that fails like an unavailable upstream."""
    raise UpstreamUnavailable(message, status=503)


def failing(breaker: SharedCircuitBreaker, times: int, fn: Callable[[], None] = boom) -> None:
    """Make ``times`` failing calls through ``breaker``, each re-raising its error."""
    for _ in range(times):
        with pytest.raises(UpstreamUnavailable):
            breaker.call(fn)
