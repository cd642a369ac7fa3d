-- Shared by limit_acquire.lua and limit_release.lua: an upstream target's call limit.
-- KEYS: 1 the limit's state (hash), 2 the leases of calls in flight (sorted set: token ->
-- expiry in ms), 3 the freed-slot list batch items wait on, 4 the interactive jobs
-- waiting (sorted set: token -> end of the wait in ms), 5 the list they wait on, 6 the
-- batch items waiting (sorted set, as 4: they wait on 3).
-- ARGV[1] holds the options, "mode:initial:floor:ceiling:decrease:ttl_ms": mode 'fixed'
-- holds the ceiling; 'adaptive' starts at initial and moves between floor and ceiling;
-- decrease is the factor of a cut; ttl_ms is the keys' idle expiry.
local mode, initial, floor, ceiling, decrease, ttl = string.match(
  ARGV[1], '^(%a+):([%d.]+):([%d.]+):([%d.]+):([%d.]+):(%d+)$')
initial, floor, ceiling = tonumber(initial), tonumber(floor), tonumber(ceiling)
decrease = tonumber(decrease)

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- The limit now: the fixed one, or the adaptive one (set to initial on first use) kept
-- within the floor and ceiling of the caller's options.
local function current_limit()
  if mode == 'fixed' then return ceiling end
  local limit = tonumber(redis.call('HGET', KEYS[1], 'limit'))
  if not limit then
    limit = initial
    redis.call('HSET', KEYS[1], 'limit', limit, 'slow_start', 1)
  end
  return math.min(math.max(limit, floor), ceiling)
end

local function touch()
  redis.call('HSET', KEYS[1], 'mode', mode, 'floor', floor, 'ceiling', ceiling)
  redis.call('PEXPIRE', KEYS[1], ttl)
  redis.call('PEXPIRE', KEYS[2], ttl)
end

-- Drop the waits that ended; wake-ups on their list beyond the jobs still
-- waiting go to the batch items' list (a waiter that gave up, or one woken twice, must
-- not keep a freed slot from them).
local function settle_waiters(now)
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
  redis.call('ZREMRANGEBYSCORE', KEYS[6], '-inf', now)
  local extra = redis.call('LLEN', KEYS[5]) - redis.call('ZCARD', KEYS[4])
  for _ = 1, extra do redis.call('LMOVE', KEYS[5], KEYS[3], 'RIGHT', 'LEFT') end
  if extra > 0 then redis.call('PEXPIRE', KEYS[3], ttl) end
end
