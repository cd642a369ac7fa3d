-- A call that held a slot ended (after limit_prelude.lua). The freed slot is announced on
-- the interactive jobs' list while more of them wait than it holds wake-ups for (they go
-- first), else on the batch items' list; a slot the limit grew by is announced as well.
-- ARGV: 2 token, 3 outcome ('ok', 'throttled' (a 429), 'congested' (a timeout, or slower
-- than the latency target), 'neutral'), 4 the epoch its slot was granted in[, 5 and 6
-- the call's bucket and sum fields in the calls histogram (KEYS[7], core.stats), 7 its
-- duration (s)].
-- Adaptive (AIMD, shaped like TCP CUBIC): an ok call grows the limit only while the limit
-- holds back demand: a job waits for a slot, or all of it is in use (all slots but one
-- held, this call's included). A limit the demand does not fill says nothing about the
-- provider's capacity, and must not run away above it. (Asking only "is it full now"
-- stalled the climb: calls that start together end together, and each after the first
-- saw the slots its neighbours had just freed, while their waiters were still asleep.)
-- Until the first cut it grows by two per call (it triples per round of calls: a provider
-- that holds fewer says so with a 429 at once, and the first one ends the climb); after, by
-- how far it is from the limit of the last cut (``peak``): below it, half the way back
-- per round (at least one), so a cut of 10% is mostly won back in two rounds; 0.1/limit
-- per call within one of it (probing gently where the provider said "too many" last);
-- and (limit - peak)/limit above it (the capacity grew: the distance doubles per round).
-- A throttled or congested call cuts the limit by the decrease factor, once per epoch:
-- calls granted before the last cut do not cut again.
-- Returns "limit:in_flight:at_floor": at_floor 1 for a 429 at the adaptive floor.
local limit = current_limit()
local held = redis.call('ZCARD', KEYS[2])
local freed = redis.call('ZREM', KEYS[2], ARGV[2])
local outcome = ARGV[3]
redis.call('HINCRBY', KEYS[1], 'calls', 1)
if ARGV[5] then
  redis.call('HINCRBY', KEYS[7], ARGV[5], 1)
  redis.call('HINCRBYFLOAT', KEYS[7], ARGV[6], ARGV[7])
end
if outcome == 'throttled' then redis.call('HINCRBY', KEYS[1], 'throttled', 1) end
settle_waiters(now_ms())
local at_floor, grown = 0, 0
if mode ~= 'fixed' then
  local waiting = redis.call('ZCARD', KEYS[4]) + redis.call('ZCARD', KEYS[6])
  if outcome == 'ok' and (waiting > 0 or held >= math.floor(limit) - 1) then
    local step = 2
    if redis.call('HGET', KEYS[1], 'slow_start') ~= '1' then
      local gap = limit - tonumber(redis.call('HGET', KEYS[1], 'peak') or limit)
      if gap > 1 then step = math.min(1, gap / limit)
      elseif gap > -1 then step = 0.1 / limit
      else step = math.max(1, -gap / 2) / limit end
    end
    local grew = math.min(ceiling, limit + step)
    grown = math.floor(grew) - math.floor(limit)
    limit = grew
  elseif outcome == 'throttled' or outcome == 'congested' then
    if outcome == 'throttled' and limit <= floor then at_floor = 1 end
    local epoch = tonumber(redis.call('HGET', KEYS[1], 'epoch') or '0')
    if tonumber(ARGV[4]) >= epoch then
      redis.call('HSET', KEYS[1], 'epoch', epoch + 1, 'slow_start', 0, 'peak', limit)
      limit = math.max(floor, limit * decrease)
      redis.call('HINCRBY', KEYS[1], 'cuts', 1)
    end
  end
  redis.call('HSET', KEYS[1], 'limit', limit)
end
if freed == 1 then
  for _ = 0, grown do
    local wake = KEYS[3]
    if redis.call('ZCARD', KEYS[4]) > redis.call('LLEN', KEYS[5]) then wake = KEYS[5] end
    redis.call('LPUSH', wake, 1)
    redis.call('LTRIM', wake, 0, 63)
    redis.call('PEXPIRE', wake, ttl)
  end
end
touch()
return limit .. ':' .. (held - freed) .. ':' .. at_floor
