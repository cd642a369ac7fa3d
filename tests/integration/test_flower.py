"""Flower, started as the Procfile starts it, shows genq's queues behind its login."""

from __future__ import annotations

import re
import secrets
import uuid

import pytest
import redis
import requests

from core.contract import QUEUE_BATCH, QUEUE_INTERACTIVE, TASK_GENERATE, GenerateRequest, JobMessage
from devstack.redis import RedisProcess, free_port
from tests.integration.conftest import (
    genq_env,
    publisher_for,
    settings_for,
    start_flower,
    wait_http,
)
from tests.integration.redis_support import log_path, stop, unique

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

QUEUED = {QUEUE_INTERACTIVE: 3, QUEUE_BATCH: 5}


def test_flower_shows_queue_lengths_only_to_its_login(redis_proc: RedisProcess) -> None:
    """With N jobs queued per queue and no worker, Flower's queue API and Broker page show
    exactly those counts with FLOWER_BASIC_AUTH, answer 401 without it, and keep
    /metrics and /healthcheck open."""
    redis_url = redis_proc.url.rsplit("/", 1)[0] + "/3"  # own database: exact queue lengths
    redis.Redis.from_url(redis_url).flushdb()
    password = secrets.token_urlsafe(18)
    env = genq_env(redis_url, "http://127.0.0.1:9", FLOWER_BASIC_AUTH=f"genq:{password}")
    publisher = publisher_for(settings_for(env))
    for queue, count in QUEUED.items():
        for i in range(count):
            message = JobMessage(job_id=uuid.uuid4().hex, request=GenerateRequest(prompt=f"{i}"))
            publisher.send_task(
                TASK_GENERATE,
                args=[message.model_dump(mode="json")],
                task_id=message.job_id,
                queue=queue,
                ignore_result=True,
            )

    port = free_port()
    log_name = unique("flower")
    flower = start_flower(env, port, log_name)
    url = f"http://127.0.0.1:{port}"
    login = ("genq", password)
    try:
        wait_http(f"{url}/healthcheck", timeout_s=20)

        lengths = requests.get(f"{url}/api/queues/length", auth=login, timeout=10)
        assert lengths.status_code == 200, lengths.text
        shown = {q["name"]: q["messages"] for q in lengths.json()["active_queues"]}
        assert shown == QUEUED

        broker = requests.get(f"{url}/broker", auth=login, timeout=10)
        assert broker.status_code == 200
        for queue, count in QUEUED.items():
            row = rf'<tr id="{queue}">\s*<td>{queue}</td>\s*<td[^>]*>{count}</td>'
            assert re.search(row, broker.text), f"no row '{queue}: {count}' on /broker"

        for path in ("/api/queues/length", "/broker", "/"):
            assert requests.get(f"{url}{path}", timeout=10).status_code == 401, path
        wrong = ("genq", "not-" + password)
        assert requests.get(f"{url}/api/queues/length", auth=wrong, timeout=10).status_code == 401

        for path in ("/metrics", "/healthcheck"):  # open by Flower's design
            assert requests.get(f"{url}{path}", timeout=10).status_code == 200, path
    finally:
        stop(flower)
    assert password not in log_path(log_name).read_text(errors="replace")
