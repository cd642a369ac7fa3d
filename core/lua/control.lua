-- Operator control of one circuit: force_open, force_closed or reset, each a new
-- generation. KEYS: 1 state hash, 2 probe lease, 3 transition counters, 4 circuit names,
-- 5 rate buckets (core.keys.circuit). ARGV: 1 action, 2 circuit name, 3 key ttl ms,
-- 4 the open window processes use (ms): what a forced-open rejection tells callers.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local gen = (tonumber(redis.call('HGET', KEYS[1], 'gen')) or 0) + 1
local code, kind = CLOSED, EVENT_RESET
if ARGV[1] == ACTION_FORCE_OPEN then code, kind = FORCED_OPEN, EVENT_FORCED_OPEN
elseif ARGV[1] == ACTION_FORCE_CLOSED then code, kind = FORCED_CLOSED, EVENT_FORCED_CLOSED end
redis.call('HSET', KEYS[1], 'code', code, 'gen', gen, 'fails', 0, 'lastfail', 0,
  'probe_ok', 0, 'until', 0, 'window', 0, 'opened_at', now, 'reset', ARGV[4], 'touched', now)
redis.call('DEL', KEYS[2], KEYS[5])
redis.call('SADD', KEYS[4], ARGV[2])
redis.call('HINCRBY', KEYS[3], kind, 1)
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
redis.call('PEXPIRE', KEYS[3], tonumber(ARGV[3]))
return gen
