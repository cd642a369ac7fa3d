-- Extend the leases of calls still in flight: their holder's heartbeat (worker.leases).
-- KEYS: 1 the leases of calls in flight (sorted set: token -> expiry in ms). ARGV: 1 the
-- lease (ms), then the tokens. A token no longer held (released, or lapsed and dropped)
-- is not added back. Returns how many were renewed.
local t = redis.call('TIME')
local expiry = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
local renewed = 0
for i = 2, #ARGV do
  renewed = renewed + redis.call('ZADD', KEYS[1], 'XX', 'CH', expiry, ARGV[i])
end
return renewed
