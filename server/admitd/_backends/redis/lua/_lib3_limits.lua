-- Library part 3 of 5 (see _lib1_base.lua): limits, checked against the config of now.

-- The limit as configured now (configure.lua), or nil when it is no longer configured. Calls
-- queued before a config change carry the limits of their time; capacities come from here.
local configured = redis.call('EXISTS', key('limits')) == 1
local current_cache = {}
local function configured_limit(l)
  if not configured then return l end
  local c = current_cache[l[1]]
  if c == nil then
    local v = redis.call('HGET', key('limits'), l[1])
    if v then
      local d = cjson.decode(v)
      c = {l[1], l[2], l[3], l[4], d[1], d[2], l[7], l[8], d[3]}
    else
      c = false
    end
    current_cache[l[1]] = c
  end
  return c or nil
end

-- ...scaled by its pool's AIMD factor (concurrency, and bucket refill rates).
local function current(l)
  local c = configured_limit(l)
  if not c or c[4] ~= 'pool' or (c[2] ~= 'gauge' and c[2] ~= 'bucket') then return c end
  local f = gate_of(c[8]).factor
  if f >= 1 then return c end
  local s = {unpack(c)}
  if c[2] == 'gauge' then s[5] = math.max(1, math.floor(c[5] * f)) else s[6] = c[6] * f end
  return s
end

local function level_of(queued)
  local l = current(queued) or queued
  if l[2] == 'gauge' then
    return tonumber(redis.call('HGET', G, l[1]) or '0')
  elseif l[2] == 'bucket' then
    local v = redis.call('HMGET', B, l[1], l[1] .. '|at')
    if not v[1] then return l[5] end
    return math.min(l[5], tonumber(v[1]) + (now - tonumber(v[2])) * l[6])
  end
  return tonumber(redis.call('HGET', D, l[1]) or '0')
end

-- The first limit the ticket does not fit: {index (0-based), level, amount}, or nil; and the
-- key of the first shadow limit it does not fit (which does not refuse it), or ''.
local function check(t, only_daily)
  local shadowed = ''
  for i, queued in ipairs(t.limits) do
    local l = current(queued)
    if l and (not only_daily or l[2] == 'daily') then
      local a, lv = amount(t, l[3]), level_of(l)
      local fits
      if l[2] == 'bucket' then fits = a <= lv else fits = lv + a <= l[5] end
      if not fits then
        if not l[9] then return {i - 1, lv, a}, shadowed end
        if shadowed == '' then shadowed = l[1] end
      end
    end
  end
  return nil, shadowed
end

local function denial(t, d)
  local queued = t.limits[d[1] + 1]
  return {limit = current(queued) or queued, level = d[2], amount = d[3]}
end

local function set_bucket(l, level)
  redis.call('HSET', B, l[1], num(level), l[1] .. '|at', num(now))
end
