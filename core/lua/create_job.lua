-- A new job (after owner_prelude.lua): its record and its queued message together,
-- unless the API has already given up waiting for this answer (a submit it answered 503
-- must leave nothing behind, even if Redis was hung and runs the script late), or the
-- key is over its limits (nothing is written then either).
-- KEYS: job hash, queue, open jobs. ARGV: 1 the API's deadline (epoch ms), 2 ttl (s),
-- 3 the message, 4 keys.PREFIX, 5 owner, 6 the key's most open work (0: none), 7 its
-- most submissions a minute (0: none), then field, value, ...
-- The record keeps the message and its queue until it is final: the reconciler sends it
-- again if the message is lost (republish_job.lua). Returns 1 (created), 0 (too late),
-- or admit()'s refusal.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if now > tonumber(ARGV[1]) then return 0 end
local ttl_ms = tonumber(ARGV[2]) * 1000
local refused = admit(ARGV[4], ARGV[5], 1, tonumber(ARGV[6]), tonumber(ARGV[7]), now, ttl_ms)
if refused then return refused end
local id = string.match(KEYS[1], '[^:]+$')
redis.call('HSET', KEYS[1], 'message', ARGV[3], 'queue', KEYS[2], unpack(ARGV, 8))
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('LPUSH', KEYS[2], ARGV[3])
redis.call('ZADD', KEYS[3], now, id)
local mine = owner_key(ARGV[4], ARGV[5], 'jobs')
redis.call('ZADD', mine, now, id)
redis.call('EXPIRE', mine, ARGV[2])
return 1
