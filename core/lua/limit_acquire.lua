-- Take one call slot of an upstream target if one is free (after limit_prelude.lua).
-- ARGV: 2 token, 3 lease (ms), 4 ms the caller has waited so far (counted when granted),
-- 5 '1' for an interactive job (it goes first) or '0' for a batch item, 6 how long the
-- caller will wait if refused (ms; 0: it will not). A caller that will wait is
-- registered as waiting until it is granted, gives up, or its wait ends: the adaptive
-- limit grows only while someone waits (limit_release.lua).
-- Expired leases (their holder died) and ended waits are dropped first. A batch item
-- leaves one slot for each interactive job waiting: a freed slot goes to them first.
-- Among interactive jobs it is first come: a newcomer may take a slot a waiter was woken
-- for (making every newcomer wait behind the woken ones left slots idle during each
-- hand-over, and the adaptive limit, which grows only while full, stopped growing).
-- Returns "granted:in_flight:limit:epoch": granted 1 when the slot was taken (its lease
-- is held until release or expiry), 0 when all are held; epoch counts the cuts so far.
local now = now_ms()
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
settle_waiters(now)
local limit = current_limit()
local held = redis.call('ZCARD', KEYS[2])
local first = ARGV[5] == '1'
local room = math.floor(limit)
if not first then room = room - redis.call('ZCARD', KEYS[4]) end
local granted = 0
if held < room then
  redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[2])
  held, granted = held + 1, 1
  if tonumber(ARGV[4]) > 0 then
    redis.call('HINCRBY', KEYS[1], 'waited_ms', ARGV[4])
    redis.call('HINCRBY', KEYS[1], 'waits', 1)
  end
  if first then
    if redis.call('ZREM', KEYS[4], ARGV[2]) == 1 then settle_waiters(now) end
  else
    redis.call('ZREM', KEYS[6], ARGV[2])
  end
elseif tonumber(ARGV[6]) > 0 then
  local waiting = first and KEYS[4] or KEYS[6]
  redis.call('ZADD', waiting, now + tonumber(ARGV[6]), ARGV[2])
  redis.call('PEXPIRE', waiting, ttl)
end
touch()
local epoch = redis.call('HGET', KEYS[1], 'epoch') or '0'
return granted .. ':' .. held .. ':' .. limit .. ':' .. epoch
