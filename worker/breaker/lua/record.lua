-- RECORD one finished call. ARGV: 2 "outcome:generation admitted in (empty: the current
-- one):retry_after ms:probe lease token (empty if not a probe)", 3 failure text.
-- Outcomes of another generation are ignored. Half-open: only the lease holder counts;
-- success_threshold successes close, a failure reopens for max(2 * window, retry_after).
-- Closed: a success zeroes fails; a failure counts, and trips at fail_max or the rate.
local outcome, admitted, retry, token = string.match(ARGV[2], '^(%a+):(%d*):(%d+):(.*)$')
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
local none = TRANSITION_NONE
if admitted ~= '' and tonumber(admitted) ~= gen then return reply(VERDICT_RECORDED, 0, none) end
if code == HALF_OPEN then
  local holder, expiry = lease()
  if token == '' or holder ~= token or expiry <= now then
    return reply(VERDICT_RECORDED, 0, none)
  end
  redis.call('DEL', KEYS[2])
  if outcome == OUTCOME_OK then
    if redis.call('HINCRBY', KEYS[1], 'probe_ok', 1) >= succ then
      return reply(VERDICT_RECORDED, 0, close())
    end
  elseif outcome == OUTCOME_FAIL then
    save('last_failure', ARGV[3])
    local reopened = open(math.max(window * 2, reset_ms, retry), TRANSITION_PROBE_FAILED)
    return reply(VERDICT_RECORDED, 0, reopened)
  end
  return reply(VERDICT_RECORDED, 0, none)
end
if code ~= CLOSED or token ~= '' or outcome == OUTCOME_NEUTRAL then
  return reply(VERDICT_RECORDED, 0, none)
end
if outcome == OUTCOME_OK then
  -- A busy path (with a rate window): write only what changed, refresh the expiry at times.
  if fails > 0 or fresh or now - touched > ttl / 4 then save('fails', 0) end
  fails = 0
  if win_ms > 0 then tally(false) end
  return reply(VERDICT_RECORDED, 0, none)
end
fails, lastfail = fails + 1, now
save('fails', fails, 'lastfail', now, 'last_failure', ARGV[3])
local rate_tripped = win_ms > 0 and tally(true)
local trip = math.max(reset_ms, retry)
if fails >= fail_max then return reply(VERDICT_RECORDED, 0, open(trip, TRANSITION_FAIL_MAX)) end
if rate_tripped then return reply(VERDICT_RECORDED, 0, open(trip, TRANSITION_RATE)) end
return reply(VERDICT_RECORDED, 0, none)
