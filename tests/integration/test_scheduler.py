"""The batch scheduler on a real redis-server (core.batches, lua/sched_prelude.lua): items
are released only as far as keeps the queue its depth, in turn per key (by weight) and
per batch, newcomers joining at the clock; a cancel counts what was never released."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Iterator

import pytest
import redis

from core import keys
from core.batches import BatchStore, item_request_id
from core.records import Start
from core.scheduler import Scheduling

pytestmark = pytest.mark.integration


@pytest.fixture
def queue(r: redis.Redis) -> Iterator[str]:
    name = f"sched-test-{uuid.uuid4().hex}"
    yield name
    r.delete(name)


@pytest.fixture(autouse=True)
def empty_scheduler(r: redis.Redis) -> None:
    """Each test starts with no batch waiting (the session's Redis is shared)."""
    for owner in r.zrange(keys.sched_owners(), 0, -1):
        r.delete(keys.sched_owner(owner))
    r.delete(keys.sched_owners(), keys.sched())


def store(r: redis.Redis, depth: int, **weights: float) -> BatchStore:
    return BatchStore(r, ttl_s=600, scheduling=Scheduling(depth, weights))


def start(s: BatchStore, queue: str, owner: str, n: int) -> str:
    batch = s.create(owner, "file-in", "/v1/completions", "24h", None, "file-o", "file-e")
    messages = (json.dumps({"batch": batch.id, "i": i}).encode() for i in range(n))
    assert s.start(batch.id, owner, queue, messages, n)
    return batch.id


def drain(r: redis.Redis, queue: str) -> list[str]:
    """Take everything off the queue, oldest first: the batch ids, in release order."""
    taken = []
    while (raw := r.rpop(queue)) is not None:
        taken.append(json.loads(raw)["batch"])
    return taken


def test_items_are_released_only_as_deep_as_the_queue_is_kept(r: redis.Redis, queue: str) -> None:
    s = store(r, 5)
    batch_id = start(s, queue, "a", 12)
    assert r.llen(queue) == 5
    assert s.scheduler.release(queue) == 0  # still 5 deep
    drain(r, queue)
    assert s.scheduler.release(queue) == 5
    drain(r, queue)
    assert s.scheduler.release(queue) == 2  # what was left
    record = s.get(batch_id)
    assert record is not None and record.counts.released == 12


def test_keys_share_equally_then_batches_within_a_key(r: redis.Redis, queue: str) -> None:
    """Key a has two batches, key b one; a releases of 12: b gets half, a's two batches a
    quarter each, interleaved from the start."""
    s = store(r, 0)
    a1, a2 = start(s, queue, "a", 100), start(s, queue, "a", 100)
    b1 = start(s, queue, "b", 100)
    s.scheduler.scheduling = Scheduling(12)
    assert s.scheduler.release(queue) == 12
    released = Counter(drain(r, queue))
    assert released == {b1: 6, a1: 3, a2: 3}


def test_a_weight_changes_a_keys_share(r: redis.Redis, queue: str) -> None:
    s = store(r, 0)
    heavy, light = start(s, queue, "heavy", 100), start(s, queue, "light", 100)
    s.scheduler.scheduling = Scheduling(30, {"heavy": 2.0})
    s.scheduler.release(queue)
    assert Counter(drain(r, queue)) == {heavy: 20, light: 10}


def test_a_newcomer_takes_its_share_from_now_on_not_for_the_time_it_was_away(
    r: redis.Redis, queue: str
) -> None:
    """Key a has had 50 items released alone; key b's batch then gets half of what is
    released next, not everything until it has caught up."""
    s = store(r, 50)
    a = start(s, queue, "a", 200)
    drain(r, queue)
    s.scheduler.scheduling = Scheduling(0)
    b = start(s, queue, "b", 200)
    s.scheduler.scheduling = Scheduling(20)
    s.scheduler.release(queue)
    assert Counter(drain(r, queue)) == {a: 10, b: 10}


def test_a_cancel_counts_the_items_never_released_and_releases_no_more(
    r: redis.Redis, queue: str
) -> None:
    s = store(r, 4)
    batch_id = start(s, queue, "a", 10)
    s.cancel(batch_id)
    record = s.get(batch_id)
    assert record is not None and record.status == "cancelling"
    assert record.counts.cancelled == 6  # the 4 released still may start, or be counted
    drain(r, queue)
    assert s.scheduler.release(queue) == 0
    assert r.zcard(keys.sched_owners()) == 0  # the scheduler let it go


def test_past_its_window_the_items_never_released_are_counted_and_the_batch_expires(
    r: redis.Redis, queue: str
) -> None:
    """The 24 h window ends with 3 of 5 items still waiting: the next release counts them
    cancelled and releases none; the 2 released are refused at their start, and the
    batch ends expired with every item accounted for."""
    s = store(r, 2)
    batch_id = start(s, queue, "a", 5)
    r.hset(keys.batch(batch_id), "expires_at", 0)
    drain(r, queue)
    assert s.scheduler.release(queue) == 0
    record = s.get(batch_id)
    assert record is not None and record.counts.cancelled == 3
    for index in (0, 1):
        rid = item_request_id(batch_id, index)
        assert s.item_start(batch_id, index, rid) is Start.DONE
    record = s.get(batch_id)
    assert record is not None and record.status == "expired"
    assert record.counts.cancelled == 5 and record.backlog == 0
