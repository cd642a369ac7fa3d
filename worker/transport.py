"""kombu's Redis transport, minus the per-message costs that bound a worker on fast jobs.

Three changes, measured on a queue of open-circuit jobs (docs/benchmarks.md):

- **One client per channel.** kombu's Redis channel builds a new ``redis.Redis`` for
  every synchronous command (``Channel.conn_or_acquire``): when a message is delivered
  (to record it as unacked) and again when it is acked. With redis-py 8 each
  construction copies the ~150-entry response-callback table. A ``redis.Redis`` is safe
  to share between threads (each command borrows a connection from the pool), so this
  channel keeps one for as long as its connection pool lives.
- **Fetch in batches while there is work.** kombu pops one message per BRPOP, then
  records it as unacked (ZADD to the unacked index, HSET of the message) in a MULTI/EXEC
  pipeline: two round trips per message in the consumer's one thread. Here, once a
  BRPOP has found work, the next poll is a script (``_transport_scripts.FETCH``) that
  takes as many messages as the prefetch limit leaves room for, writing each one's
  unacked entry *before* popping it, so a message is never out of both the queue and
  the unacked hash. When the queues are empty, or the next message is one the script
  cannot read, the poll after is kombu's BRPOP again. If Redis refuses a write (out of
  memory), the channel waits ``HOLD_S`` and fetches again: a BRPOP would pop a message
  whose record could then fail. While a consumer that does not ack is active (Celery's
  startup mingle), the channel polls with BRPOP only.
- **Unacked bookkeeping in one call.** Recording a BRPOP'd message and forgetting an
  acked one are one script call each instead of a MULTI/EXEC pipeline.

With a ``global_keyprefix`` (which kombu applies to a script's first key only) all of
kombu's own paths stay.

Everything else is kombu's: the same keys and values, so kombu's restore of unacked
messages (visibility timeout, shutdown) reads what this writes.

Selected by ``worker.app.celery_config`` (``broker_transport``) for ``redis://`` brokers;
``rediss://`` keeps kombu's own, which turns TLS on from the URL's scheme.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from queue import Empty
from typing import Any

import redis
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps, loads
from redis.commands.core import Script

from worker._transport_scripts import FETCH, FORGET, RECORD

__all__ = ["Channel", "QoS", "Transport"]

log = logging.getLogger(__name__)

#: Most messages one fetch takes when the prefetch limit is off (prefetch_count 0).
UNLIMITED_FETCH = 16
#: Seconds a channel waits before fetching again after Redis refused a write.
HOLD_S = 1.0


class QoS(kombu_redis.QoS):
    """kombu's Redis QoS with its two hot pipelines replaced by one script call each."""

    channel: Any  # this module's Channel (kombu's stubs know a virtual channel only)
    _record: Script | None = None
    _forget: Script | None = None

    def append(self, message: Any, delivery_tag: str) -> None:
        if delivery_tag == self.channel.recorded:
            # Being delivered by the fetch script, which recorded it already.
            virtual.QoS.append(self, message, delivery_tag)
            return
        if self.channel.global_keyprefix:
            super().append(message, delivery_tag)
            return
        delivery = message.delivery_info
        stored = dumps([message._raw, delivery["exchange"], delivery["routing_key"]])
        with self.channel.conn_or_acquire() as client:
            if self._record is None:
                self._record = Script(client, RECORD)
            keys = [self.unacked_index_key, self.unacked_key]
            self._record(keys, [delivery_tag, time.time(), stored], client)
        virtual.QoS.append(self, message, delivery_tag)

    def ack(self, delivery_tag: str) -> None:
        if self.channel.global_keyprefix:
            super().ack(delivery_tag)
            return
        self._forget_tag(delivery_tag)
        virtual.QoS.ack(self, delivery_tag)

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        if requeue or self.channel.global_keyprefix:
            super().reject(delivery_tag, requeue)
            return
        self._forget_tag(delivery_tag)
        virtual.QoS.ack(self, delivery_tag)

    def _forget_tag(self, delivery_tag: str) -> None:
        with self.channel.conn_or_acquire() as client:
            if self._forget is None:
                self._forget = Script(client, FORGET)
            self._forget([self.unacked_index_key, self.unacked_key], [delivery_tag], client)


class Channel(kombu_redis.Channel):
    """A Redis channel that reuses one synchronous client and fetches in batches."""

    QoS = QoS
    # kombu's Redis channel has these; the stubs genq type-checks against do not.
    _pool: Any
    _create_client: Any
    _queue_cycle: Any
    _q_for_pri: Any
    _flush_brpop_reauth: Any
    _fanout_queues: Any
    connection_errors: Any
    qos: Any

    _shared_client: Any = None
    #: Next poll: the fetch script (the last poll found work) or kombu's BRPOP.
    _fetch_next = False
    #: The poll in flight is the fetch script's.
    _fetch_sent = False
    #: After a refused write, no poll before this (monotonic) time.
    _hold_until = 0.0
    #: The delivery tag of the fetched message being delivered (recorded already).
    recorded: str | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Consumers that do not ack (Celery's mingle, say): while any is active the
        #: channel polls with kombu's BRPOP, since nothing would ack what FETCH records.
        self.no_ack_consumers: set[str] = set()

    def basic_consume(
        self,
        queue: str,
        no_ack: bool = False,
        callback: Any = None,
        consumer_tag: Any = None,
        **kwargs: Any,
    ) -> Any:
        if no_ack and queue not in self._fanout_queues:
            self.no_ack_consumers.add(consumer_tag)
        return super().basic_consume(queue, no_ack, callback, consumer_tag, **kwargs)

    def _basic_cancel(self, consumer_tag: Any) -> Any:
        self.no_ack_consumers.discard(consumer_tag)
        return super()._basic_cancel(consumer_tag)  # type: ignore[misc]

    def _brpop_start(self, timeout: float | None = None) -> None:
        most = self.qos.can_consume_max_estimate()
        self._fetch_sent = False
        if not self._fetch_next or self.no_ack_consumers or most == 0 or self.global_keyprefix:
            super()._brpop_start(timeout)  # type: ignore[misc]
            return
        if time.monotonic() < self._hold_until:
            # Not a BRPOP either: it would pop a message its record could not follow.
            return
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues:
            return
        keys = [self._q_for_pri(q, pri) for pri in self.priority_steps for q in queues]
        most = UNLIMITED_FETCH if most is None else most
        self._in_poll = self.client.connection
        self._brpop_sent_at = time.monotonic()
        self.client.connection.send_command(
            "EVAL",
            FETCH,
            len(keys) + 2,
            *keys,
            self.unacked_index_key,
            self.unacked_key,
            most,
            time.time(),
            len(queues),
        )
        self._fetch_sent = True

    def _brpop_read(self, **options: Any) -> bool:
        if not self._fetch_sent:
            delivered: bool = super()._brpop_read(**options)  # type: ignore[misc]
            self._fetch_next = True  # it found work: more may be waiting
            return delivered
        self._fetch_sent = False
        try:
            reply = self.client.parse_response(self.client.connection, "EVAL", **options)
        except self.connection_errors:
            self.client.connection.disconnect()
            raise
        except redis.ResponseError as exc:
            self._hold(str(exc))
            raise Empty() from exc
        finally:
            self._in_poll = None
            self._flush_brpop_reauth()
        status, *fetched = reply
        if status == 2:
            self._hold("a write was refused")
        elif status or not fetched:
            self._fetch_next = False  # empty, or a message only kombu's path can read
        if not fetched:
            raise Empty()
        self._deliver_fetched(list(zip(fetched[::3], fetched[1::3], fetched[2::3], strict=True)))
        return True

    def _hold(self, why: str) -> None:
        """Poll again in HOLD_S, with the script: nothing it popped lacks its record."""
        log.warning("transport.fetch_refused", extra={"error": why, "retry_in_s": HOLD_S})
        self._hold_until = time.monotonic() + HOLD_S

    def _deliver_fetched(self, batch: list[tuple[Any, Any, Any]]) -> None:
        for at, (key, tag, raw) in enumerate(batch):
            dest = bytes_to_str(key).rsplit(self.sep, 1)[0]
            self.recorded = bytes_to_str(tag)
            try:
                self._queue_cycle.rotate(dest)
                self.connection._deliver(loads(bytes_to_str(raw)), dest)
            except BaseException:
                # The rest of the batch goes back on its queue now, not after the
                # visibility timeout. This one is kombu's case: the error propagates,
                # and its unacked entry brings it back if nothing acks it.
                for _, later, _ in batch[at + 1 :]:
                    self.qos.restore_by_tag(bytes_to_str(later))
                raise
            finally:
                self.recorded = None

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        if client:
            yield client
            return
        shared = self._shared_client
        if shared is None or shared.connection_pool is not self._pool:
            # First use, or the pool was replaced (close, fork, reconnect) after this
            # client was made. Two threads may both build one; either is valid.
            shared = self._shared_client = self._create_client()
        yield shared


class Transport(kombu_redis.Transport):
    """kombu's Redis transport with :class:`Channel`."""

    Channel = Channel
