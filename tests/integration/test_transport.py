"""genq's kombu transport against a real redis-server: one client per channel, and still
kombu's delivery, ack and unacked bookkeeping."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from celery import Celery
from kombu import Connection, Queue

from worker.app import celery_config
from worker.settings import Settings
from worker.transport import Channel

pytestmark = pytest.mark.integration


@pytest.fixture
def connection(redis_url: str) -> Iterator[Connection]:
    with Connection(redis_url, transport="worker.transport:Transport") as conn:
        yield conn


def test_genq_celery_apps_use_it(redis_url: str) -> None:
    assert celery_config(Settings(redis_url=redis_url))["broker_transport"] == (
        "worker.transport:Transport"
    )
    app = Celery("genq-transport-test", set_as_current=False)
    app.conf.update(celery_config(Settings(redis_url=redis_url)))
    with app.connection_for_write() as conn:
        assert isinstance(conn.default_channel, Channel)


def test_a_tls_broker_keeps_kombus_transport_and_its_tls() -> None:
    """kombu turns TLS on from the rediss:// scheme; a named transport would hide it."""
    settings = Settings(redis_url="rediss://localhost:6380/0?ssl_cert_reqs=required")
    config = celery_config(settings)
    assert config["broker_transport"] is None
    app = Celery("genq-tls-test", set_as_current=False)
    app.conf.update(config)
    with app.connection_for_write() as conn:
        assert conn.ssl


def test_a_channel_reuses_one_client_until_its_pools_go(connection: Connection) -> None:
    channel = connection.channel()
    assert isinstance(channel, Channel)
    with channel.conn_or_acquire() as first, channel.conn_or_acquire() as second:
        assert first is second
    given = object()
    with channel.conn_or_acquire(given) as client:
        assert client is given
    channel._disconnect_pools()  # what kombu does after a fork and on close
    with channel.conn_or_acquire() as third:
        assert third is not first
    # A client cached just before its pool was dropped is not reused.
    channel._shared_client = first
    with channel.conn_or_acquire() as fourth:
        assert fourth is not first
        assert fourth.connection_pool is channel._pool


def test_messages_are_delivered_tracked_unacked_and_acked(
    connection: Connection, r: redis.Redis, queue_name: str
) -> None:
    queue = Queue(queue_name)
    with connection.Producer() as producer:
        for i in range(3):
            producer.publish({"n": i}, routing_key=queue_name, declare=[queue])
    received = []
    with connection.SimpleQueue(queue) as simple:
        for _ in range(3):
            message = simple.get(timeout=5)
            # Delivered and not yet acked: kombu keeps it in the unacked hash.
            assert r.hexists("unacked", message.delivery_tag)
            received.append(message.payload["n"])
            message.ack()
            assert not r.hexists("unacked", message.delivery_tag)
    assert received == [0, 1, 2]
    assert r.llen(queue_name) == 0


@pytest.fixture
def queue_name(r: redis.Redis) -> Iterator[str]:
    name = "genq-test-transport"
    r.delete(name)
    yield name
    r.delete(name)
