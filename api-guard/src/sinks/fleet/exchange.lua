-- api-guard fleet sync: publishes one host's new blocks and lifted ones, and
-- answers with the fleet's verdicts in force.
-- ARGV: prefix, most (entries returned per set at most), n, then n pairs of
-- network, ms left (-1: until unblocked), then the networks whose blocks were
-- lifted.
-- Returns {over, blocks}: flat lists of member, ms left ("-1": until
-- unblocked), from the server's clock, so the hosts' clocks never matter.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local prefix = ARGV[1]
local blocks = prefix .. ':blocks'
local over = prefix .. ':over'
local most = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local i = 4
for _ = 1, n do
  local net, left = ARGV[i], tonumber(ARGV[i + 1])
  i = i + 2
  local score = '+inf'
  if left >= 0 then score = now + left end
  redis.call('ZADD', blocks, 'GT', score, net)
end
for j = i, #ARGV do
  redis.call('ZREM', blocks, ARGV[j])
end
redis.call('ZREMRANGEBYSCORE', over, '-inf', now)
redis.call('ZREMRANGEBYSCORE', blocks, '-inf', now)
local function in_force(key)
  local out = {}
  -- The longest-lasting first, so a flood of entries cannot push out the
  -- blocks that last until lifted.
  local all = redis.call('ZREVRANGE', key, 0, most - 1, 'WITHSCORES')
  for k = 1, #all, 2 do
    local left = '-1'
    if all[k + 1] ~= 'inf' then
      left = string.format('%d', tonumber(all[k + 1]) - now)
    end
    out[#out + 1] = all[k]
    out[#out + 1] = left
  end
  return out
end
return {in_force(over), in_force(blocks)}
