"""worker.reconciler on a real redis-server: a job (or batch item) whose message is gone
is failed with job_lost after two sweeps; those whose message is queued, held or whose
lease is alive are left alone, and a batch's counts still add up."""

from __future__ import annotations

import json
import uuid

import pytest
import redis

from core import keys
from core.batches import BatchStore, item_request_id
from core.files import FileStore
from core.records import JobStore, Start
from worker.reconciler import MAX_SCAN, Reconciler

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


def start_batch(db: redis.Redis, total: int, present: set[int]) -> tuple[BatchStore, str]:
    """A started batch of ``total`` items read from a real input file; only the items in
    ``present`` have their message in the batch queue."""
    batches, files = BatchStore(db, ttl_s=600), FileStore(db, ttl_s=600)
    lines = [json.dumps({"custom_id": f"req-{i}", "body": {}}) for i in range(total)]
    upload = files.upload("o", "in.jsonl", "batch", ["\n\n".join(lines).encode()], 10**6)
    batch = batches.create("o", upload.id, "/v1/chat/completions", "24h", None, "f-o", "f-e")
    ids = [item_request_id(batch.id, i) for i in range(total)]
    queued = [message(ids[i]) for i in range(total) if i in present]  # the others': lost
    assert batches.start(batch.id, "batch", queued, total)
    return batches, batch.id


def sweep_twice(reconciler: Reconciler, db: redis.Redis) -> list[str]:
    assert reconciler.sweep() == []  # suspects first
    db.delete(f"{keys.PREFIX}reconciler:lock")
    return reconciler.sweep()


def test_a_lost_batch_item_gets_its_error_line_and_the_counts_add_up(db: redis.Redis) -> None:
    """Of four items: one queued, one running under its lease, one done, one lost. The
    lost one ends in the error file with its custom_id and job_lost; the others are left
    to run; when they end, the batch completes with exact counts and leaves the index."""
    batches, batch_id = start_batch(db, 4, present={0})
    rid = [item_request_id(batch_id, i) for i in range(4)]
    assert batches.item_start(batch_id, 1, rid[1]) is Start.RUN
    assert batches.item_finish(batch_id, 2, rid[2], "{}", error=False, source="upstream")
    files = FileStore(db, ttl_s=600)
    queues = ("interactive", "batch")
    reconciler = Reconciler(db, JobStore(db, 600), queues, batches=batches, files=files, grace_s=0)
    assert sweep_twice(reconciler, db) == [rid[3]]
    errors = [json.loads(line) for line in batches.lines(batch_id, "error")]
    assert [(e["id"], e["custom_id"], e["error"]["code"]) for e in errors] == [
        (rid[3], "req-3", "job_lost")
    ]
    batch = batches.get(batch_id)
    assert batch is not None and batch.status == "in_progress"
    assert (batch.counts["completed"], batch.counts["failed"]) == (1, 1)
    assert batches.unfinished(batch_id, 4) == [0, 1]

    assert batches.item_start(batch_id, 0, rid[0]) is Start.RUN
    for i in (0, 1):
        assert batches.item_finish(batch_id, i, rid[i], "{}", error=False, source="cache")
    batch = batches.get(batch_id)
    assert batch is not None and batch.status == "completed"
    assert (batch.counts["completed"], batch.counts["failed"]) == (3, 1)
    db.delete(f"{keys.PREFIX}reconciler:lock")
    reconciler.sweep()
    assert batch_id not in batches.started()


def test_a_lost_item_of_a_cancelling_batch_is_counted_cancelled(db: redis.Redis) -> None:
    """Being cancelled, the batch was waiting on an item whose message is gone: it is
    counted cancelled (no error line) and the batch ends cancelled."""
    batches, batch_id = start_batch(db, 2, present=set())
    rid = [item_request_id(batch_id, i) for i in range(2)]
    assert batches.item_start(batch_id, 0, rid[0]) is Start.RUN
    assert batches.item_finish(batch_id, 0, rid[0], "{}", error=False, source="upstream")
    batches.cancel(batch_id)
    reconciler = Reconciler(db, JobStore(db, 600), ("batch",), batches=batches, grace_s=0)
    assert sweep_twice(reconciler, db) == [rid[1]]
    batch = batches.get(batch_id)
    assert batch is not None and batch.status == "cancelled"
    assert (batch.counts["completed"], batch.counts["cancelled"]) == (1, 1)
    assert list(batches.lines(batch_id, "error")) == []


def test_the_sweep_waits_while_the_queues_hold_a_backlog(db: redis.Redis) -> None:
    """Over MAX_SCAN queued messages nothing is failed (a job waiting in a backlog is not
    lost); once the backlog has drained, the lost job is found."""
    store = JobStore(db, ttl_s=600)
    job_id = uuid.uuid4().hex
    store.create(job_id, "o", enqueue=("nowhere", message(job_id)))
    db.lpush("interactive", *[message(f"other-{i}") for i in range(MAX_SCAN + 1)])
    reconciler = Reconciler(db, store, ("interactive",), grace_s=0)
    assert sweep_twice(reconciler, db) == []
    db.delete("interactive", f"{keys.PREFIX}reconciler:lock")
    assert sweep_twice(reconciler, db) == [job_id]
