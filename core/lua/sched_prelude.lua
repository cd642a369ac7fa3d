-- The batch scheduler (after batch_prelude.lua): a batch's items wait in its kept
-- messages (``batch:{id}:messages``, index -> Celery message) and are released onto the
-- batch queue in a fair order, only as far as keeps the queue ``target`` deep.
-- Start-time fair queuing, twice: the owner with the lowest pass (``sched:owners``, a
-- sorted set) goes next, and its pass grows by 1 / its weight per item; within it, its
-- batch with the lowest pass (``sched:owner:<owner>``) goes next, its pass growing by 1.
-- A newcomer starts at the clock (``sched`` hash, ``vtime``: the pass last served), so
-- it takes its share from now on and no credit for the time it had nothing queued.
-- Batch keys are named here (single Redis or Sentinel, as genq runs on), not in KEYS.
-- ARGV[1] is keys.PREFIX.
local PREFIX = ARGV[1]

local function batch_key(id) return PREFIX .. 'batch:{' .. id .. '}' end
local function sched_owner_key(owner) return PREFIX .. 'sched:owner:' .. owner end

-- The next message of batch ``id`` to release, or nil when it has none left to release
-- (done releasing, gone, cancelling, or past its window: then its backlog is counted
-- cancelled and the batch finalized). A message the batch no longer keeps is skipped
-- (false): the reconciler finds that item lost, as any lost one.
local function next_message(id, now)
  local key = batch_key(id)
  local h = redis.call('HMGET', key, 'status', 'released', 'total', 'expires_at', 'expiring')
  if not h[1] then return nil end
  if h[1] == 'in_progress' and now >= (tonumber(h[4]) or 0) then
    redis.call('HSET', key, 'expiring', 1)
    h[5] = '1'
  end
  if h[1] ~= 'in_progress' or h[5] == '1' then
    hold_back(key)
    finalize(now, key)
    return nil
  end
  local released = tonumber(h[2]) or 0
  if released >= (tonumber(h[3]) or 0) then return nil end
  redis.call('HINCRBY', key, 'released', 1)
  return redis.call('HGET', key .. ':messages', released) or false
end

-- Release items until the queue is ``target`` deep; returns how many were released.
-- KEYS (of the calling script): the batch queue, ``sched:owners``, the ``sched`` hash.
local function release(queue, owners, state, target, weights, now)
  local sent = 0
  local want = target - redis.call('LLEN', queue)
  while sent < want do
    local top = redis.call('ZRANGE', owners, 0, 0, 'WITHSCORES')
    if #top == 0 then break end
    local owner, pass = top[1], tonumber(top[2])
    local mine = sched_owner_key(owner)
    local first = redis.call('ZRANGE', mine, 0, 0, 'WITHSCORES')
    local message = nil
    if #first > 0 then message = next_message(first[1], now) end
    if message == nil then
      if #first > 0 then redis.call('ZREM', mine, first[1]) end
      if redis.call('ZCARD', mine) == 0 then redis.call('ZREM', owners, owner) end
    else
      if message then
        redis.call('LPUSH', queue, stamped(message, now))
        sent = sent + 1
      end
      redis.call('ZADD', mine, tonumber(first[2]) + 1, first[1])
      redis.call('ZADD', owners, pass + 1 / (tonumber(weights[owner]) or 1), owner)
      redis.call('HSET', state, 'vtime', pass)
    end
  end
  return sent
end
