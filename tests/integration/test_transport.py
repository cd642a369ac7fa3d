"""genq's kombu transport against a real redis-server: one client per channel, and still
kombu's delivery, ack and unacked bookkeeping."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterable, Iterator
from queue import Empty
from typing import Any

import pytest
import redis
from celery import Celery
from kombu import Connection, Consumer, Queue

from worker import transport
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
    queue = _publish(connection, queue_name, range(3))
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
    assert r.zcard("unacked_index") == 0


def test_a_rejected_message_is_forgotten_or_requeued(
    connection: Connection, r: redis.Redis, queue_name: str
) -> None:
    queue = _publish(connection, queue_name, range(2))
    with connection.SimpleQueue(queue) as simple:
        dropped = simple.get(timeout=5)
        dropped.reject()
        assert not r.hexists("unacked", dropped.delivery_tag)
        assert r.zscore("unacked_index", dropped.delivery_tag) is None
        kept = simple.get(timeout=5)
        kept.reject(requeue=True)
        assert simple.get(timeout=5).payload == {"n": 1}


def test_kombus_restore_reads_what_it_records(
    connection: Connection, r: redis.Redis, queue_name: str
) -> None:
    """A worker that dies holding a message: kombu's restore puts it back on its queue."""
    queue = _publish(connection, queue_name, [7])
    channel = connection.channel()
    message = channel.basic_get(queue_name)
    assert message is not None
    tag = message.delivery_tag
    assert r.zscore("unacked_index", tag) is not None
    channel.qos.restore_by_tag(tag)
    assert not r.hexists("unacked", tag)
    with connection.SimpleQueue(queue) as simple:
        assert simple.get(timeout=5).payload == {"n": 7}


def test_with_a_key_prefix_kombus_pipelines_keep_the_books(
    redis_url: str, r: redis.Redis, queue_name: str
) -> None:
    """kombu prefixes only an EVALSHA's first key, so a prefixed channel keeps kombu's."""
    options = {"global_keyprefix": "genq-test:"}
    with Connection(
        redis_url, transport="worker.transport:Transport", transport_options=options
    ) as conn:
        queue = _publish(conn, queue_name, [1])
        with conn.SimpleQueue(queue) as simple:
            message = simple.get(timeout=5)
            assert r.hexists("genq-test:unacked", message.delivery_tag)
            assert not r.exists("unacked")
            message.ack()
            assert not r.hexists("genq-test:unacked", message.delivery_tag)
    r.delete("genq-test:unacked", "genq-test:unacked_index", f"genq-test:{queue_name}")


@pytest.fixture
def queue_name(r: redis.Redis) -> Iterator[str]:
    name = "genq-test-transport"
    r.delete(name, "unacked", "unacked_index")
    yield name
    r.delete(name, "unacked", "unacked_index")


def _publish(connection: Connection, queue_name: str, numbers: Iterable[int]) -> Queue:
    """Publish ``{"n": n}`` for each number to ``queue_name``; returns the queue."""
    queue = Queue(queue_name)
    with connection.Producer() as producer:
        for n in numbers:
            producer.publish({"n": n}, routing_key=queue_name, declare=[queue])
    return queue


def _consume(connection: Connection, queue: Queue, prefetch: int) -> tuple[Any, list[Any]]:
    channel = connection.channel()
    channel.basic_qos(0, prefetch, False)
    got: list[Any] = []
    consumer = Consumer(channel, [queue], callbacks=[lambda _, m: got.append(m)])
    consumer.consume()
    return consumer, got


def test_after_a_brpop_finds_work_one_script_call_fetches_up_to_the_prefetch_limit(
    connection: Connection, r: redis.Redis, queue_name: str
) -> None:
    queue = _publish(connection, queue_name, range(6))
    consumer, got = _consume(connection, queue, prefetch=3)
    connection.drain_events(timeout=5)  # a BRPOP: one message
    assert len(got) == 1
    connection.drain_events(timeout=5)  # the script: the two the prefetch limit allows
    assert [m.payload["n"] for m in got] == [0, 1, 2]
    assert r.llen(queue_name) == 3
    # Each was recorded as unacked, in kombu's format, before it left the queue.
    assert r.hlen("unacked") == 3
    for message in got:
        stored = json.loads(r.hget("unacked", message.delivery_tag) or "")
        assert stored[0]["properties"]["delivery_tag"] == message.delivery_tag
        assert stored[1:] == ["", queue_name]
    got[0].ack()
    assert not r.hexists("unacked", got[0].delivery_tag)
    connection.drain_events(timeout=5)  # one slot freed: one more
    assert [m.payload["n"] for m in got] == [0, 1, 2, 3]
    consumer.cancel()


def test_a_fetched_message_that_is_never_acked_is_restored_by_kombu(
    connection: Connection, r: redis.Redis, queue_name: str
) -> None:
    queue = _publish(connection, queue_name, range(2))
    consumer, got = _consume(connection, queue, prefetch=2)
    connection.drain_events(timeout=5)
    connection.drain_events(timeout=5)
    assert len(got) == 2 and r.llen(queue_name) == 0
    fetched = got[1]  # the script's
    got[0].channel.qos.restore_by_tag(fetched.delivery_tag)  # what a dead worker gets
    assert not r.hexists("unacked", fetched.delivery_tag)
    assert r.llen(queue_name) == 1
    consumer.cancel()


def test_the_fetch_script_stops_at_a_message_it_cannot_read_and_leaves_it_for_kombu(
    connection: Connection, r: redis.Redis, queue_name: str
) -> None:
    _publish(connection, queue_name, [1])
    r.lpush(queue_name, "not kombu's message")  # queued behind the first
    script = r.register_script(transport.FETCH)
    status, key, tag, raw = script(keys=[queue_name, "unacked_index", "unacked"], args=[5, 1, 1])
    assert (status, key) == (1, queue_name)
    assert json.loads(raw)["properties"]["delivery_tag"] == tag and r.hexists("unacked", tag)
    assert r.lrange(queue_name, 0, -1) == ["not kombu's message"]


def test_a_refused_fetch_pops_nothing_and_the_channel_fetches_again_later(
    connection: Connection, r: redis.Redis, queue_name: str
) -> None:
    """Not a BRPOP: it would pop a message whose unacked record could then be refused."""
    queue = _publish(connection, queue_name, [1])
    consumer, got = _consume(connection, queue, prefetch=4)
    channel = consumer.channel
    channel._fetch_next = True
    r.config_set("maxmemory", 1)  # noeviction: every write that needs memory is refused
    try:
        connection.transport.cycle._register_BRPOP(channel)  # sends the fetch
        with pytest.raises(Empty):
            channel._brpop_read()
        assert r.llen(queue_name) == 1 and r.hlen("unacked") == 0 and not got
        r.config_resetstat()
        connection.transport.cycle._register_BRPOP(channel)  # held: no poll at all
        assert not channel._in_poll
        assert "cmdstat_brpop" not in r.info("commandstats")
    finally:
        r.config_set("maxmemory", 0)
    deadline = time.monotonic() + 5
    while not got and time.monotonic() < deadline:
        with contextlib.suppress(TimeoutError):
            connection.drain_events(timeout=0.3)  # after HOLD_S, the script again
    assert [m.payload["n"] for m in got] == [1]
    assert r.hexists("unacked", got[0].delivery_tag)
    consumer.cancel()


def test_a_fetched_message_is_recorded_by_the_script_alone(
    connection: Connection, r: redis.Redis, queue_name: str
) -> None:
    queue = _publish(connection, queue_name, range(3))
    consumer, got = _consume(connection, queue, prefetch=3)
    connection.drain_events(timeout=5)  # BRPOP, then RECORD: one EVALSHA
    r.config_resetstat()
    connection.drain_events(timeout=5)  # the script: two messages, no RECORD call
    assert len(got) == 3
    stats = r.info("commandstats")
    assert stats["cmdstat_eval"]["calls"] == 1 and "cmdstat_evalsha" not in stats
    consumer.cancel()


def test_queues_take_turns_within_a_fetch(
    connection: Connection, r: redis.Redis, queue_name: str
) -> None:
    other = f"{queue_name}-other"
    r.delete(other)
    queues = [Queue(queue_name), Queue(other)]
    with connection.Producer() as producer:
        for i in range(4):
            for queue in queues:
                producer.publish({"q": queue.name, "n": i}, routing_key=queue.name, declare=[queue])
    channel = connection.channel()
    channel.basic_qos(0, 5, False)
    got: list[Any] = []
    consumer = Consumer(channel, queues, callbacks=[lambda _, m: got.append(m)])
    consumer.consume()
    connection.drain_events(timeout=5)  # BRPOP: one
    connection.drain_events(timeout=5)  # the script: four, two from each queue
    assert sorted(m.payload["q"] for m in got[1:]) == sorted([queue_name, other] * 2)
    consumer.cancel()
    r.delete(other)


def test_while_a_consumer_does_not_ack_the_channel_polls_with_brpop(
    connection: Connection, r: redis.Redis, queue_name: str
) -> None:
    """Celery's startup mingle consumes without acks on the task channel, then cancels."""
    replies = f"{queue_name}-replies"
    queue = _publish(connection, queue_name, range(4))
    consumer, got = _consume(connection, queue, prefetch=4)
    channel = consumer.channel
    no_ack = Consumer(channel, [Queue(replies)], no_ack=True)
    no_ack.consume()
    connection.drain_events(timeout=5)
    connection.drain_events(timeout=5)
    assert len(got) == 2  # one per BRPOP
    no_ack.cancel()
    connection.drain_events(timeout=5)
    assert len(got) == 4  # the last BRPOP found work: the script took the other two
    consumer.cancel()
    r.delete(replies)


def test_after_a_delivery_fails_the_rest_of_the_batch_goes_back_at_once(
    connection: Connection, r: redis.Redis, queue_name: str
) -> None:
    queue = _publish(connection, queue_name, range(4))
    channel = connection.channel()
    channel.basic_qos(0, 4, False)
    got: list[Any] = []

    def take(_: object, message: Any) -> None:
        got.append(message)
        if message.payload["n"] == 1:
            raise RuntimeError("the consumer fails on this one")

    consumer = Consumer(channel, [queue], callbacks=[take])
    consumer.consume()
    connection.drain_events(timeout=5)  # BRPOP: n=0
    with pytest.raises(RuntimeError):
        connection.drain_events(timeout=5)  # the script took 1, 2 and 3; 1 fails
    assert [m.payload["n"] for m in got] == [0, 1]
    assert r.llen(queue_name) == 2  # 2 and 3, back without waiting for a restore
    assert sorted(r.hkeys("unacked")) == sorted(m.delivery_tag for m in got)
    consumer.cancel()
