-- A holder's download ended now: its slot is free and the delay counts from now.
--
-- KEYS[1] holders, KEYS[2] ended (see acquire.lua); ARGV: holder.
-- Returns 1 if the holder still held its lease, 0 if it had lost it (the end counts all the same:
-- whatever it was doing stopped only now). Calling it again changes nothing but the end time.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local holders, ended, holder = KEYS[1], KEYS[2], ARGV[1]
local expiry = tonumber(redis.call('ZSCORE', holders, holder))
redis.call('ZREM', holders, holder)
local last_end = tonumber(redis.call('GET', ended))
if not last_end or now > last_end then
  redis.call('SET', ended, now)
end
if expiry and expiry > now then
  return 1
end
return 0
