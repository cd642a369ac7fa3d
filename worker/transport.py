"""kombu's Redis transport, minus the per-message costs that bound a worker on fast jobs.

Two changes, both measured on a queue of open-circuit jobs (docs/benchmarks.md):

- **One client per channel.** kombu's Redis channel builds a new ``redis.Redis`` for
  every synchronous command (``Channel.conn_or_acquire``): when a message is delivered
  (to record it as unacked) and again when it is acked. With redis-py 8 each
  construction copies the ~150-entry response-callback table. A ``redis.Redis`` is safe
  to share between threads (each command borrows a connection from the pool), so this
  channel keeps one for as long as its connection pool lives.
- **Fetch and bookkeeping in one round trip while the queue has work.** kombu pops a
  message (BRPOP), then records it as unacked (ZADD to the unacked index, HSET of the
  message) in a MULTI/EXEC pipeline, and forgets it on ack (ZREM, HDEL) in another: three
  round trips and eight commands packed per message, in the consumer's one thread. Here,
  after a BRPOP found work, the consumer sends one script instead, which pops as many
  messages as the prefetch limit allows and records each as unacked before popping it
  (so no message is ever out of both the queue and the unacked hash). When it finds the
  queues empty the consumer goes back to a blocking BRPOP. Recording after a BRPOP and
  forgetting on ack are one script call each.
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

__all__ = ["Channel", "QoS", "Transport"]

log = logging.getLogger(__name__)

#: Most messages one fetch takes when the prefetch limit is off (prefetch_count 0).
UNLIMITED_FETCH = 16

# KEYS: unacked index (zset), unacked messages (hash). ARGV: delivery tag, time, message.
_RECORD = """
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
"""
# KEYS: as above. ARGV: delivery tag.
_FORGET = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
"""

# Pops up to ARGV[1] messages from the queue keys, in order (kombu's priority order), and
# records each as unacked (kombu's index and hash, kombu's value: [message, exchange,
# routing key]) before popping it. KEYS: queue keys..., unacked index, unacked hash.
# ARGV: most messages, time. Returns {stop, key, message, key, message, ...}: stop is 1
# when the next message is one this script cannot read (left in place for BRPOP).
_FETCH = """
local nq = #KEYS - 2
local most = tonumber(ARGV[1])
local out = {0}
for i = 1, nq do
  while (#out - 1) / 2 < most do
    local raw = redis.call('LINDEX', KEYS[i], -1)
    if not raw then break end
    local ok, m = pcall(cjson.decode, raw)
    local p = ok and type(m) == 'table' and m.properties
    local info = type(p) == 'table' and p.delivery_info
    if type(info) ~= 'table' or type(p.delivery_tag) ~= 'string'
      or type(info.exchange) ~= 'string' or type(info.routing_key) ~= 'string' then
      out[1] = 1
      return out
    end
    redis.call('ZADD', KEYS[nq + 1], ARGV[2], p.delivery_tag)
    redis.call('HSET', KEYS[nq + 2], p.delivery_tag, '[' .. raw .. ',' ..
      cjson.encode(info.exchange) .. ',' .. cjson.encode(info.routing_key) .. ']')
    redis.call('RPOP', KEYS[i])
    out[#out + 1] = KEYS[i]
    out[#out + 1] = raw
  end
end
return out
"""


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
                self._record = Script(client, _RECORD)
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
                self._forget = Script(client, _FORGET)
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
    connection_errors: Any

    _shared_client: Any = None
    #: Next poll: the fetch script (the last poll found work) or a blocking BRPOP.
    _fetch_next = False
    #: The poll in flight is the fetch script.
    _fetch_sent = False
    #: The delivery tag of the fetched message being delivered (recorded already).
    recorded: str | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Queues consumed without acks: the channel then polls with kombu's BRPOP only.
        self.no_ack_queues: set[str] = set()

    def basic_consume(self, queue: str, no_ack: bool, *args: Any, **kwargs: Any) -> Any:
        if no_ack:
            # Nothing would ever ack what the script records for this consumer.
            self.no_ack_queues.add(queue)
        return super().basic_consume(queue, no_ack, *args, **kwargs)

    def _brpop_start(self, timeout: float | None = None) -> None:
        fetch = self._fetch_next and not self.no_ack_queues
        if not fetch or self.global_keyprefix:
            super()._brpop_start(timeout)  # type: ignore[misc]
            return
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues:
            return
        keys = [self._q_for_pri(q, pri) for pri in self.priority_steps for q in queues]
        most = self.qos.can_consume_max_estimate()
        most = UNLIMITED_FETCH if most is None else max(most, 1)
        self._in_poll = self.client.connection
        self._brpop_sent_at = time.monotonic()
        self._fetch_sent = True
        self.client.connection.send_command(
            "EVAL",
            _FETCH,
            len(keys) + 2,
            *keys,
            self.unacked_index_key,
            self.unacked_key,
            most,
            time.time(),
        )

    def _brpop_read(self, **options: Any) -> bool:
        if not self._fetch_sent:
            delivered: bool = super()._brpop_read(**options)  # type: ignore[misc]
            self._fetch_next = True  # it found work: more may be waiting
            return delivered
        self._fetch_sent = False
        try:
            try:
                reply = self.client.parse_response(self.client.connection, "EVAL", **options)
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
            except redis.ResponseError as exc:
                # Refused (out of memory, say): the next poll is a BRPOP. Nothing is lost:
                # a message leaves its queue only once it is in the unacked hash, where
                # kombu's restore finds whatever was popped but not delivered.
                log.warning("transport.fetch_failed", extra={"error": str(exc)})
                self._fetch_next = False
                raise Empty() from exc
            stop, *pairs = reply
            if stop or not pairs:
                self._fetch_next = False  # empty, or a message only kombu's path can read
            if not pairs:
                raise Empty()
            for key, raw in zip(pairs[::2], pairs[1::2], strict=True):
                dest = bytes_to_str(key).rsplit(self.sep, 1)[0]
                self._queue_cycle.rotate(dest)
                message = loads(bytes_to_str(raw))
                self.recorded = message["properties"]["delivery_tag"]
                try:
                    self.connection._deliver(message, dest)
                finally:
                    self.recorded = None
            return True
        finally:
            self._in_poll = None
            self._flush_brpop_reauth()

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
