-- Whether a key may submit work now (after owner_prelude.lua): a batch's check before it
-- is created. ARGV: 1 keys.PREFIX, 2 owner, 3 items it adds, 4 most open work (0: none),
-- 5 most submissions a minute (0: none), 6 the jobs' ttl (s). Returns 1 (admitted, and
-- counted against the rate) or admit()'s refusal.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local refused = admit(ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]),
  tonumber(ARGV[5]), now, tonumber(ARGV[6]) * 1000)
return refused or 1
