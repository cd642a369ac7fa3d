-- ADMIT. ARGV: 2 the token this call holds should it become the probe, 3 '1' to only read.
-- Closed admits; open rejects until `until`, then moves to half-open, and the caller that
-- takes the lease is the one probe; the rest get probe_in_flight until it settles.
if ARGV[3] == '1' then return reply(VERDICT_ADMIT, 0, TRANSITION_NONE) end
if fresh or now - touched > ttl / 4 then save('gen', gen) end  -- quiet successes write nothing
if code == CLOSED or code == FORCED_CLOSED then return reply(VERDICT_ADMIT, 0, TRANSITION_NONE) end
if code == FORCED_OPEN then return reply(VERDICT_REJECT_FORCED, reset_ms, TRANSITION_NONE) end
local moved = TRANSITION_NONE
if code == OPEN then
  if now < untl then return reply(VERDICT_REJECT_OPEN, untl - now, TRANSITION_NONE) end
  move(HALF_OPEN, EVENT_HALF_OPEN, 'probe_ok', 0)
  moved = TRANSITION_HALF_OPEN
end
local holder, expiry = lease()
if not holder or expiry <= now then
  redis.call('SET', KEYS[2], ARGV[2] .. ':' .. (now + lease_ms), 'PX', lease_ms)
  return reply(VERDICT_PROBE, 0, moved)
end
local left = math.min(expiry - now, math.max(window, reset_ms))
return reply(VERDICT_REJECT_PROBE, math.max(0, left), moved)
