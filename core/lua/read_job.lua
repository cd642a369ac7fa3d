-- A job's record as the API shows it, in one round trip (no MULTI, no pipeline):
-- KEYS: job hash, attempts list. ARGV: the hash's fields to read. Returns {values of
-- those fields (false where unset), the attempts}.
return {redis.call('HMGET', KEYS[1], unpack(ARGV)), redis.call('LRANGE', KEYS[2], 0, -1)}
