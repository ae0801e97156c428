-- Which of the given holders hold an unexpired lease now (read only).
--
-- KEYS[1] holders (see acquire.lua); ARGV: the holders to ask about.
-- Returns one 1 or 0 per holder, in order.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local answers = {}
for i, holder in ipairs(ARGV) do
  local expiry = tonumber(redis.call('ZSCORE', KEYS[1], holder))
  answers[i] = (expiry and expiry > now) and 1 or 0
end
return answers
