"""The Lua scripts behind :mod:`worker.transport`: kombu's unacked bookkeeping, each one
atomic round trip. Keys and values are kombu's own (``unacked_index``: delivery tag →
time; ``unacked``: delivery tag → ``[message, exchange, routing key]``), so kombu's
restore reads what these write."""

__all__ = ["FETCH", "FORGET", "RECORD"]

# Records one delivered message as unacked. KEYS: unacked index, unacked hash.
# ARGV: delivery tag, time, the stored value.
RECORD = """
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
"""

# Forgets an acked (or dropped) message. KEYS: as RECORD's. ARGV: delivery tag.
FORGET = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
"""

# Takes up to ARGV[1] messages off the queues and records each as unacked *before*
# popping it, so a message is never out of both the queue and the unacked hash.
# KEYS: the queue keys in kombu's BRPOP order (for each priority step, each queue),
# then the unacked index and hash. ARGV: most messages, time, queues per priority step.
# Like BRPOP, a higher priority step is drained first; within a step the queues take
# turns, one message each. Returns {status, key, tag, message, key, tag, message, ...};
# status 0, or 1 when the next message is one this script cannot read (left where it is,
# for kombu's path), or 2 when a write was refused (out of memory, say).
FETCH = """
local nq = #KEYS - 2
local index, hash = KEYS[nq + 1], KEYS[nq + 2]
local most, now, width = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local out, taken = {0}, 0

local function refused(reply)
  return type(reply) == 'table' and reply.err ~= nil
end

-- 'taken', 'empty', or a status to stop with.
local function take(key)
  local raw = redis.pcall('LINDEX', key, -1)
  if refused(raw) then return 1 end
  if not raw then return 'empty' end
  local ok, m = pcall(cjson.decode, raw)
  local p = ok and type(m) == 'table' and m.properties
  local info = type(p) == 'table' and p.delivery_info
  if type(info) ~= 'table' or type(p.delivery_tag) ~= 'string'
    or type(info.exchange) ~= 'string' or type(info.routing_key) ~= 'string' then
    return 1
  end
  local tag = p.delivery_tag
  if refused(redis.pcall('ZADD', index, now, tag)) then return 2 end
  local stored = '[' .. raw .. ',' .. cjson.encode(info.exchange) .. ','
    .. cjson.encode(info.routing_key) .. ']'
  if refused(redis.pcall('HSET', hash, tag, stored)) then
    redis.pcall('ZREM', index, tag)
    return 2
  end
  redis.call('RPOP', key)
  out[#out + 1] = key
  out[#out + 1] = tag
  out[#out + 1] = raw
  taken = taken + 1
  return 'taken'
end

for first = 1, nq, width do
  local live = true
  while live and taken < most do
    live = false
    for key_at = first, first + width - 1 do
      if taken >= most then break end
      local got = take(KEYS[key_at])
      if got == 'taken' then
        live = true
      elseif got ~= 'empty' then
        out[1] = got
        return out
      end
    end
  end
  if taken >= most then break end
end
return out
"""
