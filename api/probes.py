"""Checks for the health routes and ``/metrics`` that never wait behind request threads.

Every sync route runs in the API's shared thread pool; when Redis hangs, those threads
block for up to ``GENQ_REDIS_SOCKET_TIMEOUT_S`` each, and a probe queued behind them
would time out too. Probes instead run on a small pool of their own and give up after
``PROBE_BUDGET_S``: Redis that has not answered by then counts as unavailable.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

__all__ = ["PROBE_BUDGET_S", "probe"]

T = TypeVar("T")
#: How long a probe waits for Redis before calling it unavailable: a Redis that answers
#: does so in a millisecond or two, and a probe must answer within 100 ms whatever Redis does.
PROBE_BUDGET_S = 0.05


@functools.cache
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=4, thread_name_prefix="genq-probe")


async def probe(check: Callable[[], T], budget_s: float = PROBE_BUDGET_S) -> T:
    """``check()`` on the probes' own threads; TimeoutError past ``budget_s``."""
    loop = asyncio.get_running_loop()
    return await asyncio.wait_for(loop.run_in_executor(_pool(), check), budget_s)
