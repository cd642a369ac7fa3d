"""Session-wide fixtures: a real redis-server on a free port, shared by every test that needs it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from devstack.redis import RedisProcess, ensure_redis_server


@pytest.fixture(scope="session")
def redis_proc() -> Iterator[RedisProcess]:
    """A real redis-server for the whole session; tests may stop and restart it."""
    proc = RedisProcess(ensure_redis_server())
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def redis_url(redis_proc: RedisProcess) -> str:
    return redis_proc.url
