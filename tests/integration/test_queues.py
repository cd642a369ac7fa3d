"""genq's two queues as Celery declares them: each receives only what is routed to it."""

from __future__ import annotations

import pytest
import redis

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
