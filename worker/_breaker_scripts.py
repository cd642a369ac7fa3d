"""The shared breaker's Redis state, its Lua scripts and the Redis calls around them.

Keys (``core.keys``; the circuits set is outside ``{name}``'s slot: one Redis, no cluster):

- ``genq:breaker:{name}:state`` hash: ``code`` (0 closed, 1 open, 2 half-open, 3 forced
  open, 4 forced closed), ``gen`` (+1 on every transition), ``fails`` (consecutive),
  ``lastfail``, ``until`` (next probe), ``window`` (current open window), ``opened_at``,
  ``probe_ok``, ``reset``, ``last_failure`` ("Type: first 200 chars"). Times are ms of
  Redis ``TIME`` (plus an offset that only tests set); host clocks never enter.
- ``...:probe`` string: the half-open probe lease, a random token set ``NX PX probe_lease_s``.
- ``...:events`` hash: cluster-wide count of transitions per kind (``KINDS``).
- ``...:rate`` hash: rate buckets ``<n>:n`` (calls), ``<n>:f`` (failures), window / 10 wide.
- ``genq:breaker:circuits`` set: every circuit name ever written (tiny; never expires).
Writes refresh a PEXPIRE of a day (or more), so unused circuits vanish.

Each script is one atomic EVALSHA answering the circuit's new state (``Reply``: nine
integers in one string), so the call that acts also refreshes the caller's cached view:

- ADMIT: closed admits; open rejects until ``until``, then moves to half-open and the
  caller that wins the lease is the one probe; the rest get ``probe_in_flight``. A
  probe whose process dies frees the lease by expiry. ``peek`` only reads; otherwise it
  registers the circuit and refreshes the expiry now and then (successes may not write).
- RECORD: one outcome, tagged with the generation it was admitted in; other
  generations are ignored. Half-open: only the lease holder counts (compare-and-delete
  releases it); ``success_threshold`` successes close, a failure reopens for
  ``max(2 * window, retry_after)`` up to ``max_reset_timeout``. Closed: a success zeroes
  ``fails``; a failure increments it and trips at ``fail_max`` or at the failure rate.
- CONTROL: force_open / force_closed / reset, each a new generation.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from typing import Any, cast

from redis import Redis

from core import keys
from worker import _breaker_rules as rules
from worker._breaker_rules import Options, Outcome, Reply

__all__ = ["KINDS", "RedisCircuit", "force_closed", "force_open", "list_circuits", "reset",
           "snapshot"]  # fmt: skip

logger = logging.getLogger("worker.breaker")  # one logger name for every breaker event
#: Transition kinds counted in the ``events`` hash of every circuit.
KINDS = ("opened", "half_open", "closed", "forced_open", "forced_closed", "reset")
_PRELUDE = """
-- KEYS: 1 state hash, 2 probe lease, 3 transition counters, 4 circuit names, 5 rate buckets
-- ARGV[1] (``breaker_head``; one struct-packed argument costs least): int64 clock offset
-- (tests only), key ttl, fail_max, reset, max reset, success threshold, probe lease, rate
-- window (0 = off), all times in ms; double rate threshold; int64 min calls; the name
local offset, ttl, fail_max, reset_ms, max_ms, succ, lease_ms, win_ms, rate, min_calls, at =
  struct.unpack('>i8i8i8i8i8i8i8i8di8', ARGV[1])
local t = redis.call('TIME')
local raw = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local now = raw + offset
local h = redis.call('HMGET', KEYS[1], 'code', 'gen', 'fails', 'until', 'window', 'lastfail',
  'touched')
local fresh, touched = not h[2], tonumber(h[7]) or 0
local code, gen, fails = tonumber(h[1]) or 0, tonumber(h[2]) or 0, tonumber(h[3]) or 0
local untl, window, lastfail = tonumber(h[4]) or 0, tonumber(h[5]) or 0, tonumber(h[6]) or 0

local function save(...)
  redis.call('HSET', KEYS[1], 'touched', now, ...)
  redis.call('PEXPIRE', KEYS[1], ttl)
  if fresh then
    redis.call('SADD', KEYS[4], string.sub(ARGV[1], at))
    fresh = false
  end
end
local function move(new_code, kind, ...)
  code, gen = new_code, gen + 1
  redis.call('DEL', KEYS[5])
  save('code', code, 'gen', gen, 'reset', reset_ms, ...)
  redis.call('HINCRBY', KEYS[3], kind, 1)
  redis.call('PEXPIRE', KEYS[3], ttl)
end
local function open(w, why)
  window = math.min(max_ms, w)
  untl = now + window
  redis.call('DEL', KEYS[2])
  move(1, 'opened', 'until', untl, 'window', window, 'opened_at', now, 'probe_ok', 0)
  return why
end
local function close()
  fails, untl, window, lastfail = 0, 0, 0, 0
  move(0, 'closed', 'fails', 0, 'until', 0, 'window', 0, 'lastfail', 0, 'probe_ok', 0)
  return 5
end
local function reply(verdict, retry, moved)
  local hot = 0
  if fails > 0 or (win_ms > 0 and lastfail > 0 and now - lastfail < win_ms) then hot = 1 end
  local u = untl
  if code == 3 then u = now + reset_ms end
  return string.format('%d:%d:%d:%d:%d:%d:%d:%d:%d', code, gen, fails, u, raw, hot, verdict,
    retry, moved)
end
"""

ADMIT = (
    _PRELUDE
    + """
-- ARGV: 2 lease token should this call become the probe, 3 '1' to only read the state
if ARGV[3] == '1' then return reply(0, 0, 0) end
if fresh or now - touched > ttl / 4 then save('gen', gen) end  -- quiet successes write nothing
if code == 0 or code == 4 then return reply(0, 0, 0) end
if code == 3 then return reply(3, reset_ms, 0) end
local moved = 0
if code == 1 then
  if now < untl then return reply(2, untl - now, 0) end
  move(2, 'half_open', 'probe_ok', 0)
  moved = 4
end
if redis.call('SET', KEYS[2], ARGV[2], 'NX', 'PX', lease_ms) then return reply(1, 0, moved) end
local left = redis.call('PTTL', KEYS[2])
return reply(4, math.max(0, math.min(left, math.max(window, reset_ms))), moved)
"""
)

RECORD = (
    _PRELUDE
    + """
-- ARGV: 2 "outcome (ok|fail|neutral):generation admitted in:retry_after ms:probe lease
-- token (empty if not a probe)", 3 failure text
local outcome, admitted, retry, token = string.match(ARGV[2], '^(%a+):(%d+):(%d+):(%x*)$')
retry = tonumber(retry)
local function tally(failed)
  local width = math.max(1, math.floor(win_ms / 10))
  local b = math.floor(now / width)
  redis.call('HINCRBY', KEYS[5], b .. ':n', 1)
  if failed then redis.call('HINCRBY', KEYS[5], b .. ':f', 1) end
  redis.call('PEXPIRE', KEYS[5], win_ms + width)
  local all = redis.call('HGETALL', KEYS[5])
  local n, f = 0, 0
  for i = 1, #all, 2 do
    local id, kind = string.match(all[i], '^(%d+):(%a)$')
    if tonumber(id) <= b - 10 then redis.call('HDEL', KEYS[5], all[i])
    elseif kind == 'n' then n = n + tonumber(all[i + 1])
    else f = f + tonumber(all[i + 1]) end
  end
  return n >= min_calls and f / n >= rate
end
if tonumber(admitted) ~= gen then return reply(-1, 0, 0) end
if code == 2 then
  if token == '' or redis.call('GET', KEYS[2]) ~= token then return reply(-1, 0, 0) end
  redis.call('DEL', KEYS[2])
  if outcome == 'ok' then
    if redis.call('HINCRBY', KEYS[1], 'probe_ok', 1) >= succ then return reply(-1, 0, close()) end
  elseif outcome == 'fail' then
    save('last_failure', ARGV[3])
    return reply(-1, 0, open(math.max(window * 2, reset_ms, retry), 3))
  end
  return reply(-1, 0, 0)
end
if code ~= 0 or token ~= '' or outcome == 'neutral' then return reply(-1, 0, 0) end
if outcome == 'ok' then
  -- A busy path (with a rate window): write only what changed, refresh the expiry at times.
  if fails > 0 or fresh or now - touched > ttl / 4 then save('fails', 0) end
  fails = 0
  if win_ms > 0 then tally(false) end
  return reply(-1, 0, 0)
end
fails, lastfail = fails + 1, now
save('fails', fails, 'lastfail', now, 'last_failure', ARGV[3])
local rate_tripped = win_ms > 0 and tally(true)
if fails >= fail_max then return reply(-1, 0, open(math.max(reset_ms, retry), 1)) end
if rate_tripped then return reply(-1, 0, open(math.max(reset_ms, retry), 2)) end
return reply(-1, 0, 0)
"""
)

CONTROL = """
-- KEYS as for the other scripts. ARGV: 1 action (force_open|force_closed|reset),
-- 2 circuit name, 3 key ttl ms
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local gen = (tonumber(redis.call('HGET', KEYS[1], 'gen')) or 0) + 1
local code = ({force_open = 3, force_closed = 4, reset = 0})[ARGV[1]]
local kind = ({force_open = 'forced_open', force_closed = 'forced_closed'})[ARGV[1]] or ARGV[1]
redis.call('HSET', KEYS[1], 'code', code, 'gen', gen, 'fails', 0, 'lastfail', 0,
  'probe_ok', 0, 'until', 0, 'window', 0, 'opened_at', now)
redis.call('DEL', KEYS[2], KEYS[5])
redis.call('SADD', KEYS[4], ARGV[2])
redis.call('HINCRBY', KEYS[3], kind, 1)
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
redis.call('PEXPIRE', KEYS[3], tonumber(ARGV[3]))
return gen
"""


def breaker_head(offset_ms: int, options: Options, name: str) -> bytes:
    """ARGV[1] of ADMIT and RECORD: clock offset, options and name, as _PRELUDE unpacks it."""
    rate = options.failure_rate_threshold or 0.0
    numbers = (offset_ms, options.ttl_ms, options.fail_max, options.reset_ms, options.max_ms,
               options.success_threshold, options.lease_ms, options.window_ms)  # fmt: skip
    return struct.pack(">8qdq", *numbers, rate, options.min_calls) + name.encode()


def circuit_keys(name: str) -> list[str]:
    """The five keys every script gets, in the order the scripts expect."""
    parts = ("state", "probe", "events")
    return [*(keys.breaker(name, p) for p in parts), keys.circuits(), keys.breaker(name, "rate")]


class RedisCircuit:
    """One circuit's keys and registered scripts on one client (registering does no I/O)."""

    def __init__(self, source: Redis | Callable[[], Redis], name: str) -> None:
        client = source if isinstance(source, Redis) else source()
        self.name = name
        self.keys = [k.encode() for k in circuit_keys(name)]  # bytes: skips re-encoding
        registered = map(client.register_script, (ADMIT, RECORD, CONTROL))
        self._admit, self._record, self._control = registered

    def admit(self, head: bytes, token: str, *, peek: bool = False) -> Reply:
        """Run ADMIT; ``head`` is ARGV[1] (see ``breaker_head``)."""
        args: list[bytes | str | int] = [head, token, int(peek)]
        return Reply.parse(cast(str, self._admit(self.keys, args)))

    def record(self, head: bytes, gen: int, token: str, out: Outcome) -> Reply:
        """Run RECORD for one finished call, admitted in ``gen`` (``token``: the probe's)."""
        args: list[bytes | str] = [head, f"{out.kind}:{gen}:{out.retry_ms}:{token}", out.text]
        return Reply.parse(cast(str, self._record(self.keys, args)))

    def control(self, action: str) -> int:
        """Run CONTROL (force_open | force_closed | reset); returns the new generation."""
        return int(cast(int, self._control(self.keys, [action, self.name, rules.KEY_TTL_MS])))


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def force_open(redis: Redis, name: str) -> None:
    """Reject every call to circuit ``name`` (reason ``circuit_forced_open``) until reset."""
    _operate(redis, name, "force_open", "breaker.opened")


def force_closed(redis: Redis, name: str) -> None:
    """Admit every call to circuit ``name`` and count nothing, until reset or forced open."""
    _operate(redis, name, "force_closed", "breaker.closed")


def reset(redis: Redis, name: str) -> None:
    """Put circuit ``name`` back to closed with zero failures (transition counts stay)."""
    _operate(redis, name, "reset", "breaker.closed")


def _operate(redis: Redis, name: str, action: str, event: str) -> None:
    gen = RedisCircuit(redis, name).control(action)
    logger.warning(event, extra={"circuit": name, "reason": action, "counts": {"generation": gen}})


def list_circuits(redis: Redis) -> list[dict[str, Any]]:
    """``snapshot`` of every circuit ever written, sorted by name."""
    names: set[str | bytes] = redis.smembers(keys.circuits())
    return [snapshot(redis, n) for n in sorted(_text(n) for n in names)]


def snapshot(client: Redis, name: str) -> dict[str, Any]:
    """Circuit ``name`` as the API shows it, read in one round trip (a pipeline).

    ``state``: closed | open | half-open | forced_open | forced_closed. ``retry_after``:
    seconds until the next probe (0 when closed; half-open: the probe lease's remainder).
    """
    k = circuit_keys(name)
    pipe = client.pipeline(transaction=False)
    pipe.time()
    pipe.hgetall(k[0])
    pipe.hgetall(k[2])
    pipe.pttl(k[1])
    clock, raw_state, raw_events, lease_ms = pipe.execute()
    now_ms = int(clock[0]) * 1000 + int(clock[1]) // 1000
    state = {_text(f): _text(v) for f, v in raw_state.items()}
    events = {_text(f): int(_text(v)) for f, v in raw_events.items()}
    code = int(state.get("code", 0))
    retry_after = 0.0
    if code == rules.OPEN:
        retry_after = max(0, int(state.get("until", 0)) - now_ms) / 1000
    elif code == rules.HALF_OPEN:
        retry_after = max(0, int(lease_ms)) / 1000
    elif code == rules.FORCED_OPEN:  # the interval at which processes re-check, not a promise
        retry_after = int(state.get("reset") or 60_000) / 1000
    opened = code in (rules.OPEN, rules.HALF_OPEN, rules.FORCED_OPEN) and state.get("opened_at")
    return {
        "name": name,
        "state": rules.STATE_NAMES[code],
        "failure_count": int(state.get("fails", 0)),
        "opened_at": int(opened) / 1000 if opened else None,
        "retry_after": retry_after,
        "last_failure": state.get("last_failure"),
        "probe_in_flight": int(lease_ms) > 0,
        "generation": int(state.get("gen", 0)),
        "transitions": {kind: events.get(kind, 0) for kind in KINDS},
    }
