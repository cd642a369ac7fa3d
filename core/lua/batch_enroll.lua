-- A batch starts (after batch_prelude.lua and sched_prelude.lua): it joins the
-- scheduler, its owner at the clock if the owner had nothing queued, the batch level
-- with the owner's other batches; then the queue is filled to ``target``.
-- KEYS: 1 batch hash, 2 items hash, 3 the batch queue, 4 sched:owners, 5 the sched hash.
-- ARGV: 1 keys.PREFIX, 2 batch id, 3 owner, 4 target depth, 5 weights (JSON: owner ->
-- weight), 6 now (s). Returns how many items were released.
local vtime = tonumber(redis.call('HGET', KEYS[5], 'vtime')) or 0
redis.call('ZADD', KEYS[4], 'NX', vtime, ARGV[3])
local mine = sched_owner_key(ARGV[3])
local low = redis.call('ZRANGE', mine, 0, 0, 'WITHSCORES')
redis.call('ZADD', mine, 'NX', tonumber(low[2]) or 0, ARGV[2])
local weights = cjson.decode(ARGV[5])
return release(KEYS[3], KEYS[4], KEYS[5], tonumber(ARGV[4]), weights, tonumber(ARGV[6]))
