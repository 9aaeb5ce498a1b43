-- Library part 3 of 7 (see _lib1_base.lua): limits, checked against the config of now. Its
-- twin is _backends/memory/counters.py.

-- The limit as configured now (configure.lua), or nil when it is no longer configured. Calls
-- queued before a config change carry the limits of their time; capacities come from here.
-- configured: whether any is (nil: not known yet, see is_configured); current_cache: this
-- call's, by key; stored: the definitions fetch_limits read, by key (false: none).
local configured, current_cache, stored

-- A definition read says the limits are configured; asking Redis (EXISTS) is for when none
-- was found, so that most calls do not ask.
local function is_configured()
  if configured == nil then configured = redis.call('EXISTS', key('limits')) == 1 end
  return configured
end

-- Read the definitions of limits not read yet in one HMGET (a ticket has several).
local function fetch_limits(limits)
  if configured == false then return end
  local keys = {}
  for _, l in ipairs(limits) do
    local k = l[L_KEY]
    if stored[k] == nil and current_cache[k] == nil then
      stored[k] = false
      table.insert(keys, k)
    end
  end
  if #keys == 0 then return end
  local v = redis.call('HMGET', key('limits'), unpack(keys))
  for i, k in ipairs(keys) do
    stored[k] = v[i]
    if v[i] then configured = true end
  end
end

local function configured_limit(l)
  if not is_configured() then return l end
  local c = current_cache[l[L_KEY]]
  if c == nil then
    local v = stored[l[L_KEY]]
    if v == nil then v = redis.call('HGET', key('limits'), l[L_KEY]) end
    if v then
      local d = shared(v)
      c = {unpack(l)}
      c[L_CAPACITY], c[L_RATE], c[L_SHADOW] = d[C_CAPACITY], d[C_RATE], d[C_SHADOW]
    else
      c = false
    end
    current_cache[l[L_KEY]] = c
  end
  return c or nil
end

-- ...scaled by its pool's AIMD factor (concurrency, and bucket refill rates).
local function current(l)
  local c = configured_limit(l)
  if not c or c[L_SCOPE] ~= SCOPE_POOL or (c[L_KIND] ~= KIND_GAUGE and c[L_KIND] ~= KIND_BUCKET) then
    return c
  end
  local f = gate_factor(c[L_OWNER])
  if f >= 1 then return c end
  local s = {unpack(c)}
  if c[L_KIND] == KIND_GAUGE then
    s[L_CAPACITY] = math.max(1, math.floor(c[L_CAPACITY] * f))
  else
    s[L_RATE] = c[L_RATE] * f
  end
  return s
end

-- Learning after the primary changed (failover.lua): until learn_until, leases granted on
-- the old primary that never reached this one may still be held, and nothing here says how
-- many. So every gauge counts as full until then: nothing is granted beyond what this primary
-- can prove free (Doorman's learning mode). String key LEARN holds learn_until (begin reads
-- it), and learning is now < learn_until.
local learn_until, learning
-- This call's bucket states, by key: {level, at} as stored, or false for none. A script reads
-- a bucket in check and again when it reserves or refunds: one HMGET does.
local bucket_cache

local function level_of(queued)
  local l = current(queued) or queued
  if l[L_KIND] == KIND_GAUGE then
    local lv = tonumber(redis.call('HGET', G, l[L_KEY]) or '0')
    if learning then return math.max(lv, l[L_CAPACITY]) end
    return lv
  elseif l[L_KIND] == KIND_BUCKET then
    local s = bucket_cache[l[L_KEY]]
    if s == nil then
      local v = redis.call('HMGET', B, l[L_KEY], l[L_KEY] .. '|at')
      s = v[1] and {level = tonumber(v[1]), at = tonumber(v[2])} or false
      bucket_cache[l[L_KEY]] = s
    end
    if not s then return l[L_CAPACITY] end
    return math.min(l[L_CAPACITY], s.level + (now - s.at) * l[L_RATE])
  end
  return tonumber(redis.call('HGET', D, l[L_KEY]) or '0')
end

local function fits(l, a, lv)
  if l[L_KIND] == KIND_BUCKET then return a <= lv end -- what is left must cover it
  return lv + a <= l[L_CAPACITY]
end

-- The first limit the ticket does not fit: {index, level, amount}, or nil; and the key of the
-- first shadow limit it does not fit (which does not refuse it), or ''.
local function check(t, only_daily)
  local shadowed = ''
  fetch_limits(t[T.limits])
  for i, queued in ipairs(t[T.limits]) do
    local l = current(queued)
    if l and (not only_daily or l[L_KIND] == KIND_DAILY) then
      local a, lv = amount(t, l[L_UNIT]), level_of(l)
      if not fits(l, a, lv) then
        if not l[L_SHADOW] then return {index = i, level = lv, amount = a}, shadowed end
        if shadowed == '' then shadowed = l[L_KEY] end
      end
    end
  end
  return nil, shadowed
end

-- The denial of check's result, with the limit as configured now.
local function denial(t, d)
  local queued = t[T.limits][d.index]
  return {limit = current(queued) or queued, level = d.level, amount = d.amount}
end

local function set_bucket(l, level)
  redis.call('HSET', B, l[L_KEY], num(level), l[L_KEY] .. '|at', now_text)
  bucket_cache[l[L_KEY]] = {level = level, at = now} -- what reading it back gives: %.17g is exact
end
