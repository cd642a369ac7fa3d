"""core.batches on a real redis-server: counts stay exact whatever order items end in,
however often they end, and whatever a cancel or a dead API process interrupts."""

from __future__ import annotations

import time
import uuid

import pytest
import redis

from core import keys
from core.batches import STALE_VALIDATING_S, BatchStore, item_request_id
from core.records import Start
from core.stats import tally

pytestmark = pytest.mark.integration


@pytest.fixture
def store(r: redis.Redis) -> BatchStore:
    return BatchStore(r, ttl_s=600)


COUNTED = tally("batch", "test-item")


def rid(batch_id: str, index: int) -> str:
    return item_request_id(batch_id, index)


def new_batch(store: BatchStore, queue: str, total: int) -> str:
    batch = store.create("owner", "file-in", "/v1/completions", "24h", None, "file-o", "file-e")
    assert store.start(batch.id, "owner", queue, (f"m{i}".encode() for i in range(total)), total)
    return batch.id


def test_an_item_that_ends_twice_is_counted_once(store: BatchStore, r: redis.Redis) -> None:
    """A redelivered copy of an item writes nothing: one line and one count per item."""
    queue = f"test-{uuid.uuid4().hex}"
    batch_id = new_batch(store, queue, 2)
    assert r.llen(queue) == 2
    assert store.item_start(batch_id, 0, rid(batch_id, 0)) is Start.RUN
    assert store.item_finish(
        batch_id, 0, rid(batch_id, 0), '{"a":1}', error=False, counted=COUNTED, source="cache"
    )
    assert not store.item_finish(
        batch_id, 0, rid(batch_id, 0), '{"a":2}', error=False, counted=COUNTED, source="upstream"
    )
    assert store.item_start(batch_id, 0, rid(batch_id, 0)) is Start.DONE
    assert store.item_finish(batch_id, 1, rid(batch_id, 1), '{"e":1}', error=True, counted=COUNTED)
    batch = store.get(batch_id)
    assert batch is not None
    assert batch.status == "completed"
    assert (batch.counts.completed, batch.counts.failed) == (1, 1)
    assert batch.sources.model_dump() == {"upstream": 0, "failover": 0, "cache": 1, "excerpt": 0}
    assert list(store.lines(batch_id, "output")) == [b'{"a":1}\n']
    assert list(store.lines(batch_id, "error")) == [b'{"e":1}\n']
    assert (batch.times.completed_at or 0) >= (batch.times.in_progress_at or 1)


def test_after_a_cancel_items_not_started_are_counted_and_never_run(store: BatchStore) -> None:
    """Cancelled with one item running: the others refuse to start, the running one
    still writes its line, and the batch ends cancelled with exact counts."""
    batch_id = new_batch(store, f"test-{uuid.uuid4().hex}", 3)
    assert store.item_start(batch_id, 0, rid(batch_id, 0)) is Start.RUN
    store.cancel(batch_id)
    assert store.get(batch_id).status == "cancelling"  # type: ignore[union-attr]
    assert store.item_start(batch_id, 1, rid(batch_id, 1)) is Start.DONE
    assert store.item_start(batch_id, 2, rid(batch_id, 2)) is Start.DONE
    assert store.item_finish(
        batch_id, 0, rid(batch_id, 0), "{}", error=False, counted=COUNTED, source="upstream"
    )
    batch = store.get(batch_id)
    assert batch is not None
    assert batch.status == "cancelled"
    assert (batch.counts.completed, batch.counts.failed, batch.counts.cancelled) == (
        1,
        0,
        2,
    )


def test_a_batch_cancelled_while_validating_enqueues_nothing(
    store: BatchStore, r: redis.Redis
) -> None:
    """start() after a cancel writes no message and reports it."""
    queue = f"test-{uuid.uuid4().hex}"
    batch = store.create("owner", "file-in", "/v1/completions", "24h", None, "file-o", "file-e")
    store.cancel(batch.id)
    assert not store.start(batch.id, "owner", queue, [b"m"], 1)
    assert r.llen(queue) == 0
    assert store.get(batch.id).status == "cancelled"  # type: ignore[union-attr]


def test_a_batch_left_validating_by_a_dead_api_process_is_failed_with_a_reason(
    store: BatchStore, r: redis.Redis
) -> None:
    """A batch still validating long after its creation is failed by the sweep, saying
    why; reading it writes nothing; a batch that started is left alone."""
    batch = store.create("owner", "file-in", "/v1/completions", "24h", None, "file-o", "file-e")
    started = store.create("owner", "file-in", "/v1/completions", "24h", None, "f-o", "f-e")
    assert store.start(started.id, "owner", f"test-{uuid.uuid4().hex}", [b"m"], 1)
    later = time.time() + STALE_VALIDATING_S + 1
    assert store.get(batch.id).status == "validating"  # type: ignore[union-attr]
    assert batch.id in store.fail_stale(now=later)
    assert started.id not in store.fail_stale(now=later)
    found = store.get(batch.id)
    assert found is not None
    assert found.status == "failed"
    assert found.errors is not None and found.errors[0].code == "enqueue_interrupted"


def test_items_of_an_expired_batch_do_not_run(store: BatchStore, r: redis.Redis) -> None:
    """Past its 24 h window, items that have not started are counted and the batch ends
    expired."""
    batch_id = new_batch(store, f"test-{uuid.uuid4().hex}", 2)
    assert store.item_start(batch_id, 0, rid(batch_id, 0)) is Start.RUN
    assert store.item_finish(
        batch_id, 0, rid(batch_id, 0), "{}", error=False, counted=COUNTED, source="upstream"
    )
    r.hset(keys.batch(batch_id), "expires_at", int(time.time()) - 1)
    assert store.item_start(batch_id, 1, rid(batch_id, 1)) is Start.DONE
    batch = store.get(batch_id)
    assert batch is not None
    assert batch.status == "expired"
    assert batch.counts.cancelled == 1


def test_a_second_copy_of_a_running_item_does_not_run_it(store: BatchStore, r: redis.Redis) -> None:
    """While one copy holds the item's lease another is told BUSY; a retry's release or
    the final line gives the lease back."""
    batch_id = new_batch(store, f"test-{uuid.uuid4().hex}", 1)
    assert store.item_start(batch_id, 0, rid(batch_id, 0)) is Start.RUN
    assert store.item_start(batch_id, 0, rid(batch_id, 0)) is Start.BUSY
    store.item_release(rid(batch_id, 0))
    assert store.item_start(batch_id, 0, rid(batch_id, 0)) is Start.RUN
    assert r.exists(keys.job_lease(rid(batch_id, 0)))
    assert store.item_finish(
        batch_id, 0, rid(batch_id, 0), "{}", error=False, counted=COUNTED, source="cache"
    )
    assert not r.exists(keys.job_lease(rid(batch_id, 0)))
    assert store.item_start(batch_id, 0, rid(batch_id, 0)) is Start.DONE


def test_started_batches_are_listed_until_forgotten_with_their_unfinished_items(
    store: BatchStore,
) -> None:
    """What the reconciler reads: started batches, and the items not yet accounted for."""
    batch_id = new_batch(store, f"test-{uuid.uuid4().hex}", 4)
    assert batch_id in store.started()
    assert store.item_start(batch_id, 1, rid(batch_id, 1)) is Start.RUN
    assert store.item_finish(batch_id, 2, rid(batch_id, 2), "{}", error=True, counted=COUNTED)
    assert store.unfinished(batch_id, 4) == [0, 1, 3]
    store.forget(batch_id)
    assert batch_id not in store.started()
