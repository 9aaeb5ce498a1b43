-- snapshot: levels of the given limits and occupancy, for GetStatus.
-- ARGV[3] JSON list of limits. Returns {levels, in_flight_by_pool, in_flight_by_tenant,
-- queued_by_pool, queued_by_tenant}.
reap()
local levels = {}
for _, l in ipairs(cjson.decode(ARGV[3])) do levels[l[1]] = level_of(l) end
local function hash(k)
  local flat, out = redis.call('HGETALL', k), {}
  for i = 1, #flat, 2 do out[flat[i]] = tonumber(flat[i + 1]) end
  return out
end
local queued = {}
for _, pool in ipairs(redis.call('SMEMBERS', key('queued', 'pools'))) do
  queued[pool] = {}
  for c = 0, 3 do queued[pool][c + 1] = redis.call('ZCARD', qkey(c, pool)) end
end
return cjson.encode({levels = levels, in_flight_by_pool = hash(key('inflight', 'pool')),
                     in_flight_by_tenant = hash(key('inflight', 'tenant')),
                     queued_by_pool = queued, queued_by_tenant = hash(key('queued', 'tenant'))})
