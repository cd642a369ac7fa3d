-- A result cache lookup (worker.cache), counted as a hit or a miss in the cluster's
-- counts (core.stats). KEYS: the entry, the cache counts (hash). Returns the entry or nil.
local value = redis.call('GET', KEYS[1])
if value then redis.call('HINCRBY', KEYS[2], 'hit', 1)
else redis.call('HINCRBY', KEYS[2], 'miss', 1) end
return value
