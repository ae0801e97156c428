-- Take a slot of one source for each holder in turn while a start is allowed now: each check and take
-- is one step, and the call asks no further once one is refused.
--
-- KEYS[1] holders: sorted set, holder -> the time its lease expires (no TTL: an expired lease stays
--                  until the next acquire drops it and counts its expiry as an end)
-- KEYS[2] starts:  sorted set, holder -> its start, for the last window (only with a per-minute cap)
-- KEYS[3] ended:   the time of the latest end (a release, or a lease that expired); absent, the
--                  state's beginning counts as one
-- KEYS[4] pause:   no start before this time (a Retry-After)
-- KEYS[5] born:    when this source's state began (absent: never, or Redis lost it)
-- ARGV: lease, concurrency, delay, per_minute (0: no cap), window, settle, then the holders (one or more)
-- Every time is in microseconds on the Redis server's clock (TIME); nothing comes from the caller's clock.
--
-- Returns one answer per holder asked, in order, up to and including the first refused: {1, 0, 'granted'};
-- {1, 0, 'held'} when the holder holds a lease already (renewed: a call retried after a lost reply takes
-- no second slot); or {0, wait, reason}: try again in wait microseconds, reason one of settling, paused,
-- delay, per_minute, concurrency (what the wait is for).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local holders, starts, ended, pause, born = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local lease, concurrency, delay = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local cap, window, settle = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])

-- A state that is not there began now: no slot for settle, so that every holder from before a loss
-- has failed a renewal (and stopped) or let its lease run out before anyone new starts.
local born_at = tonumber(redis.call('GET', born))
if not born_at then
  born_at = now
  redis.call('SET', born, now)
end

-- Leases past their expiry: their holders stopped renewing. The latest expiry counts as an end.
local last_end = tonumber(redis.call('GET', ended))
local gone = redis.call('ZRANGEBYSCORE', holders, '-inf', now, 'WITHSCORES')
if #gone > 0 then
  redis.call('ZREMRANGEBYSCORE', holders, '-inf', now)
  local latest = tonumber(gone[#gone])
  if not last_end or latest > last_end then
    last_end = latest
    redis.call('SET', ended, latest)
  end
end

-- No end known (a new or lost state): count the state's beginning as one, so the delay holds after a loss.
if not last_end then
  last_end = born_at
end

local function acquire(holder)
  if redis.call('ZSCORE', holders, holder) then
    redis.call('ZADD', holders, now + lease, holder)
    return {1, 0, 'held'}
  end

  local at, why = now, 'granted'
  local function not_before(time, reason)
    if time > at then
      at, why = time, reason
    end
  end
  not_before(born_at + settle, 'settling')
  local paused = tonumber(redis.call('GET', pause))
  if paused then
    not_before(paused, 'paused')
  end
  if delay > 0 then
    not_before(last_end + delay, 'delay')
  end
  if cap > 0 then
    redis.call('ZREMRANGEBYSCORE', starts, '-inf', now - window)
    local n = redis.call('ZCARD', starts)
    if n >= cap then
      local oldest = redis.call('ZRANGE', starts, n - cap, n - cap, 'WITHSCORES')
      not_before(tonumber(oldest[2]) + window, 'per_minute')
    end
  end
  if redis.call('ZCARD', holders) >= concurrency then
    -- Full: no later than the earliest lease's expiry, unless a release comes first.
    local first = redis.call('ZRANGE', holders, 0, 0, 'WITHSCORES')
    not_before(tonumber(first[2]), 'concurrency')
  end
  if at > now then
    return {0, at - now, why}
  end

  redis.call('ZADD', holders, now + lease, holder)
  if cap > 0 then
    redis.call('ZADD', starts, now, holder)
    redis.call('PEXPIRE', starts, math.ceil(window / 1000))
  end
  return {1, 0, 'granted'}
end

local answers = {}
for i = 7, #ARGV do
  local answer = acquire(ARGV[i])
  answers[#answers + 1] = answer
  if answer[1] == 0 then
    break
  end
end
return answers
