"""Testing aids that genq ships, so tests need not reach into its internals.

- :func:`configured`: run with genq configured from given ``GENQ_*`` variables, with this
  process's cached settings, Redis clients, HTTP session and generation service built
  afresh on entry and again on exit.
- :class:`ManualClock`: a clock in seconds that only moves when told; give it to
  ``SharedCircuitBreaker(clock=...)`` (and so to its Redis and in-process stores) to
  move a circuit's time without sleeping.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping

from core import connections
from core.settings import Settings, get_settings
from worker import generation, upstream

__all__ = ["ManualClock", "configured", "reset_process_state"]


class ManualClock:
    """A hand-moved clock: ``clock()`` is ``clock.now`` seconds; ``advance`` moves it."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def reset_process_state() -> None:
    """Forget this process's settings, Redis clients, HTTP session and service: the next
    use builds them from the environment as it is then."""
    get_settings.cache_clear()
    connections._client_for.cache_clear()
    connections._async_client_for.cache_clear()
    upstream._session_for.cache_clear()
    generation._service_for.cache_clear()


@contextlib.contextmanager
def configured(env: Mapping[str, str]) -> Iterator[Settings]:
    """Run with ``env`` (``GENQ_*`` variables) set in this process; restored on exit."""
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    reset_process_state()
    try:
        yield get_settings()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        reset_process_state()
