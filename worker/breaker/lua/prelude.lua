-- Shared head of admit.lua and record.lua (the codes above it come from Python enums).
-- KEYS (core.keys.circuit): 1 state hash, 2 probe lease, 3 transition counters,
-- 4 circuit names, 5 rate buckets.
-- ARGV[1], one struct-packed argument (it costs least; built by RedisStore): int64 clock
-- in ms (0: Redis TIME; only tests give one), key ttl, fail_max, reset, max reset,
-- success threshold, probe lease, rate window (0 = off), all ms; double rate
-- threshold; int64 min calls; then the circuit's name.
local clock, ttl, fail_max, reset_ms, max_ms, succ, lease_ms, win_ms, rate, min_calls, at =
  struct.unpack('>i8i8i8i8i8i8i8i8di8', ARGV[1])
local now = clock
if now == 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local h = redis.call('HMGET', KEYS[1], 'code', 'gen', 'fails', 'until', 'window', 'lastfail',
  'touched')
local fresh, touched = not h[2], tonumber(h[7]) or 0
local code, gen, fails = tonumber(h[1]) or CLOSED, tonumber(h[2]) or 0, tonumber(h[3]) or 0
local untl, window, lastfail = tonumber(h[4]) or 0, tonumber(h[5]) or 0, tonumber(h[6]) or 0

local function save(...)
  redis.call('HSET', KEYS[1], 'touched', now, ...)
  redis.call('PEXPIRE', KEYS[1], ttl)
  if fresh then
    redis.call('SADD', KEYS[4], string.sub(ARGV[1], at))
    fresh = false
  end
end
local function move(new_code, event, ...)
  code, gen = new_code, gen + 1
  redis.call('DEL', KEYS[5])
  save('code', code, 'gen', gen, 'reset', reset_ms, ...)
  redis.call('HINCRBY', KEYS[3], event, 1)
  redis.call('PEXPIRE', KEYS[3], ttl)
end
local function open(w, why)
  window = math.min(max_ms, w)
  untl = now + window
  redis.call('DEL', KEYS[2])
  move(OPEN, EVENT_OPENED, 'until', untl, 'window', window, 'opened_at', now, 'probe_ok', 0)
  return why
end
local function close()
  fails, untl, window, lastfail = 0, 0, 0, 0
  move(CLOSED, EVENT_CLOSED, 'fails', 0, 'until', 0, 'window', 0, 'lastfail', 0, 'probe_ok', 0)
  return TRANSITION_CLOSED
end
-- The probe lease: '<token>:<expiry ms>'; its PX only collects it, the expiry decides.
local function lease()
  local held = redis.call('GET', KEYS[2])
  if not held then return nil, 0 end
  local token, expiry = string.match(held, '^(.*):(%d+)$')
  return token, tonumber(expiry) or 0
end
-- The circuit after this script, and its verdict: nine integers in one string (Reply).
local function reply(verdict, retry, moved)
  local hot = 0
  if fails > 0 or (win_ms > 0 and lastfail > 0 and now - lastfail < win_ms) then hot = 1 end
  local u = untl
  if code == FORCED_OPEN then u = now + reset_ms end
  return string.format('%d:%d:%d:%d:%d:%d:%d:%d:%d', code, gen, fails, u, now, hot, verdict,
    retry, moved)
end
