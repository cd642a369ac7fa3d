"""Completion signals: an API process's long-polls wait for a job's final write, not a timer.

The script that makes a job final (``core/lua/write_unless_final.lua``) publishes its id
on ``keys.jobs_done()``. Each API process holds one subscription to that channel (one
Redis connection, opened on the first wait) and wakes the requests waiting for that id;
a waiting request costs no Redis round trip while it waits. A wait re-reads the record
after subscribing, so a job that became final in between is not missed; when the
subscription is lost (Redis restarting), waiters just wait out their time and the
caller reads the record then, as a plain poll would.

    done = await completions.wait(job_id, timeout_s)   # True: it was signalled final
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from redis import asyncio as aioredis
from redis.exceptions import RedisError

from core import keys

__all__ = ["Completions"]

log = logging.getLogger(__name__)

RESUBSCRIBE_S = 1.0
"""After the subscription breaks, how long before it is opened again."""


class Completions:
    """The process's waiters, by job id, and the one subscription that wakes them."""

    def __init__(self, client: Callable[[], aioredis.Redis]) -> None:
        self._client = client
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._listener: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()

    async def wait(
        self, job_id: str, timeout_s: float, is_final: Callable[[], Awaitable[bool]]
    ) -> bool:
        """Wait up to ``timeout_s`` for ``job_id``'s final write; ``is_final`` reads the
        record once the subscription stands (it may have ended before). True when the job
        is final, False when the time ran out."""
        self._ensure_listening()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(job_id, []).append(future)
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout_s):  # one deadline for the whole wait
                    await self._subscribed.wait()
                    if await is_final():
                        return True
                    await future
            return future.done()
        finally:
            waiting = self._waiters.get(job_id, [])
            if future in waiting:
                waiting.remove(future)
            if not waiting:
                self._waiters.pop(job_id, None)

    async def close(self) -> None:
        """Stop listening (the process is shutting down)."""
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener

    def _ensure_listening(self) -> None:
        if self._listener is None or self._listener.done():
            self._listener = asyncio.get_running_loop().create_task(self._listen())

    async def _listen(self) -> None:
        while True:
            try:
                async with self._client().pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(keys.jobs_done())
                    self._subscribed.set()
                    async for message in pubsub.listen():
                        self._wake(str(message["data"]))
            except (RedisError, OSError) as exc:
                self._subscribed.clear()
                log.warning("completions.subscription_lost", extra={"error": type(exc).__name__})
                await asyncio.sleep(RESUBSCRIBE_S)

    def _wake(self, job_id: str) -> None:
        for future in self._waiters.get(job_id, []):
            if not future.done():
                future.set_result(None)
