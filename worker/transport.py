"""kombu's Redis transport with one client per channel instead of one per command.

kombu's Redis channel builds a new ``redis.Redis`` object for every synchronous command
(``Channel.conn_or_acquire``): when a message is delivered (to record it as unacked)
and again when it is acked. With redis-py 8 each construction copies the ~150-entry
response-callback table, and py-spy put that at 13–20% of a worker's GIL time on a
queue of fast jobs (docs/benchmarks.md). A ``redis.Redis`` is safe to share between
threads (each command borrows a connection from the pool), so this channel keeps one
for as long as its connection pool lives; everything else is kombu's.

Selected by ``worker.app.celery_config`` (``broker_transport``) for ``redis://`` brokers;
``rediss://`` keeps kombu's own, which turns TLS on from the URL's scheme.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kombu.transport import redis as kombu_redis

__all__ = ["Channel", "Transport"]


class Channel(kombu_redis.Channel):
    """A Redis channel that reuses one synchronous client."""

    _shared_client: Any = None

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        if client:
            yield client
            return
        shared = self._shared_client
        if shared is None or shared.connection_pool is not self._pool:  # type: ignore[attr-defined]
            # First use, or the pool was replaced (close, fork, reconnect) after this
            # client was made. Two threads may both build one; either is valid.
            shared = self._shared_client = self._create_client()  # type: ignore[attr-defined]
        yield shared


class Transport(kombu_redis.Transport):
    """kombu's Redis transport with :class:`Channel`."""

    Channel = Channel
