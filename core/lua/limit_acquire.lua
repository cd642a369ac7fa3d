-- Take one call slot of an upstream target if one is free (after limit_prelude.lua).
-- ARGV: 2 token, 3 lease (ms), 4 ms the caller has waited so far (counted when granted).
-- Expired leases (their holder died) are dropped first.
-- Returns "granted:in_flight:limit:epoch": granted 1 when the slot was taken (its lease
-- is held until release or expiry), 0 when all are held; epoch counts the cuts so far.
local now = now_ms()
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local limit = current_limit()
local held = redis.call('ZCARD', KEYS[2])
local granted = 0
if held < math.floor(limit) then
  redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[2])
  held, granted = held + 1, 1
  if tonumber(ARGV[4]) > 0 then
    redis.call('HINCRBY', KEYS[1], 'waited_ms', ARGV[4])
    redis.call('HINCRBY', KEYS[1], 'waits', 1)
  end
end
touch()
local epoch = redis.call('HGET', KEYS[1], 'epoch') or '0'
return granted .. ':' .. held .. ':' .. limit .. ':' .. epoch
