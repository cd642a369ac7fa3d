-- An item is about to run. KEYS: 3 the item's running lease. ARGV: 1 index, 2 now (s),
-- 3 ttl (s), 4 token, 5 lease (ms). Returns 1 to run it (the lease is taken); 2 when
-- another copy holds the lease (it is alive and calling the upstream); 0 when it must
-- not run: already done, or its batch is gone, cancelling or expired (then it is counted
-- as cancelled, in neither file).
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 0 end
local state = redis.call('HGET', KEYS[2], ARGV[1])
if state == 'done' or state == 'cancelled' then return 0 end
local now = tonumber(ARGV[2])
if status == 'in_progress' and now >= tonumber(redis.call('HGET', KEYS[1], 'expires_at')) then
  redis.call('HSET', KEYS[1], 'expiring', 1)
end
local stop = status ~= 'in_progress' or redis.call('HGET', KEYS[1], 'expiring') == '1'
if stop then
  redis.call('HSET', KEYS[2], ARGV[1], 'cancelled')
  redis.call('HINCRBY', KEYS[1], 'cancelled', 1)
  finalize(now)
  touch(ARGV[3], KEYS[1], KEYS[2])
  return 0
end
local holder = redis.call('GET', KEYS[3])
if holder and holder ~= ARGV[4] then return 2 end
redis.call('SET', KEYS[3], ARGV[4], 'PX', ARGV[5])
redis.call('HSET', KEYS[2], ARGV[1], 'running')
redis.call('HSET', KEYS[1], 'active_at', now)
touch(ARGV[3], KEYS[2])
return 1
