-- Step down: end the leader's lease now, only if holder still leads.
--
-- KEYS[1] leader (see leader_claim.lua); ARGV: holder.
-- Returns 1 if holder led and no longer does, 0 if it did not lead.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
