-- A new job: its record and its queued message together, unless the API has already
-- given up waiting for this answer (a submit it answered 503 must leave nothing behind,
-- even if Redis was hung and runs the script late). KEYS: job hash, queue, open jobs.
-- ARGV: 1 the API's deadline (epoch ms), 2 ttl (s), 3 the message, then field, value, ...
-- The record keeps the message and its queue until it is final: the reconciler sends it
-- again if the message is lost (republish_job.lua).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if now > tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'message', ARGV[3], 'queue', KEYS[2], unpack(ARGV, 4))
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('LPUSH', KEYS[2], ARGV[3])
redis.call('ZADD', KEYS[3], now, string.match(KEYS[1], '[^:]+$'))
return 1
