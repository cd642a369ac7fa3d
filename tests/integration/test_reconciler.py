"""worker.reconciler on a real redis-server: a job (or batch item) whose message is gone
is sent again after two sweeps (failed with job_lost only when it cannot be); those whose
message is queued, held or whose lease is alive are left alone, and a batch's counts
still add up."""

from __future__ import annotations

import json
import uuid

import pytest
import redis

from core import keys
from core.batches import BatchStore, item_request_id
from core.contract import ErrorType, JobError
from core.files import FileStore
from core.records import MAX_REPUBLISH, JobStore, Start
from core.stats import tally
from worker.reconciler import MAX_SCAN, Reconciler

pytestmark = pytest.mark.integration

COUNTED = tally("batch", "test-item")


@pytest.fixture
def db(redis_url: str) -> redis.Redis:
    client = redis.Redis.from_url(redis_url.rsplit("/", 1)[0] + "/7", decode_responses=True)
    client.flushdb()
    return client


def message(job_id: str) -> bytes:
    return json.dumps({"headers": {"id": job_id}, "body": ""}).encode()


def lose(db: redis.Redis, queue: str, *messages: bytes) -> None:
    """What a worker killed between BRPOP and recording it unacked does to a message."""
    for lost in messages:
        assert db.lrem(queue, 1, lost) == 1


def test_a_lost_job_is_sent_again_and_the_others_are_left_alone(db: redis.Redis) -> None:
    """Lost (message in no queue, no lease): on the second sweep the message its record
    kept is back on its queue, byte for byte, and nothing is failed. Queued, held by a
    worker (unacked), or running under a live lease: untouched."""
    store = JobStore(db, ttl_s=600)
    jobs = {name: uuid.uuid4().hex for name in ("lost", "queued", "held", "running")}
    for job_id in jobs.values():
        store.create(job_id, "o", enqueue=("interactive", message(job_id)))
    lose(db, "interactive", *(message(jobs[name]) for name in ("lost", "held", "running")))
    db.hset("unacked", "tag-1", json.dumps([json.loads(message(jobs["held"])), "", "batch"]))
    assert store.mark_running(jobs["running"]) is Start.RUN
    reconciler = Reconciler(db, store, ("interactive", "batch"), every_s=0.01, grace_s=0)
    assert reconciler.sweep() == []  # suspects first
    db.delete(f"{keys.PREFIX}reconciler:lock")
    assert reconciler.sweep() == []
    assert reconciler.republished == 1
    queued = db.lrange("interactive", 0, -1)
    assert sorted(queued) == sorted(message(jobs[n]).decode() for n in ("queued", "lost"))
    for name in ("lost", "queued", "held", "running"):
        assert store.get(jobs[name]).status in ("queued", "running"), name  # type: ignore[union-attr]
    assert jobs["lost"] in db.zrange(keys.open_jobs(), 0, -1)


def test_a_final_job_keeps_no_copy_of_its_message(db: redis.Redis) -> None:
    """The record keeps its message while the job is open, and drops it when it ends."""
    store = JobStore(db, ttl_s=600)
    job_id = uuid.uuid4().hex
    store.create(job_id, "o", enqueue=("interactive", message(job_id)))
    assert db.hget(keys.job(job_id), "message") == message(job_id).decode()
    assert store.finish(job_id, error=JobError(type=ErrorType.INTERNAL_ERROR, message="x"))
    assert db.hmget(keys.job(job_id), "message", "queue") == [None, None]


@pytest.mark.parametrize(
    ("damage", "why"),
    [("no copy", "kept no copy"), ("lost again and again", f"{MAX_REPUBLISH + 1} times")],
)
def test_a_lost_job_that_cannot_be_sent_again_is_failed_saying_why(
    db: redis.Redis, damage: str, why: str
) -> None:
    """A record that kept no message, or a message lost MAX_REPUBLISH + 1 times: job_lost,
    and the error says which."""
    store = JobStore(db, ttl_s=600)
    job_id = uuid.uuid4().hex
    store.create(job_id, "o", enqueue=("interactive", message(job_id)))
    reconciler = Reconciler(db, store, ("interactive",), grace_s=0)
    if damage == "no copy":
        db.hdel(keys.job(job_id), "message")
    else:
        for _ in range(MAX_REPUBLISH):
            lose(db, "interactive", message(job_id))
            assert sweep_twice(reconciler, db) == []
    lose(db, "interactive", message(job_id))
    assert sweep_twice(reconciler, db) == [job_id]
    lost = store.get(job_id)
    assert lost is not None and lost.status == "failed"
    assert lost.error is not None and lost.error.type == "job_lost"
    assert why in lost.error.message and "submit it again" in lost.error.message
    assert job_id not in db.zrange(keys.open_jobs(), 0, -1)


def test_only_one_process_sweeps_at_a_time(db: redis.Redis) -> None:
    """Two reconcilers: the second finds the sweep's lock taken and does nothing."""
    store = JobStore(db, ttl_s=600)
    first, second = (Reconciler(db, store, ("interactive",), grace_s=0) for _ in range(2))
    job_id = uuid.uuid4().hex
    store.create(job_id, "o", enqueue=("interactive", message(job_id)))
    first.sweep()
    assert second.sweep() == []
    assert db.exists(f"{keys.PREFIX}reconciler:lock")


def start_batch(db: redis.Redis, total: int, present: set[int]) -> tuple[BatchStore, str]:
    """A started batch of ``total`` items read from a real input file; only the items in
    ``present`` still have their message in the batch queue."""
    batches, files = BatchStore(db, ttl_s=600), FileStore(db, ttl_s=600)
    lines = [json.dumps({"custom_id": f"req-{i}", "body": {}}) for i in range(total)]
    upload = files.upload("o", "in.jsonl", "batch", ["\n\n".join(lines).encode()], 10**6)
    batch = batches.create("o", upload.id, "/v1/chat/completions", "24h", None, "f-o", "f-e")
    ids = [item_request_id(batch.id, i) for i in range(total)]
    assert batches.start(batch.id, "o", "batch", [message(i) for i in ids], total)
    lose(db, "batch", *(message(ids[i]) for i in range(total) if i not in present))
    return batches, batch.id


def sweep_twice(reconciler: Reconciler, db: redis.Redis) -> list[str]:
    db.delete(f"{keys.PREFIX}reconciler:lock")
    assert reconciler.sweep() == []  # suspects first
    db.delete(f"{keys.PREFIX}reconciler:lock")
    return reconciler.sweep()


def test_a_lost_batch_item_is_sent_again_and_the_counts_add_up(db: redis.Redis) -> None:
    """Of four items: one queued, one running under its lease, one done, one lost. The
    lost one's message is back on the batch queue; the others are left to run; when they
    end, the batch completes with exact counts, and leaves the index with its messages."""
    batches, batch_id = start_batch(db, 4, present={0})
    rid = [item_request_id(batch_id, i) for i in range(4)]
    assert batches.item_start(batch_id, 1, rid[1]) is Start.RUN
    assert batches.item_finish(
        batch_id, 2, rid[2], "{}", error=False, counted=COUNTED, source="upstream"
    )
    files = FileStore(db, ttl_s=600)
    queues = ("interactive", "batch")
    reconciler = Reconciler(db, JobStore(db, 600), queues, batches=batches, files=files, grace_s=0)
    assert sweep_twice(reconciler, db) == []
    assert reconciler.republished == 1
    assert sorted(db.lrange("batch", 0, -1)) == sorted(message(rid[i]).decode() for i in (0, 3))
    assert batches.unfinished(batch_id, 4) == [0, 1, 3]
    for i in (0, 1, 3):
        if i != 1:
            assert batches.item_start(batch_id, i, rid[i]) is Start.RUN
        assert batches.item_finish(
            batch_id, i, rid[i], "{}", error=False, counted=COUNTED, source="cache"
        )
    batch = batches.get(batch_id)
    assert batch is not None and batch.status == "completed"
    assert (batch.counts.completed, batch.counts.failed) == (4, 0)
    db.delete(f"{keys.PREFIX}reconciler:lock")
    reconciler.sweep()
    assert batch_id not in batches.started()
    assert not db.exists(keys.batch_messages(batch_id))


def test_a_lost_item_that_cannot_be_sent_again_gets_its_error_line(db: redis.Redis) -> None:
    """An item whose kept message is gone ends in the error file with its custom_id and
    job_lost; with the rest answered, the batch completes with exact counts."""
    batches, batch_id = start_batch(db, 4, present={0})
    rid = [item_request_id(batch_id, i) for i in range(4)]
    db.hdel(keys.batch_messages(batch_id), "3")
    assert batches.item_start(batch_id, 1, rid[1]) is Start.RUN
    assert batches.item_finish(
        batch_id, 2, rid[2], "{}", error=False, counted=COUNTED, source="upstream"
    )
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
    assert (batch.counts.completed, batch.counts.failed) == (1, 1)
    assert batches.unfinished(batch_id, 4) == [0, 1]

    assert batches.item_start(batch_id, 0, rid[0]) is Start.RUN
    for i in (0, 1):
        assert batches.item_finish(
            batch_id, i, rid[i], "{}", error=False, counted=COUNTED, source="cache"
        )
    batch = batches.get(batch_id)
    assert batch is not None and batch.status == "completed"
    assert (batch.counts.completed, batch.counts.failed) == (3, 1)
    db.delete(f"{keys.PREFIX}reconciler:lock")
    reconciler.sweep()
    assert batch_id not in batches.started()


def test_a_lost_item_of_a_cancelling_batch_is_counted_cancelled(db: redis.Redis) -> None:
    """Being cancelled, the batch was waiting on an item whose message is gone: it is
    counted cancelled (no error line) and the batch ends cancelled."""
    batches, batch_id = start_batch(db, 2, present=set())
    rid = [item_request_id(batch_id, i) for i in range(2)]
    assert batches.item_start(batch_id, 0, rid[0]) is Start.RUN
    assert batches.item_finish(
        batch_id, 0, rid[0], "{}", error=False, counted=COUNTED, source="upstream"
    )
    batches.cancel(batch_id)
    reconciler = Reconciler(db, JobStore(db, 600), ("batch",), batches=batches, grace_s=0)
    assert sweep_twice(reconciler, db) == [rid[1]]
    batch = batches.get(batch_id)
    assert batch is not None and batch.status == "cancelled"
    assert (batch.counts.completed, batch.counts.cancelled) == (1, 1)
    assert list(batches.lines(batch_id, "error")) == []


def test_the_sweep_waits_while_the_queues_hold_a_backlog(db: redis.Redis) -> None:
    """Over MAX_SCAN queued messages nothing is failed (a job waiting in a backlog is not
    lost); once the backlog has drained, the lost job is found."""
    store = JobStore(db, ttl_s=600)
    job_id = uuid.uuid4().hex
    store.create(job_id, "o", enqueue=("interactive", message(job_id)))
    lose(db, "interactive", message(job_id))
    db.lpush("interactive", *[message(f"other-{i}") for i in range(MAX_SCAN + 1)])
    reconciler = Reconciler(db, store, ("interactive",), grace_s=0)
    assert sweep_twice(reconciler, db) == []
    assert reconciler.republished == 0
    db.delete("interactive", f"{keys.PREFIX}reconciler:lock")
    assert sweep_twice(reconciler, db) == []
    assert reconciler.republished == 1
    assert db.lrange("interactive", 0, -1) == [message(job_id).decode()]
