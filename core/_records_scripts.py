"""The Lua scripts behind :mod:`core.records`: each is one atomic round trip.

Every worker write goes through one of them, so a job's record, its attempts and (on
success) its cache entry change together, and the first final answer wins.
"""

__all__ = ["FINISH_FROM_CACHE", "MARK_RUNNING", "WRITE_UNLESS_FINAL"]

# Moves a job to ``running`` unless it is missing or already final: a redelivered copy
# of a job that did finish must not reopen it.
MARK_RUNNING = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status or status == 'succeeded' or status == 'failed' then return 0 end
redis.call('HSET', KEYS[1], 'status', 'running', 'started_at', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""

# Writes fields (and appends an attempt) unless the job is missing or already final, in
# one round trip: the first final answer wins, whichever copy of a job gives it.
# KEYS: job hash, attempts list[, one more key to SET with the answer (the cache's)].
# ARGV: ttl, attempt JSON or '', started_at or '' (kept if already set: a job answered
# without being marked running still gets one), extra value, extra ttl, field, value, ...
WRITE_UNLESS_FINAL = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return -1 end
if status == 'succeeded' or status == 'failed' then return 0 end
if ARGV[2] ~= '' then
  redis.call('RPUSH', KEYS[2], ARGV[2])
  redis.call('EXPIRE', KEYS[2], ARGV[1])
end
if ARGV[3] ~= '' then redis.call('HSETNX', KEYS[1], 'started_at', ARGV[3]) end
if KEYS[3] then redis.call('SET', KEYS[3], ARGV[4], 'EX', ARGV[5]) end
redis.call('HSET', KEYS[1], unpack(ARGV, 6))
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
"""

# A cached answer, looked up and recorded in one round trip, else (optionally) the answer
# the worker prepared instead. KEYS: job hash, attempts list, cache entry. ARGV: ttl,
# attempt JSON or '', started_at, finished_at, the result's other fields as JSON
# ('{"source":"cache",...}'), and the result JSON to record when the cache has no
# readable entry, or ''. The entry is checked as CachedGeneration.decode checks it; text,
# model and usage are spliced into the result. Returns the cached result JSON written,
# or -1 (no job), 0 (job final), -2 (no entry), -3 (not an entry genq wrote: not UTF-8,
# not the fields CachedGeneration has, or text with a lone surrogate, which no result
# can hold); -4 and -5 are -2 and -3 with the other answer recorded.
FINISH_FROM_CACHE = """
-- cjson passes bytes through: text that is not UTF-8 would make an unreadable record.
local function utf8_ok(s)
  if not string.find(s, '[\\128-\\255]') then return true end
  local i, n = 1, #s
  while i <= n do
    local c = string.byte(s, i)
    local len, lo, hi = 1, 0x80, 0xBF
    if c < 0x80 then len = 1
    elseif c >= 0xC2 and c <= 0xDF then len = 2
    elseif c >= 0xE0 and c <= 0xEF then
      len = 3
      if c == 0xE0 then lo = 0xA0 elseif c == 0xED then hi = 0x9F end
    elseif c >= 0xF0 and c <= 0xF4 then
      len = 4
      if c == 0xF0 then lo = 0x90 elseif c == 0xF4 then hi = 0x8F end
    else return false end
    if i + len - 1 > n then return false end
    for j = i + 1, i + len - 1 do
      local b = string.byte(s, j)
      if j == i + 1 then
        if b < lo or b > hi then return false end
      elseif b < 0x80 or b > 0xBF then return false end
    end
    i = i + len
  end
  return true
end
local function record(result)
  if ARGV[2] ~= '' then
    redis.call('RPUSH', KEYS[2], ARGV[2])
    redis.call('EXPIRE', KEYS[2], ARGV[1])
  end
  redis.call('HSETNX', KEYS[1], 'started_at', ARGV[3])
  redis.call('HSET', KEYS[1], 'status', 'succeeded', 'finished_at', ARGV[4], 'result', result)
  redis.call('EXPIRE', KEYS[1], ARGV[1])
end
local function miss(code)
  if ARGV[6] == '' then return code end
  record(ARGV[6])
  return code - 2
end
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return -1 end
if status == 'succeeded' or status == 'failed' then return 0 end
local raw = redis.call('GET', KEYS[3])
if not raw then return miss(-2) end
if not utf8_ok(raw) then return miss(-3) end
local ok, entry = pcall(cjson.decode, raw)
if not ok or type(entry) ~= 'table' or type(entry.text) ~= 'string'
  or type(entry.model) ~= 'string' or type(entry.created_at) ~= 'number' then
  return miss(-3)
end
local parts = {'{"text":', cjson.encode(entry.text), ',"model":', cjson.encode(entry.model)}
if type(entry.usage) == 'table' then
  for k, v in pairs(entry.usage) do
    if type(k) ~= 'string' or type(v) ~= 'number' or v ~= math.floor(v) then
      return miss(-3)
    end
  end
  table.insert(parts, ',"usage":')
  table.insert(parts, cjson.encode(entry.usage))
elseif entry.usage ~= nil and entry.usage ~= cjson.null then return miss(-3) end
table.insert(parts, ',')
table.insert(parts, string.sub(ARGV[5], 2))
local result = table.concat(parts)
record(result)
return result
"""
