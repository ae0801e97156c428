-- Become the leader if no one is, or stay it: the lease lasts ttl milliseconds from now.
--
-- KEYS[1] leader: the holder's name, expiring with the lease
-- KEYS[2] term:   the latest term, a number that grows with every new leader
-- ARGV: holder, ttl (milliseconds)
-- Returns the holder's term if it leads now, 0 if another holder does. A new leader's term is
-- above every earlier one, even after Redis lost its keys (it is at least the server's time in
-- microseconds).
local leader, term, holder, ttl = KEYS[1], KEYS[2], ARGV[1], ARGV[2]
local current = redis.call('GET', leader)
if current == holder then
  redis.call('PEXPIRE', leader, ttl)
  return tonumber(redis.call('GET', term))
end
if current then
  return 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local next_term = (tonumber(redis.call('GET', term)) or 0) + 1
if now > next_term then
  next_term = now
end
redis.call('SET', leader, holder, 'PX', ttl)
redis.call('SET', term, next_term)
return next_term
