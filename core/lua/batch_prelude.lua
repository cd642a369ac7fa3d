-- Shared head of the batch scripts. KEYS: 1 batch hash, 2 items hash, then the script's
-- own (the scheduler's scripts name their batches as they go). finalize() ends the batch
-- (``key``, default KEYS[1]) once every item is accounted for: completed, failed, or
-- never run because of a cancel or the expiry.
local function finalize(now, key)
  key = key or KEYS[1]
  local h = redis.call('HMGET', key, 'total', 'completed', 'failed', 'cancelled', 'status',
    'expiring')
  local total, done = tonumber(h[1]) or 0, (tonumber(h[2]) or 0) + (tonumber(h[3]) or 0)
  done = done + (tonumber(h[4]) or 0)
  if done < total or (h[5] ~= 'in_progress' and h[5] ~= 'cancelling') then return end
  local final, stamp = 'completed', 'completed_at'
  if h[5] == 'cancelling' then final, stamp = 'cancelled', 'cancelled_at'
  elseif h[6] == '1' then final, stamp = 'expired', 'expired_at' end
  redis.call('HSET', key, 'status', final, 'finalizing_at', now, stamp, now)
end
-- Items a stopped batch never released to the queue (the scheduler's backlog) will not
-- run: counted cancelled at once, so finalize() can end the batch.
local function hold_back(key)
  local h = redis.call('HMGET', key, 'total', 'released')
  local left = (tonumber(h[1]) or 0) - (tonumber(h[2]) or 0)
  if left > 0 then
    redis.call('HINCRBY', key, 'cancelled', left)
    redis.call('HSET', key, 'released', h[1])
  end
end
local function touch(ttl, ...)
  for _, key in ipairs({...}) do redis.call('EXPIRE', key, ttl) end
end

-- A kept item message as it goes onto the batch queue, stamped with the time it did: its
-- ``genq_enqueued_at`` header, which api.publish writes 0 (the queue's oldest age).
local function stamped(message, now)
  return (string.gsub(message, '"genq_enqueued_at": 0([,}])', '"genq_enqueued_at": ' .. now .. '%1', 1))
end
