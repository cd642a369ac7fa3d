-- Send a lost batch item's message again (the reconciler's, once the message is in no
-- queue and no worker's hands). KEYS: 3 the kept messages (index -> message), 4 the
-- item's running lease, 5 the batch queue. ARGV: 1 index, 2 the most times an item is
-- sent again, 3 now (s). Returns what core.records.Republished names: 1 sent again (the
-- batch's quiet time restarted), 0 done or cancelled already, 2 a live copy holds the
-- lease, 3 no message kept, 4 sent again too often, 5 the batch is being cancelled or is
-- past its window (batch_item_start.lua counts the item then).
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 0 end
local state = redis.call('HGET', KEYS[2], ARGV[1])
if state == 'done' or state == 'cancelled' then return 0 end
local window = tonumber(redis.call('HGET', KEYS[1], 'expires_at')) or 0
local expiring = redis.call('HGET', KEYS[1], 'expiring') == '1'
if status ~= 'in_progress' or expiring or tonumber(ARGV[3]) >= window then return 5 end
if redis.call('EXISTS', KEYS[4]) == 1 then return 2 end
local message = redis.call('HGET', KEYS[3], ARGV[1])
if not message then return 3 end
if redis.call('HINCRBY', KEYS[3], 'republished:' .. ARGV[1], 1) > tonumber(ARGV[2]) then
  return 4
end
redis.call('LPUSH', KEYS[5], stamped(message, ARGV[3]))
redis.call('HSET', KEYS[1], 'active_at', ARGV[3])
return 1
