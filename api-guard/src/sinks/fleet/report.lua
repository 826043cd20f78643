-- api-guard fleet sync: adds one kernel's request counts to the fleet's
-- windowed totals, atomically.
-- ARGV: prefix, instance (the kernel's client map), window_ms, budget (0: no
-- fleet rate), then pairs of client, cumulative request count.
-- The last count reported per client and instance is kept in a hash, so a
-- count sent twice (a retried sync, a restarted daemon that adopted the
-- pinned map) adds nothing the second time.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local prefix = ARGV[1]
local seen = prefix .. ':seen:' .. ARGV[2]
local window = tonumber(ARGV[3])
local budget = tonumber(ARGV[4])
local win = math.floor(now / window)
local win_end = (win + 1) * window
for i = 5, #ARGV, 2 do
  local client = ARGV[i]
  local count = tonumber(ARGV[i + 1])
  local last = tonumber(redis.call('HGET', seen, client)) or 0
  if count ~= last then
    redis.call('HSET', seen, client, count)
    -- A count below the last one started again (the kernel evicted the
    -- client and tracks it anew): all of it is new.
    local delta = count - last
    if delta < 0 then delta = count end
    if delta > 0 and budget > 0 then
      local key = prefix .. ':n:' .. win .. ':' .. client
      local total = redis.call('INCRBY', key, delta)
      if total == delta then redis.call('PEXPIRE', key, window * 2) end
      if total > budget then
        redis.call('ZADD', prefix .. ':over', 'GT', win_end, client)
      end
    end
  end
end
redis.call('PEXPIRE', seen, 86400000)
return 0
