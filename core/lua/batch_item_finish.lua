-- An item's final line. KEYS: 3 output list, 4 error list, 5 the item's running lease
-- (released), 6 the batch's kept messages (the item's is dropped), 7 the finished counts,
-- 8 the recent outcomes (core.stats)[, 9 a key to SET with it (the cache entry)].
-- ARGV: 1 index, 2 'output' or 'error', 3 the line (JSON), 4 source (upstream | failover |
-- cache | excerpt; '' for errors: failover is an upstream answer of a failover target),
-- 5 now (s), 6 ttl (s), 7 the finished count's field, 8 the outcome's summary[, 9 value,
-- 10 its ttl]. The first final line wins: returns 1 if written (and counted), 0 if the
-- item was already done or cancelled (another copy answered first) or the batch is gone.
redis.call('DEL', KEYS[5])
if not redis.call('HGET', KEYS[1], 'status') then return 0 end
local state = redis.call('HGET', KEYS[2], ARGV[1])
if state == 'done' or state == 'cancelled' then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], 'done')
redis.call('HDEL', KEYS[6], ARGV[1])
if ARGV[2] == 'output' then
  redis.call('RPUSH', KEYS[3], ARGV[3])
  redis.call('HINCRBY', KEYS[1], 'completed', 1)
  redis.call('HINCRBY', KEYS[1], 'source_' .. ARGV[4], 1)
  redis.call('HINCRBY', KEYS[1], 'output_bytes', #ARGV[3] + 1)
else
  redis.call('RPUSH', KEYS[4], ARGV[3])
  redis.call('HINCRBY', KEYS[1], 'failed', 1)
  redis.call('HINCRBY', KEYS[1], 'error_bytes', #ARGV[3] + 1)
end
if KEYS[9] then redis.call('SET', KEYS[9], ARGV[9], 'EX', ARGV[10]) end
redis.call('HINCRBY', KEYS[7], ARGV[7], 1)
redis.call('LPUSH', KEYS[8], ARGV[8])
redis.call('LTRIM', KEYS[8], 0, 49)  -- core.stats.RECENT_KEPT
redis.call('HSET', KEYS[1], 'active_at', ARGV[5])
finalize(tonumber(ARGV[5]))
touch(ARGV[6], KEYS[1], KEYS[2], KEYS[3], KEYS[4])
return 1
