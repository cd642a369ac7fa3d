"""The one interface over a circuit's state: in Redis (shared) or in this process's memory.

``RedisStore`` (``redis_store.py``) runs the Lua scripts; ``LocalStore``
(``local_store.py``) applies the same rules to memory, when Redis is unreachable. Both
answer every call with a ``Reply``, and given the same calls at the same clock they
answer alike (``tests/integration/test_breaker_stores.py`` replays random sequences
through both).
"""

from __future__ import annotations

from typing import Protocol

from worker.breaker.rules import Outcome, Reply

__all__ = ["CircuitStore"]


class CircuitStore(Protocol):
    """Admission and outcomes of one circuit."""

    def admit(self, token: str) -> Reply:
        """Admit a call, make it the probe (holding ``token``), or reject it."""
        ...

    def peek(self) -> Reply:
        """The circuit as it is, changing nothing."""
        ...

    def record(self, gen: int | None, token: str, outcome: Outcome) -> Reply:
        """Count one finished call admitted in generation ``gen`` (None: the current one);
        ``token`` is the probe's lease token, empty for other calls."""
        ...
