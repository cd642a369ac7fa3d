"""genq's two queues as Celery declares them, and the messages a batch writes to them."""

from __future__ import annotations

import asyncio
import base64
import json

import pytest
import redis
from redis import asyncio as aioredis

from api.auth import Principal
from api.publish import TaskMessages
from api.routes.jobs import _publish
from core.contract import (
    ENQUEUED_AT_HEADER,
    QUEUE_BATCH,
    QUEUE_INTERACTIVE,
    REQUEST_ID_HEADER,
    TASK_GENERATE,
    GenerateRequest,
)
from core.records import AsyncJobs, JobRecord
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
    """A message built by api.publish equals the one send_task writes for the same task
    and headers, but for what differs per publish (delivery tag, reply_to, origin,
    argsrepr)."""
    url = redis_url.rsplit("/", 1)[0] + "/5"
    client = redis.Redis.from_url(url)
    client.flushdb()
    app = publisher_for(settings_for(genq_env(url, "http://127.0.0.1:9")))
    payload = {"job_id": "req-1", "request": {"prompt": "p ü"}}
    headers = {REQUEST_ID_HEADER: "r-1", ENQUEUED_AT_HEADER: 1700000000.25}
    app.send_task(
        TASK_GENERATE,
        args=[payload],
        task_id="req-1",
        queue=QUEUE_BATCH,
        ignore_result=True,
        headers=headers,
    )
    theirs = json.loads(client.rpop(QUEUE_BATCH))  # type: ignore[arg-type]
    built = TaskMessages(app, QUEUE_BATCH).message("req-1", payload, "[req-1]", "r-1", 1.7e9 + 0.25)
    ours = json.loads(built)
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


def test_task_messages_show_flower_ids_never_prompts(redis_url: str) -> None:
    """What Flower shows of a job's or a batch item's task (argsrepr) holds its id, not
    the prompt the task carries."""
    url = redis_url.rsplit("/", 1)[0] + "/6"
    client = redis.Redis.from_url(url)
    client.flushdb()
    app = publisher_for(settings_for(genq_env(url, "http://127.0.0.1:9")))
    secret = "a very private prompt"

    async def publish() -> JobRecord:
        jobs = AsyncJobs(aioredis.Redis.from_url(url, decode_responses=True), ttl_s=60)
        return await _publish(GenerateRequest(prompt=secret), Principal("owner", False), jobs, app)

    record = asyncio.run(publish())
    job = json.loads(client.rpop(QUEUE_INTERACTIVE))  # type: ignore[arg-type]
    assert job["headers"]["argsrepr"] == f"[{record.id!r}]"
    item = TaskMessages(app, QUEUE_BATCH).message("req-9", {"request": {"prompt": secret}}, "[id]")
    assert secret not in json.loads(item)["headers"]["argsrepr"]
    assert secret not in json.dumps(job["headers"])
    client.flushdb()
    client.close()
