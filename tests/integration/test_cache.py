"""worker.cache.ResultCache against a real redis-server: round trip, TTL, size bound, failures."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from core import keys
from devstack.redis import free_port
from worker.cache import CachedGeneration, ResultCache

pytestmark = pytest.mark.integration

TTL_S = 600
ENTRY = CachedGeneration(
    text="Redis keeps keys — ключи, 鍵.",
    model="simulator/echo-1",
    usage={"prompt_tokens": 5, "completion_tokens": 9},
    created_at=1_764_000_000.25,
)


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    """A client like genq's own (decoded strings, explicit timeouts)."""
    conn = redis.Redis.from_url(
        redis_url, decode_responses=True, socket_timeout=2, socket_connect_timeout=2
    )
    yield conn
    conn.close()


@pytest.fixture
def key() -> str:
    return keys.cache(uuid.uuid4().hex)


def test_put_then_get_returns_the_entry(client: redis.Redis, key: str) -> None:
    """What put stores, get returns field for field."""
    cache = ResultCache(client, ttl_s=TTL_S, max_entry_bytes=64 * 1024)
    assert cache.put(key, ENTRY) is True
    assert cache.get(key) == ENTRY


def test_entry_without_usage_round_trips(client: redis.Redis, key: str) -> None:
    """An entry whose usage is None comes back with usage None."""
    cache = ResultCache(client, ttl_s=TTL_S, max_entry_bytes=64 * 1024)
    entry = CachedGeneration("t", "m", None, 1.0)
    assert cache.put(key, entry)
    assert cache.get(key) == entry


def test_text_with_a_lone_surrogate_round_trips(client: redis.Redis, key: str) -> None:
    """Upstream text holding a lone surrogate (valid JSON, not UTF-8) is stored and read back."""
    cache = ResultCache(client, ttl_s=TTL_S, max_entry_bytes=64 * 1024)
    entry = CachedGeneration("broken \ud800 pair, ключ", "m", None, 2.0)
    assert cache.put(key, entry) is True
    assert cache.get(key) == entry


def test_missing_key_is_a_miss(client: redis.Redis, key: str) -> None:
    """get of a key never written returns None."""
    assert ResultCache(client, ttl_s=TTL_S, max_entry_bytes=1024).get(key) is None


def test_put_sets_the_ttl(client: redis.Redis, key: str) -> None:
    """A stored entry expires: its TTL is within (0, ttl_s]."""
    assert ResultCache(client, ttl_s=TTL_S, max_entry_bytes=64 * 1024).put(key, ENTRY)
    assert 0 < client.ttl(key) <= TTL_S


def test_entry_expires_after_its_ttl(client: redis.Redis, key: str) -> None:
    """After ttl_s seconds the entry is gone and get misses."""
    cache = ResultCache(client, ttl_s=1, max_entry_bytes=64 * 1024)
    assert cache.put(key, ENTRY)
    deadline = time.monotonic() + 5
    while cache.get(key) is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert cache.get(key) is None


def test_oversized_entry_is_not_stored(
    client: redis.Redis, key: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An entry one byte over max_entry_bytes is refused and nothing is written."""
    size = len(ENTRY.encode())
    with caplog.at_level(logging.INFO, logger="worker.cache"):
        assert ResultCache(client, ttl_s=TTL_S, max_entry_bytes=size - 1).put(key, ENTRY) is False
    assert client.exists(key) == 0
    assert "cache.entry_too_large" in caplog.text


def test_entry_of_exactly_the_limit_is_stored(client: redis.Redis, key: str) -> None:
    """An entry whose encoded size equals max_entry_bytes is stored."""
    size = len(ENTRY.encode())
    assert ResultCache(client, ttl_s=TTL_S, max_entry_bytes=size).put(key, ENTRY) is True
    assert client.strlen(key) == size


@pytest.mark.parametrize(
    "raw",
    [
        "not json",
        "[1, 2]",
        '{"text": 1, "model": "m", "usage": null, "created_at": 1}',
        '{"text": "t", "model": "m", "usage": {"n": "many"}, "created_at": 1}',
        '{"text": "t", "model": "m", "usage": null, "created_at": true}',
        '{"text": "t", "model": "m", "usage": null}',
        b"\xff\xfe not utf-8",
    ],
)
def test_corrupt_entry_is_a_miss(
    client: redis.Redis, key: str, raw: str | bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """A value that is not a cached generation reads as None, logged as cache.corrupt."""
    client.set(key, raw)
    with caplog.at_level(logging.WARNING, logger="worker.cache"):
        assert ResultCache(client, ttl_s=TTL_S, max_entry_bytes=1024).get(key) is None
    assert "cache.corrupt" in caplog.text


def test_key_of_another_type_is_a_miss(client: redis.Redis, key: str) -> None:
    """A key holding a hash (WRONGTYPE) reads as None and refuses no job."""
    client.hset(key, "text", "t")
    assert ResultCache(client, ttl_s=TTL_S, max_entry_bytes=1024).get(key) is None


def test_unreachable_redis_reads_none_and_writes_false(
    key: str, caplog: pytest.LogCaptureFixture
) -> None:
    """With nothing listening, get returns None and put False, quickly and without raising."""
    dead = redis.Redis(
        host="127.0.0.1",
        port=free_port(),
        socket_timeout=0.2,
        socket_connect_timeout=0.2,
        retry=Retry(NoBackoff(), 0),  # redis-py's default retries would take ~4.5 s per call
    )
    cache = ResultCache(dead, ttl_s=TTL_S, max_entry_bytes=64 * 1024)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="worker.cache"):
        assert cache.get(key) is None
        assert cache.put(key, ENTRY) is False
    assert time.monotonic() - started < 2
    assert caplog.text.count("cache.unavailable") == 2


def test_bytes_client_reads_what_a_str_client_wrote(
    client: redis.Redis, redis_url: str, key: str
) -> None:
    """A client without decode_responses reads the same entry back."""
    assert ResultCache(client, ttl_s=TTL_S, max_entry_bytes=64 * 1024).put(key, ENTRY)
    raw_client = redis.Redis.from_url(redis_url, socket_timeout=2)
    try:
        assert ResultCache(raw_client, ttl_s=TTL_S, max_entry_bytes=1024).get(key) == ENTRY
    finally:
        raw_client.close()
