-- Cancel a batch. KEYS: 1 batch hash, 2 items hash. ARGV: 1 now (s). Validating or in
-- progress: cancelling (items not yet started will not run; running ones finish; those
-- the scheduler had not released yet are counted cancelled now), and cancelled at once
-- if nothing is left to run. Returns the status after.
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'validating' or status == 'in_progress' then
  redis.call('HSET', KEYS[1], 'status', 'cancelling', 'cancelling_at', ARGV[1])
  if status == 'validating' then
    redis.call('HSET', KEYS[1], 'status', 'cancelled', 'cancelled_at', ARGV[1])
  else
    hold_back(KEYS[1])
    finalize(tonumber(ARGV[1]))
  end
end
return redis.call('HGET', KEYS[1], 'status')
