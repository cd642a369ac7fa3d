"""Redis clients, made on first use and kept one per process.

No client exists at import time. Every client has explicit connect and socket
timeouts, so a hung Redis becomes an error the caller can handle, never a hang.
"""

from __future__ import annotations

import functools
import os

import redis

from core.settings import Settings, get_settings

__all__ = ["get_redis", "redis_from_settings"]


def redis_from_settings(settings: Settings) -> redis.Redis:
    """A new client for ``settings.redis_url`` with genq's timeouts."""
    return redis.Redis.from_url(
        str(settings.redis_url),
        socket_timeout=settings.redis_socket_timeout_s,
        socket_connect_timeout=settings.redis_socket_timeout_s,
        health_check_interval=30,
        decode_responses=True,
    )


@functools.cache
def _client_for(pid: int) -> redis.Redis:
    # Keyed on the pid: a client inherited through fork() would share its sockets.
    return redis_from_settings(get_settings())


def get_redis() -> redis.Redis:
    """This process's Redis client (decoded strings), created on first use."""
    return _client_for(os.getpid())
