-- Shared head of the batch item scripts. KEYS: 1 batch hash, 2 items hash, then the
-- script's own. finalize() ends the batch once every item is accounted for: completed,
-- failed, or never run because of a cancel or the expiry.
local function finalize(now)
  local h = redis.call('HMGET', KEYS[1], 'total', 'completed', 'failed', 'cancelled', 'status',
    'expiring')
  local total, done = tonumber(h[1]) or 0, (tonumber(h[2]) or 0) + (tonumber(h[3]) or 0)
  done = done + (tonumber(h[4]) or 0)
  if done < total or (h[5] ~= 'in_progress' and h[5] ~= 'cancelling') then return end
  local final, stamp = 'completed', 'completed_at'
  if h[5] == 'cancelling' then final, stamp = 'cancelled', 'cancelled_at'
  elseif h[6] == '1' then final, stamp = 'expired', 'expired_at' end
  redis.call('HSET', KEYS[1], 'status', final, 'finalizing_at', now, stamp, now)
end
local function touch(ttl, ...)
  for _, key in ipairs({...}) do redis.call('EXPIRE', key, ttl) end
end
