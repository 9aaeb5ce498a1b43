-- configure: replace the definitions of every configured limit (capacity, rate and shadow
-- flag by key) and pool gate. ARGV[3] JSON list of limits; ARGV[4] JSON list of gates
-- {pool, aimd = {decrease, increase, floor, cooldown} | null, breaker = {failure_rate,
-- min_calls, window, open_for, probes} | null}. Returns {count}.
local limits = cjson.decode(ARGV[3])
redis.call('DEL', key('limits'))
for _, l in ipairs(limits) do
  -- The capacity and rate as sent (cjson.encode would round them to 14 digits).
  local shadow = l[9] and 'true' or 'false'
  redis.call('HSET', key('limits'), l[1], '[' .. num(l[5]) .. ',' .. num(l[6]) .. ',' .. shadow .. ']')
end
redis.call('DEL', key('gates'))
for _, g in ipairs(cjson.decode(ARGV[4])) do
  redis.call('HSET', key('gates'), g.pool, cjson.encode(g))
end
return cjson.encode({count = #limits})
