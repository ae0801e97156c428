-- Extend the leader's lease by ttl milliseconds from now, only if holder still leads.
--
-- KEYS[1] leader (see leader_claim.lua); ARGV: holder, ttl (milliseconds).
-- Returns 1 if renewed, 0 if holder does not lead (its lease expired, or Redis lost it).
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
