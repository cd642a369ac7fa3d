-- Moves a job to 'running' and takes its running lease, unless it is missing or final (a
-- redelivered copy of a finished job must not reopen it: 0), or another copy holds the
-- lease (that copy is alive and calling the upstream: 2). KEYS: job hash, lease, open
-- jobs (its score: the record's last write).
-- ARGV: started_at, ttl s, token, lease ms. The holder renews the lease while it runs;
-- its final write (or its retry) deletes it.
local status = redis.call('HGET', KEYS[1], 'status')
if not status or status == 'succeeded' or status == 'failed' then return 0 end
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[3] then return 2 end
redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[4])
redis.call('HSET', KEYS[1], 'status', 'running', 'started_at', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
local t = redis.call('TIME')
redis.call('ZADD', KEYS[3], 'XX', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000),
  string.match(KEYS[1], '[^:]+$'))
return 1
