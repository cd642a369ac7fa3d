"""What the probes and ``/metrics`` report about Redis, known before anyone asks.

Every sync route runs in the API's shared thread pool; when Redis hangs, those threads
block for up to ``GENQ_REDIS_SOCKET_TIMEOUT_S`` each, and a probe that asked Redis
itself would queue behind them. Instead a background task (:class:`Monitor`, started
with the app) pings Redis every ``PING_EVERY_S`` and reads the cluster's state for
``/metrics`` every ``CLUSTER_EVERY_S``, on two threads of its own; ``/readyz`` and
``/metrics`` answer from what it last saw, at once, whatever Redis is doing.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import redis

__all__ = ["CLUSTER_EVERY_S", "PING_EVERY_S", "Monitor", "RedisState"]

T = TypeVar("T")
PING_EVERY_S = 1.0
"""How often Redis is pinged; a ping older than ``STALE_AFTER_S`` counts as failed."""
STALE_AFTER_S = 3.0
CLUSTER_EVERY_S = 5.0
"""How often the circuits and queue depths that ``/metrics`` reports are read."""


@dataclass(frozen=True)
class RedisState:
    """The last ping: whether Redis answered, and when (monotonic)."""

    up: bool
    error: str | None
    at: float

    def fresh_up(self) -> bool:
        return self.up and time.monotonic() - self.at < STALE_AFTER_S


class Monitor:
    """Pings Redis and reads the cluster in the background; its state is read at once."""

    def __init__(self, ping: Callable[[], object], read_cluster: Callable[[], Any]) -> None:
        self._ping, self._read_cluster = ping, read_cluster
        self.redis = RedisState(False, "not checked yet", 0.0)
        self.cluster: Any = None
        self._task: asyncio.Task[None] | None = None

    async def check(self, cluster: bool = True) -> None:
        """One ping (and one cluster read), on the monitor's own threads."""
        try:
            await _off_loop(self._ping)
            self.redis = RedisState(True, None, time.monotonic())
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            self.redis = RedisState(False, type(exc).__name__, time.monotonic())
            self.cluster = None
            return
        if cluster:
            with contextlib.suppress(redis.ConnectionError, redis.TimeoutError, OSError):
                self.cluster = await _off_loop(self._read_cluster)

    async def _run(self) -> None:
        last_cluster = float("-inf")
        while True:
            due = time.monotonic() - last_cluster >= CLUSTER_EVERY_S
            await self.check(cluster=due)
            if due:
                last_cluster = time.monotonic()
            await asyncio.sleep(PING_EVERY_S)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


@functools.cache
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=2, thread_name_prefix="genq-monitor")


async def _off_loop(call: Callable[[], T]) -> T:
    return await asyncio.get_running_loop().run_in_executor(_pool(), call)
