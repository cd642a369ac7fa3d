-- A key's (an owner's) open work and its submissions this minute (core.quotas). Keys are
-- named here from ``prefix`` (keys.PREFIX) and the owner: single Redis or Sentinel.
-- Open work: its jobs not final (``owner:<o>:jobs``, job id -> created ms; an entry older
-- than the jobs' ttl is dropped: its record expired) and its batches' items not done
-- (``owner:<o>:batches``; a batch final or gone is dropped).
local function owner_key(prefix, owner, part)
  return prefix .. 'owner:' .. owner .. ':' .. part
end

local function open_work(prefix, owner, now_ms, ttl_ms)
  local jobs = owner_key(prefix, owner, 'jobs')
  redis.call('ZREMRANGEBYSCORE', jobs, '-inf', now_ms - ttl_ms)
  local open = redis.call('ZCARD', jobs)
  local batches = owner_key(prefix, owner, 'batches')
  for _, id in ipairs(redis.call('ZRANGE', batches, 0, -1)) do
    local h = redis.call('HMGET', prefix .. 'batch:{' .. id .. '}', 'status', 'total',
      'completed', 'failed', 'cancelled')
    if h[1] == 'in_progress' or h[1] == 'cancelling' then
      local done = (tonumber(h[3]) or 0) + (tonumber(h[4]) or 0) + (tonumber(h[5]) or 0)
      open = open + (tonumber(h[2]) or 0) - done
    else
      redis.call('ZREM', batches, id)
    end
  end
  return open
end

-- Whether ``owner`` may submit ``adding`` more items of work now: nil (and the submission
-- counted against its rate), or {reason ('open' | 'rate'), the limit, seconds to wait}.
-- ``max_open`` and ``rate`` (per minute) 0: no such limit.
local function admit(prefix, owner, adding, max_open, rate, now_ms, ttl_ms)
  if max_open > 0 then
    local open = open_work(prefix, owner, now_ms, ttl_ms)
    if open + adding > max_open then return {'open', max_open, 1} end
  end
  if rate > 0 then
    local minute = math.floor(now_ms / 60000)
    local counter = owner_key(prefix, owner, 'rate:' .. minute)
    local n = redis.call('INCR', counter)
    if n == 1 then redis.call('PEXPIRE', counter, 61000) end
    if n > rate then return {'rate', rate, math.ceil(((minute + 1) * 60000 - now_ms) / 1000)} end
  end
  return nil
end
