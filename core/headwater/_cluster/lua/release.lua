-- A holder's slot is free: its download ended now (the delay counts from now), or never began.
--
-- KEYS[1] holders, KEYS[2] ended, KEYS[3] starts (see acquire.lua); ARGV: holder, started (1 or 0),
-- and optionally a channel to PUBLISH the holder on once its slot is free (the scheduler listens).
-- started 0: the grant is given back unused (the download was cancelled before it began), so it
-- counts neither as an end nor as a start of the per-minute window.
-- Returns 1 if the holder still held its lease, 0 if it had lost it (the end counts all the same:
-- whatever it was doing stopped only now). Calling it again changes nothing but the end time.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local holders, ended, starts, holder = KEYS[1], KEYS[2], KEYS[3], ARGV[1]
local expiry = tonumber(redis.call('ZSCORE', holders, holder))
redis.call('ZREM', holders, holder)
if ARGV[2] == '1' then
  local last_end = tonumber(redis.call('GET', ended))
  if not last_end or now > last_end then
    redis.call('SET', ended, now)
  end
else
  redis.call('ZREM', starts, holder)
end
if ARGV[3] then
  redis.call('PUBLISH', ARGV[3], holder)
end
if expiry and expiry > now then
  return 1
end
return 0
