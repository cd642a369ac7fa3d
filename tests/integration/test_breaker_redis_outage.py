"""Redis going away and coming back: calls go on under the local breaker, then follow Redis."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from core.errors import CircuitOpenError, UpstreamUnavailable
from devstack.redis import RedisProcess, ensure_redis_server, free_port
from worker.breaker import REDIS_RETRY_S, SharedCircuitBreaker

pytestmark = pytest.mark.integration


@pytest.fixture
def own_redis() -> Iterator[RedisProcess]:
    """A redis-server this test alone may kill and restart."""
    proc = RedisProcess(ensure_redis_server(say=lambda _: None))
    proc.start()
    yield proc
    proc.stop()


def client_for(url: str) -> redis.Redis:
    return redis.Redis.from_url(
        url, decode_responses=True, socket_timeout=0.5, socket_connect_timeout=0.5
    )


def boom() -> None:
    raise UpstreamUnavailable("down", status=503)


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage() == name]


def test_calls_go_on_through_a_redis_outage_and_resync(
    own_redis: RedisProcess, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis killed: no Redis error reaches callers, one warning, local trips; back: Redis wins."""
    caplog.set_level(logging.INFO, logger="worker.breaker")
    name = f"outage-{uuid.uuid4().hex[:8]}"
    breaker = SharedCircuitBreaker(name, client_for(own_redis.url), fail_max=3, reset_timeout=0.3)
    assert breaker.call(lambda: "before") == "before"
    own_redis.stop()
    for i in range(20):
        assert breaker.call(int, i) == i
    for _ in range(3):
        with pytest.raises(UpstreamUnavailable):
            breaker.call(boom)
    with pytest.raises(CircuitOpenError) as local:
        breaker.call(lambda: None)
    assert local.value.retry_after is not None and local.value.retry_after <= 0.3
    assert len(events(caplog, "breaker.redis_unavailable")) == 1

    own_redis.start()  # same port, empty: another process trips the circuit there
    other = SharedCircuitBreaker(name, client_for(own_redis.url), fail_max=3, reset_timeout=30)
    for _ in range(3):
        with pytest.raises(UpstreamUnavailable):
            other.call(boom)
    time.sleep(REDIS_RETRY_S + 0.1)
    with pytest.raises(CircuitOpenError) as shared:
        breaker.call(lambda: None)
    assert (shared.value.retry_after or 0) > 25  # Redis's 30 s window, not the local 0.3 s
    assert len(events(caplog, "breaker.redis_restored")) == 1
    assert len(events(caplog, "breaker.redis_unavailable")) == 1


def test_a_breaker_works_when_redis_was_never_there(caplog: pytest.LogCaptureFixture) -> None:
    """Built against a port nobody listens on, the breaker admits calls and warns once."""
    caplog.set_level(logging.WARNING, logger="worker.breaker")
    client = client_for(f"redis://127.0.0.1:{free_port()}/0")
    breaker = SharedCircuitBreaker("nowhere", client, fail_max=2)
    assert [breaker.call(int, n) for n in range(10)] == list(range(10))
    assert breaker.current_state == "closed"
    assert len(events(caplog, "breaker.redis_unavailable")) == 1
