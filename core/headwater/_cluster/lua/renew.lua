-- Extend a holder's lease by lease from now, if it still holds it.
--
-- KEYS[1] holders, KEYS[2] ended (see acquire.lua); ARGV: holder, lease (microseconds).
-- Returns 1 if renewed; 0 if the holder holds no lease: it expired (then it is dropped and its
-- expiry counts as an end), it was released, or Redis lost the state. A lease past its expiry is
-- lost even if no one has taken its slot yet.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local holders, ended, holder, lease = KEYS[1], KEYS[2], ARGV[1], tonumber(ARGV[2])
local expiry = tonumber(redis.call('ZSCORE', holders, holder))
if not expiry then
  return 0
end
if expiry <= now then
  redis.call('ZREM', holders, holder)
  local last_end = tonumber(redis.call('GET', ended))
  if not last_end or expiry > last_end then
    redis.call('SET', ended, expiry)
  end
  return 0
end
redis.call('ZADD', holders, now + lease, holder)
return 1
