"""Reliability tests run against real processes, with the integration suite's fixtures."""

from collections.abc import Iterator

import pytest

from devstack.redis import RedisProcess, ensure_redis_server
from tests.integration.conftest import (  # noqa: F401 - fixtures, found by name
    api_url,
    celery_session_app,
    celery_worker_parameters,
    celery_worker_pool,
    genq_settings,
    r,
    sim,
    simulator,
)


@pytest.fixture
def own_redis() -> Iterator[RedisProcess]:
    """A redis-server of the test's own: what it does to Redis touches no other test."""
    proc = RedisProcess(ensure_redis_server(say=lambda _: None))
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()
