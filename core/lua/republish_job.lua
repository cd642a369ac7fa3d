-- Send a lost job's message again (the reconciler's, once the message is in no queue and
-- no worker's hands). KEYS: job hash, running lease, open jobs. ARGV: 1 the job id, 2 the
-- most times a job is sent again. Returns 1 (sent again: LPUSH of the message its record
-- kept, to the queue it kept, the job's quiet time restarted), 0 (final or gone: nothing
-- to do), 2 (a live copy holds the lease), 3 (the record kept no message: created before
-- genq kept them), 4 (sent again too often already).
local status = redis.call('HGET', KEYS[1], 'status')
if not status or status == 'succeeded' or status == 'failed' then
  redis.call('ZREM', KEYS[3], ARGV[1])
  return 0
end
if redis.call('EXISTS', KEYS[2]) == 1 then return 2 end
local kept = redis.call('HMGET', KEYS[1], 'message', 'queue')
if not kept[1] or not kept[2] then return 3 end
if redis.call('HINCRBY', KEYS[1], 'republished', 1) > tonumber(ARGV[2]) then return 4 end
redis.call('LPUSH', kept[2], kept[1])
local t = redis.call('TIME')
redis.call('ZADD', KEYS[3], 'XX', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000), ARGV[1])
return 1
