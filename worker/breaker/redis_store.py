"""A circuit's state in Redis, changed only by the Lua scripts in ``lua/``.

Each call is one EVALSHA answering the circuit's new state (nine integers in one string,
``Reply``), so the call that acts also refreshes the caller's view. Keys and the state
hash's fields are described in ``core.circuits``; the scripts in ``lua/admit.lua`` and
``lua/record.lua`` (after ``lua/prelude.lua`` and the codes of ``codes.LUA_HEADER``).
"""

from __future__ import annotations

import functools
import struct
import time
from collections.abc import Callable
from typing import cast

from redis import Redis
from redis.commands.core import Script

from core import keys, scripts
from worker.breaker.codes import LUA_HEADER
from worker.breaker.rules import Options, Outcome, Reply

__all__ = ["RedisStore"]


@functools.cache
def _sources() -> tuple[str, str]:
    """admit.lua and record.lua, each after the codes and the prelude (read on first use)."""
    head = LUA_HEADER + scripts.load("worker.breaker", "prelude")
    return scripts.load("worker.breaker", "admit", head), scripts.load(
        "worker.breaker", "record", head
    )


class RedisStore:
    """One circuit in Redis, through one client (registering the scripts does no I/O).

    ``clock`` (tests only) replaces Redis ``TIME`` with seconds of its own, so tests can
    move time; without it the circuit runs on Redis ``TIME`` and every process agrees.
    """

    def __init__(
        self,
        client: Redis,
        name: str,
        options: Options,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.name = name
        self._clock = clock
        self._keys = [k.encode() for k in keys.circuit(name)]  # bytes: skips re-encoding
        admit, record = _sources()
        self._admit: Script = client.register_script(admit)
        self._record: Script = client.register_script(record)
        rate = options.failure_rate_threshold or 0.0
        self._numbers = (
            options.ttl_ms,
            options.fail_max,
            options.reset_ms,
            options.max_ms,
            options.success_threshold,
            options.lease_ms,
            options.window_ms,
        )
        self._tail = struct.pack(">dq", rate, options.min_calls) + name.encode()

    def _head(self) -> bytes:
        """ARGV[1] of both scripts, as prelude.lua unpacks it."""
        clock_ms = int(self._clock() * 1000) if self._clock else 0
        return struct.pack(">8q", clock_ms, *self._numbers) + self._tail

    def _parse(self, packed: object) -> Reply:
        seen_at = self._clock() if self._clock else time.monotonic()
        return Reply.parse(cast(str | bytes, packed), seen_at)

    def admit(self, token: str) -> Reply:
        return self._parse(self._admit(self._keys, [self._head(), token, 0]))

    def peek(self) -> Reply:
        return self._parse(self._admit(self._keys, [self._head(), "", 1]))

    def record(self, gen: int | None, token: str, outcome: Outcome) -> Reply:
        admitted = "" if gen is None else str(gen)
        tag = f"{outcome.kind}:{admitted}:{outcome.retry_ms}:{token}"
        return self._parse(self._record(self._keys, [self._head(), tag, outcome.text]))
