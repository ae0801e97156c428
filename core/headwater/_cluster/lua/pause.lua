-- No start of the source for wait microseconds from now (a Retry-After); a later pause wins.
--
-- KEYS[1] pause (see acquire.lua); ARGV: wait (microseconds, > 0).
-- Returns the microseconds until the pause in force ends.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local wait = tonumber(ARGV[1])
local current = tonumber(redis.call('GET', KEYS[1]))
if current and current >= now + wait then
  return current - now
end
redis.call('SET', KEYS[1], now + wait, 'PX', math.ceil(wait / 1000))
return wait
