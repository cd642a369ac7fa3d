"""worker.reconciler on a real redis-server: a job whose message is gone is failed with
job_lost after two sweeps; jobs whose message is queued, held or whose lease is alive are
left alone."""

from __future__ import annotations

import json
import uuid

import pytest
import redis

from core import keys
from core.records import JobStore, Start
from worker.reconciler import Reconciler

pytestmark = pytest.mark.integration


@pytest.fixture
def db(redis_url: str) -> redis.Redis:
    client = redis.Redis.from_url(redis_url.rsplit("/", 1)[0] + "/7", decode_responses=True)
    client.flushdb()
    return client


def message(job_id: str) -> bytes:
    return json.dumps({"headers": {"id": job_id}, "body": ""}).encode()


def test_a_lost_job_is_failed_and_the_others_are_left_alone(db: redis.Redis) -> None:
    """Lost (message in no queue, no lease): failed on the second sweep. Queued, held by
    a worker (unacked), or running under a live lease: untouched."""
    store = JobStore(db, ttl_s=600)
    jobs = {name: uuid.uuid4().hex for name in ("lost", "queued", "held", "running")}
    for name, job_id in jobs.items():
        queue = "interactive" if name == "queued" else "nowhere"
        store.create(job_id, "o", enqueue=(queue, message(job_id)))
    db.hset("unacked", "tag-1", json.dumps([json.loads(message(jobs["held"])), "", "batch"]))
    assert store.mark_running(jobs["running"]) is Start.RUN
    reconciler = Reconciler(db, store, ("interactive", "batch"), every_s=0.01, grace_s=0)
    assert reconciler.sweep() == []  # suspects first
    db.delete(f"{keys.PREFIX}reconciler:lock")
    assert reconciler.sweep() == [jobs["lost"]]
    lost = store.get(jobs["lost"])
    assert lost is not None and lost.status == "failed"
    assert lost.error is not None and lost.error.type == "job_lost"
    assert "submit it again" in lost.error.message
    for name in ("queued", "held", "running"):
        assert store.get(jobs[name]).status in ("queued", "running"), name  # type: ignore[union-attr]
    assert jobs["lost"] not in db.zrange(keys.open_jobs(), 0, -1)


def test_only_one_process_sweeps_at_a_time(db: redis.Redis) -> None:
    """Two reconcilers: the second finds the sweep's lock taken and does nothing."""
    store = JobStore(db, ttl_s=600)
    first, second = (Reconciler(db, store, ("interactive",), grace_s=0) for _ in range(2))
    job_id = uuid.uuid4().hex
    store.create(job_id, "o", enqueue=("nowhere", message(job_id)))
    first.sweep()
    assert second.sweep() == []
    assert db.exists(f"{keys.PREFIX}reconciler:lock")
