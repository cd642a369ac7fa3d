"""Redis clients, made on first use and kept one per process.

No client exists at import time. Every client has explicit connect and socket
timeouts, so a hung Redis becomes an error the caller can handle, never a hang.
``GENQ_REDIS_URL`` may name Redis directly (``redis://``, ``rediss://``) or through
Redis Sentinel (``sentinel://``), where the client follows the master named by
``GENQ_REDIS_SENTINEL_MASTER`` across failovers.
"""

from __future__ import annotations

import functools
import os
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
from redis import asyncio as aioredis
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.sentinel import Sentinel

from core.settings import Settings, get_settings

__all__ = [
    "MIN_POOL",
    "async_redis_from_settings",
    "get_async_redis",
    "get_binary_redis",
    "get_redis",
    "redis_from_settings",
    "sentinel_options",
]

MIN_POOL = 1000
"""Connections a process's pools (Redis, and each upstream host's HTTP pool) may keep at
least: above any thread count a worker is run with, unless GENQ_WORKER_CONCURRENCY says
more. A pool holds only what its threads use at once."""


def _common(settings: Settings, decode: bool) -> dict[str, Any]:
    return {
        "socket_timeout": settings.redis_socket_timeout_s,
        "socket_connect_timeout": settings.redis_socket_timeout_s,
        "health_check_interval": 30,
        "decode_responses": decode,
        # redis-py 8 caps a pool at 100 connections and raises past it. A worker thread
        # holds one at a time (a slot wait's BLPOP too), so every thread must find one,
        # with room for the heartbeat, the reconciler and the breakers, even when a
        # `celery worker -c N` overrides GENQ_WORKER_CONCURRENCY.
        "max_connections": max(MIN_POOL, settings.worker_concurrency + 100),
    }


def _sentinel_target(settings: Settings) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    """The sentinels of a ``sentinel://`` URL, and how to reach the master they name."""
    parts = [urlsplit(part.strip()) for part in settings.redis_url.split(";")]
    first = parts[0]
    sentinels = [(url.hostname or "localhost", url.port or 26379) for url in parts]
    master: dict[str, Any] = {
        "service_name": settings.redis_sentinel_master or "",
        "db": int(first.path.strip("/") or 0),
        "username": unquote(first.username) if first.username else None,
        "password": unquote(first.password) if first.password else None,
    }
    return sentinels, master


def redis_from_settings(settings: Settings, *, decode: bool = True) -> redis.Redis:
    """A new client for ``settings.redis_url`` with genq's timeouts; it answers strings
    (``decode``) or bytes."""
    common = _common(settings, decode)
    if not settings.uses_sentinel:
        return redis.Redis.from_url(settings.redis_url, **common)
    sentinels, master = _sentinel_target(settings)
    sentinel = Sentinel(sentinels, sentinel_kwargs=sentinel_options(settings))
    client: redis.Redis = sentinel.master_for(**master, **common)
    return client


def async_redis_from_settings(settings: Settings) -> aioredis.Redis:
    """The same client for asyncio (strings), for the API's async routes."""
    common = _common(settings, decode=True)
    if not settings.uses_sentinel:
        return aioredis.Redis.from_url(settings.redis_url, **common)
    sentinels, master = _sentinel_target(settings)
    sentinel = AsyncSentinel(sentinels, sentinel_kwargs=sentinel_options(settings))
    client: aioredis.Redis = sentinel.master_for(**master, **common)
    return client


def sentinel_options(settings: Settings) -> dict[str, Any]:
    """How to talk to the sentinels themselves: timeouts and their own password, if any.

    redis-py copies the timeouts to sentinel connections only when this is not given, so
    they are always given here."""
    options: dict[str, Any] = {
        "socket_timeout": settings.redis_socket_timeout_s,
        "socket_connect_timeout": settings.redis_socket_timeout_s,
    }
    if settings.redis_sentinel_password is not None:
        options["password"] = settings.redis_sentinel_password.get_secret_value()
    return options


@functools.cache
def _client_for(pid: int, decode: bool = True) -> redis.Redis:
    # Keyed on the pid: a client inherited through fork() would share its sockets.
    return redis_from_settings(get_settings(), decode=decode)


def get_redis() -> redis.Redis:
    """This process's Redis client (decoded strings), created on first use."""
    return _client_for(os.getpid())


@functools.cache
def _async_client_for(pid: int) -> aioredis.Redis:
    return async_redis_from_settings(get_settings())


def get_async_redis() -> aioredis.Redis:
    """This process's asyncio Redis client (decoded strings), created on first use; use
    it from one event loop (the API's)."""
    return _async_client_for(os.getpid())


def get_binary_redis() -> redis.Redis:
    """This process's Redis client for bytes (file contents), created on first use."""
    return _client_for(os.getpid(), False)
