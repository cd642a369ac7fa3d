"""The batch scheduler: batches share the batch capacity instead of queueing behind
each other.

A started batch's items wait in its kept messages (``keys.batch_messages``); the
scheduler releases them onto the batch queue only as far as keeps it ``ready_depth``
deep (``GENQ_BATCH_READY_DEPTH``), in turn: start-time fair queuing over owners (keys),
each owner's pass growing by 1 / its weight (``GENQ_KEY_WEIGHTS``) per item released,
then over that owner's batches; a newcomer joins at the clock, taking its share from
then on (``lua/sched_prelude.lua``). So the queue Flower shows is work ready to run, and
what waits is each batch's backlog.

A batch is enrolled in the transaction that starts it (:meth:`Scheduler.enroll`), which
releases its first items; workers release as they take each item off the queue and on a
tick (``worker.scheduler``). Every release is one Lua script: there is no lock, so a
worker killed mid-release leaves nothing half done.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import redis

from core import keys, scripts
from core.errors import StorageUnavailable
from core.settings import Settings

__all__ = ["Scheduler", "Scheduling", "backlog", "scheduling_of"]


@dataclass(frozen=True)
class Scheduling:
    """How the scheduler releases batch items: the queue depth it keeps, and each
    owner's weight (1 unless named)."""

    ready_depth: int = 64
    weights: Mapping[str, float] = field(default_factory=dict)

    @property
    def packed_weights(self) -> str:
        return json.dumps(dict(self.weights))


def scheduling_of(settings: Settings) -> Scheduling:
    return Scheduling(settings.batch_ready_depth, settings.key_weights)


@functools.cache
def _script(name: str) -> str:
    """A scheduler script after batch_prelude.lua and sched_prelude.lua."""
    head = "".join(scripts.load("core", p) for p in ("batch_prelude", "sched_prelude"))
    return scripts.load("core", name, head)


class Scheduler:
    """Enrolls started batches and releases their items (registering the scripts does no
    I/O); ``scheduling`` may be changed between calls."""

    def __init__(self, client: redis.Redis, scheduling: Scheduling) -> None:
        self._redis = client
        self.scheduling = scheduling
        self._enroll = client.register_script(_script("batch_enroll"))
        self._release = client.register_script(_script("batch_release"))

    def enroll(self, pipe: Any, batch_id: str, owner: str, queue: str) -> None:
        """In ``pipe`` (the transaction starting the batch): join the scheduler and
        release the first items onto ``queue``."""
        enroll_keys = [keys.batch(batch_id), keys.batch_items(batch_id), queue, *_keys()]
        args = [keys.PREFIX, batch_id, owner, *self._args()]
        self._enroll(keys=enroll_keys, args=args, client=pipe)

    def release(self, queue: str) -> int:
        """Top ``queue`` up to the ready depth with the next items in turn; returns how
        many were released."""
        args = [keys.PREFIX, *self._args()]
        try:
            found = self._release(keys=[queue, *_keys()], args=args)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise StorageUnavailable(f"scheduler unreachable: {type(exc).__name__}") from exc
        return int(cast(int, found))

    def _args(self) -> list[str | int]:
        scheduling = self.scheduling
        return [scheduling.ready_depth, scheduling.packed_weights, int(time.time())]


def backlog(client: redis.Redis) -> dict[str, int]:
    """Batch items not yet released, by owner id: the scheduler's waiting work."""
    owners = [_text(o) for o in client.zrange(keys.sched_owners(), 0, -1)]
    pipe = client.pipeline(transaction=False)
    for owner in owners:
        pipe.zrange(keys.sched_owner(owner), 0, -1)
    listed = zip(owners, pipe.execute(), strict=True)
    batches = [(owner, _text(batch_id)) for owner, ids in listed for batch_id in ids]
    counts = client.pipeline(transaction=False)  # every batch's counts in one round trip
    for _, batch_id in batches:
        counts.hmget(keys.batch(batch_id), "total", "released")
    waiting = dict.fromkeys(owners, 0)
    for (owner, _), (total, released) in zip(batches, counts.execute(), strict=True):
        waiting[owner] += int(total or 0) - int(released or 0)
    return waiting


def _keys() -> list[str]:
    return [keys.sched_owners(), keys.sched()]


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
