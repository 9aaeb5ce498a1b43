-- snapshot: levels of the given limits and occupancy, for GetStatus.
-- ARGV[3] JSON list of limits. Returns {levels, in_flight_by_pool, in_flight_by_tenant,
-- queued_by_pool, queued_by_tenant, gates = {pool: {factor, circuit, paused_for}}}.
reap()
local levels = {}
for _, l in ipairs(cjson.decode(ARGV[3])) do levels[l[L_KEY]] = level_of(l) end
local function hash(k)
  local flat, out = redis.call('HGETALL', k), {}
  for i = 1, #flat, 2 do out[flat[i]] = tonumber(flat[i + 1]) end
  return out
end
local queued = {}
for _, pool in ipairs(redis.call('SMEMBERS', key_of('queued', 'pools'))) do
  queued[pool] = {}
  for c = 0, PRIORITY_CLASSES - 1 do queued[pool][c + 1] = redis.call('ZCARD', qkey(c, pool)) end
end
local gates = {}
for _, field in ipairs(redis.call('HKEYS', key('limits'))) do
  local pool = string.sub(field, 1, string.len(GATE_DEF)) == GATE_DEF
    and string.sub(field, string.len(GATE_DEF) + 1)
  if pool and gate_head(pool).stored then
    shut(pool) -- an open circuit past its time shows as half-open
    local g = gate_of(pool)
    gates[pool] = {factor = g.factor, circuit = g.circuit,
                   paused_for = math.max(0, g.paused_until - now)}
  end
end
return cjson.encode({levels = levels, in_flight_by_pool = hash(key_of('inflight', SCOPE_POOL)),
                     in_flight_by_tenant = hash(key_of('inflight', SCOPE_TENANT)),
                     queued_by_pool = queued, queued_by_tenant = hash(key_of('queued', SCOPE_TENANT)),
                     gates = gates})
