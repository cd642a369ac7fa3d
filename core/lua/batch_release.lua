-- Top the batch queue up to ``target`` in the scheduler's fair order (after
-- batch_prelude.lua and sched_prelude.lua): run by workers as they take each item, and on
-- a tick.
-- KEYS: 1 the batch queue, 2 sched:owners, 3 the sched hash. ARGV: 1 keys.PREFIX,
-- 2 target depth, 3 weights (JSON: owner -> weight), 4 now (s). Returns how many items
-- were released.
local weights = cjson.decode(ARGV[3])
return release(KEYS[1], KEYS[2], KEYS[3], tonumber(ARGV[2]), weights, tonumber(ARGV[4]))
