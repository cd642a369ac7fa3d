"""The batch scheduler's worker side: keep the batch queue topped up.

Batch items wait with the scheduler (``core.scheduler``, ``lua/sched_prelude.lua``) and
are released onto the batch queue in a fair order, only as far as keeps it
``GENQ_BATCH_READY_DEPTH`` deep. Every worker tops it up as it takes batch items off
the queue (once per ``EVERY_TAKES``: the queue refills as fast as it drains, so idle
threads never wait for a tick) and on a tick, in case nothing is taken (items all waiting on
retries, a queue drained while no worker ran). Each release is one Lua script: there is
no lock to hold, so a worker killed mid-release releases nothing twice and loses
nothing.
"""

from __future__ import annotations

import itertools
import logging
import threading

import redis

from core.errors import StorageUnavailable
from core.scheduler import Scheduler

__all__ = ["TICK_S", "Releaser"]

log = logging.getLogger(__name__)

TICK_S = 1.0
"""How often a worker tops the batch queue up whether or not an item was taken."""
EVERY_TAKES = 4
"""A worker tops the queue up once per this many items it takes: a release per item
cost the workers' CPU a round trip each, and the ready depth covers the gap."""


class Releaser:
    """Tops ``queue`` up from ``scheduler``; :meth:`start` ticks in a daemon thread."""

    def __init__(self, scheduler: Scheduler, queue: str, every_s: float = TICK_S) -> None:
        self._scheduler, self._queue, self._every_s = scheduler, queue, every_s
        self._taken = itertools.count(1)  # next() is atomic under the GIL

    def taken(self) -> None:
        """An item was taken off the queue: top it up once per ``EVERY_TAKES``."""
        if next(self._taken) % EVERY_TAKES == 0:
            self.release()

    def release(self) -> int:
        """Top the queue up now; how many items were released (0 if Redis is down: the
        next one tries again)."""
        try:
            return self._scheduler.release(self._queue)
        except (StorageUnavailable, redis.RedisError) as exc:
            log.warning("scheduler.release_failed", extra={"error": type(exc).__name__})
            return 0

    def start(self) -> None:
        threading.Thread(target=self._run, name="genq-scheduler", daemon=True).start()

    def _run(self) -> None:
        stop = threading.Event()  # never set: the thread lives as long as the process
        while not stop.wait(self._every_s):
            self.release()
