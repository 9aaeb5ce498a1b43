-- configure: replace the definitions of every configured limit (capacity, rate and shadow
-- flag by key) and pool gate, all in the hash of limits (see _lib3_limits.lua).
-- ARGV[3] JSON list of limits; ARGV[4] JSON list of gates
-- {pool, aimd = {decrease, increase, floor, cooldown} | null, breaker = {failure_rate,
-- min_calls, window, open_for, probes} | null}. Returns {count}.
local limits = cjson.decode(ARGV[3])
redis.call('DEL', key('limits'))
for _, l in ipairs(limits) do
  -- The capacity and rate as sent (cjson.encode would round them to 14 digits).
  local c = {}
  c[C_CAPACITY], c[C_RATE] = num(l[L_CAPACITY]), num(l[L_RATE])
  c[C_SHADOW] = l[L_SHADOW] and 'true' or 'false'
  redis.call('HSET', key('limits'), l[L_KEY], '[' .. table.concat(c, ',') .. ']')
end
for _, g in ipairs(cjson.decode(ARGV[4])) do
  redis.call('HSET', key('limits'), GATE_DEF .. g.pool, cjson.encode(g))
end
-- The version (_lib3_limits): what the config says decides it, so it changes when that does.
local digest = redis.sha1hex(ARGV[3] .. '\n' .. ARGV[4]) .. '/' .. #limits
redis.call('HSET', key('limits'), CONFIGURED, digest)
return cjson.encode({count = #limits})
