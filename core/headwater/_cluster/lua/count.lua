-- How many holders hold an unexpired lease now.
--
-- KEYS[1] holders (see acquire.lua).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
return redis.call('ZCOUNT', KEYS[1], string.format('(%.0f', now), '+inf')
