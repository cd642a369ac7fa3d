"""genq's two queues as Celery declares them, and the messages a batch writes to them."""

from __future__ import annotations

import base64
import json

import pytest
import redis

from api.publish import TaskMessages
from core.contract import QUEUE_BATCH, QUEUE_INTERACTIVE, TASK_GENERATE
from tests.integration.conftest import genq_env, publisher_for, settings_for

pytestmark = pytest.mark.integration


def test_a_publish_by_exchange_reaches_one_queue_only(redis_url: str) -> None:
    """A message sent to a queue's exchange and key lands in that queue and no other."""
    url = redis_url.rsplit("/", 1)[0] + "/4"  # a database of its own: exact lengths
    client = redis.Redis.from_url(url)
    client.flushdb()
    app = publisher_for(settings_for(genq_env(url, "http://127.0.0.1:9")))
    with app.connection_for_write() as conn:
        for queue in app.amqp.queues.values():
            queue.bind(conn).declare()
        for name in (QUEUE_INTERACTIVE, QUEUE_BATCH, QUEUE_BATCH):
            app.send_task(TASK_GENERATE, args=[{}], exchange=name, routing_key=name)
    assert (client.llen(QUEUE_INTERACTIVE), client.llen(QUEUE_BATCH)) == (1, 2)
    client.flushdb()
    client.close()


def test_batch_messages_are_the_ones_kombu_writes(redis_url: str) -> None:
    """A message built by api.publish equals the one send_task writes for the same task,
    but for what differs per publish (delivery tag, reply_to, origin, argsrepr)."""
    url = redis_url.rsplit("/", 1)[0] + "/5"
    client = redis.Redis.from_url(url)
    client.flushdb()
    app = publisher_for(settings_for(genq_env(url, "http://127.0.0.1:9")))
    payload = {"job_id": "req-1", "request": {"prompt": "p ü"}}
    app.send_task(
        TASK_GENERATE, args=[payload], task_id="req-1", queue=QUEUE_BATCH, ignore_result=True
    )
    theirs = json.loads(client.rpop(QUEUE_BATCH))  # type: ignore[arg-type]
    ours = json.loads(TaskMessages(app, QUEUE_BATCH).message("req-1", payload, "[req-1]"))
    assert ours.keys() == theirs.keys()
    assert base64.b64decode(ours["body"]) == base64.b64decode(theirs["body"])
    assert {k: v for k, v in ours.items() if k not in ("body", "headers", "properties")} == {
        k: v for k, v in theirs.items() if k not in ("body", "headers", "properties")
    }
    varying = {"argsrepr", "origin"}
    assert {k: v for k, v in ours["headers"].items() if k not in varying} == {
        k: v for k, v in theirs["headers"].items() if k not in varying
    }
    per_publish = {"delivery_tag", "reply_to"}
    assert {k: v for k, v in ours["properties"].items() if k not in per_publish} == {
        k: v for k, v in theirs["properties"].items() if k not in per_publish
    }
    client.flushdb()
    client.close()
