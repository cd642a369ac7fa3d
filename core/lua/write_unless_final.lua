-- Writes fields (and appends an attempt) unless the job is missing or already final, in
-- one round trip: the first final answer wins, whichever copy of a job gives it. The
-- running lease goes with it (the job is final, or waits for its retry).
-- KEYS: job hash, lease, open jobs, the finished counts and the recent outcomes
-- (core.stats)[, one more key to SET with the answer (the cache's)].
-- A final status leaves the open jobs and is counted; any other write refreshes its score.
-- ARGV: ttl, attempt JSON or '' (appended to the hash's ``attempts``, a JSON array, so one
-- HMGET reads the whole record), started_at or '' (kept if already set: a job answered
-- without being marked running still gets one), extra value, extra ttl, the channel a
-- final write publishes the job's id on (keys.jobs_done), the finished count's field and
-- the outcome's summary ('' for a write that is not final), field, value, ...
-- Returns -1 (no such job), 0 (already final) or 1 (written).
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return -1 end
if status == 'succeeded' or status == 'failed' then return 0 end
if ARGV[2] ~= '' then
  local kept = redis.call('HGET', KEYS[1], 'attempts')
  if kept then kept = string.sub(kept, 1, -2) .. ',' .. ARGV[2] .. ']'
  else kept = '[' .. ARGV[2] .. ']' end
  redis.call('HSET', KEYS[1], 'attempts', kept)
end
if ARGV[3] ~= '' then redis.call('HSETNX', KEYS[1], 'started_at', ARGV[3]) end
if KEYS[6] then redis.call('SET', KEYS[6], ARGV[4], 'EX', ARGV[5]) end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[1], unpack(ARGV, 9))
redis.call('EXPIRE', KEYS[1], ARGV[1])
local id = string.match(KEYS[1], '[^:]+$')
local new = redis.call('HGET', KEYS[1], 'status')
if new == 'succeeded' or new == 'failed' then
  redis.call('ZREM', KEYS[3], id)
  redis.call('HDEL', KEYS[1], 'message', 'queue')  -- kept only to send a lost one again
  local owner = redis.call('HGET', KEYS[1], 'owner')
  if owner then  -- no longer the key's open work (owner_prelude.lua)
    redis.call('ZREM', string.match(KEYS[1], '^(.*)job:') .. 'owner:' .. owner .. ':jobs', id)
  end
  if ARGV[7] ~= '' then
    redis.call('HINCRBY', KEYS[4], ARGV[7], 1)
    redis.call('LPUSH', KEYS[5], ARGV[8])
    redis.call('LTRIM', KEYS[5], 0, 49)  -- core.stats.RECENT_KEPT
  end
  redis.call('PUBLISH', ARGV[6], id)  -- wakes the API's long-polls
else
  local t = redis.call('TIME')
  redis.call('ZADD', KEYS[3], 'XX', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000), id)
end
return 1
