-- Moves a job to 'running' unless it is missing or already final: a redelivered copy of
-- a job that did finish must not reopen it. KEYS: job hash. ARGV: started_at, ttl s.
local status = redis.call('HGET', KEYS[1], 'status')
if not status or status == 'succeeded' or status == 'failed' then return 0 end
redis.call('HSET', KEYS[1], 'status', 'running', 'started_at', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
