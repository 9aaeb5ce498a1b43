-- Library part 3 of 8 (see _lib1_base.lua): limits, checked against the config of now. Its
-- twin is _backends/memory/counters.py.

-- The limit as configured now (configure.lua), or nil when it is no longer configured. Calls
-- queued before a config change carry the limits of their time; capacities come from here.
-- The hash of limits holds each limit's definition at its key, each pool gate's settings at
-- GATE_DEF .. <pool> (_lib2_gates), and at CONFIGURED the config's version: a digest of it,
-- then '/' and how many limits it has. What a call reads of it is kept from call to call by
-- the function library (defs: the text at each field, false for none) with the version it
-- belongs to, so that most calls ask Redis for the version alone: reading five definitions,
-- each a new string for Lua, cost more than a command. configured: whether any limit is
-- (nil: not known yet); version: this call's (false: none); current_cache: this call's
-- limits as configured, by key (false: not configured now).
local CONFIGURED = 'configured' -- no limit key (it has ':') nor a gate's field is spelt so
local configured, version, current_cache
local defs, defs_version, defs_base = {}, nil, nil

-- The fields of a command being built and the limits they belong to, with their lengths
-- counted: made once and reused (fetch_limits and fetch_levels), as new tables grown an
-- element at a time cost more than the command. want: the fields read_defs asks for.
local ask_fields, ask_limits, want = {}, {}, {}

-- Make defs hold ask_fields[1..m] for the version of now, reading the version (once a call)
-- and the fields not kept for it in one HMGET.
local function read_defs(m)
  if base ~= defs_base then defs, defs_version, defs_base = {}, nil, base end
  local w = 0
  if configured == nil then
    w = 1
    want[1] = CONFIGURED
  end
  for i = 1, m do
    if defs[ask_fields[i]] == nil then
      w = w + 1
      want[w] = ask_fields[i]
    end
  end
  if w == 0 then return end
  local v = redis.call('HMGET', key('limits'), unpack(want, 1, w))
  local from = 1
  if configured == nil then
    version, from = v[1] or false, 2
    configured = version and string.sub(version, -2) ~= '/0'
    if version ~= defs_version then
      local kept = m - (w - 1) -- fields kept for another version: read again
      defs, defs_version = {}, version
      if kept > 0 then return read_defs(m) end
    end
  end
  for j = from, w do defs[want[j]] = v[j] or false end
end

-- A ticket's limit as configured by definition text v, made once for each limit and
-- definition (both decoded by shared(), never changed) and kept by the limit, as shared()
-- keeps texts: a new copy of each limit on every call was new memory for the collector.
local as_configured, configured_count = {}, 0
local function configured_as(l, v)
  local d = shared(v)
  local made = as_configured[l]
  if made and made.d == d then return made.c end
  local c = {unpack(l)}
  c[L_CAPACITY], c[L_RATE], c[L_SHADOW] = d[C_CAPACITY], d[C_RATE], d[C_SHADOW]
  if configured_count >= SHARED_MAX then as_configured, configured_count = {}, 0 end
  as_configured[l] = {d = d, c = c}
  configured_count = configured_count + 1
  return c
end

-- The definitions of limits not read yet in this call, and the settings of pool's gate
-- (pool: nil for none).
local function fetch_limits(limits, pool)
  local n = 0
  for _, l in ipairs(limits) do
    local k = l[L_KEY]
    if current_cache[k] == nil then
      current_cache[k] = false -- read below (a ticket naming a key twice asks once)
      n = n + 1
      ask_fields[n], ask_limits[n] = k, l
    end
  end
  local m = n
  if pool and gate_def_cache[pool] == nil then
    m = m + 1
    ask_fields[m] = GATE_DEF .. pool
  end
  if m == 0 then return end
  read_defs(m)
  for i = 1, n do
    local v = defs[ask_fields[i]]
    if v then current_cache[ask_fields[i]] = configured_as(ask_limits[i], v) end
  end
  if m > n then
    local v = defs[ask_fields[m]]
    gate_def_cache[pool] = v and shared(v) or false
  end
end

-- ...scaled by its pool's AIMD factor (concurrency, and bucket refill rates). A pair asks
-- this ~20 times, and each Lua call costs hundreds of instructions: what most calls need
-- (the limit configured, its gate's factor in this call's cache) is written out here.
local function current(l)
  if configured == nil then read_defs(0) end
  local c = l
  if configured then
    c = current_cache[l[L_KEY]]
    if c == nil then
      fetch_limits({l})
      c = current_cache[l[L_KEY]]
    end
    if not c then return nil end
  end
  local kind = c[L_KIND]
  if c[L_SCOPE] ~= SCOPE_POOL or (kind ~= KIND_GAUGE and kind ~= KIND_BUCKET) then return c end
  local pool = c[L_OWNER]
  local g = gate_cache[pool] or head_cache[pool] or gate_head(pool)
  local f = g.factor
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
-- can prove free (Doorman's learning mode). String key LEARN holds learn_until, and learning
-- is now < learn_until: read when a call first asks (learn()), as most Releases never do (a
-- command saved; begin forgets them).
local learn_until, learning
local function learn()
  if learning == nil then
    local v = redis.call('GET', key(LEARN))
    learn_until = v and tonumber(v) or 0
    learning = now < learn_until
  end
  return learning
end
-- Gauges and buckets share one hash, LV ("level"): a gauge's count at its limit's key, a
-- bucket's level and the time of it at the key and "<key>|at". A call reads the levels of all
-- its ticket's limits in one HMGET (fetch_levels) and writes what it moved in one HSET and one
-- HDEL (flush_levels): each Redis command costs a dispatch, its reply a Lua value, and a pair
-- made ~20 of them here. level_cache: this call's, by key: a gauge's count (0: none), a
-- bucket's level as stored or false for none, and bucket_at the time of that level.
-- level_set (field, value, ...) and level_drop (fields): what flush_levels writes, in order;
-- a batch (one ticket's limits) only raises gauges or only lowers them, so a field dropped
-- after it was set in one is dropped.
-- Arrays with their lengths kept here, made once and reused by the function library's calls
-- (begin sets the lengths to 0): table.insert and growing new tables were most of their cost.
local level_cache, bucket_at, n_set, n_drop
local level_set, level_drop = {}, {}

-- A bucket's "<key>|at" by key, made once (a concatenation makes and hashes a new string),
-- kept from call to call (keys of configured limits; at most 1,000, then it starts over).
local at_fields, at_count = {}, 0
local function at_field(k)
  local f = at_fields[k]
  if not f then
    if at_count >= 1000 then at_fields, at_count = {}, 0 end
    f = k .. '|at'
    at_fields[k] = f
    at_count = at_count + 1
  end
  return f
end

local function fetch_levels(limits)
  local n, m = 0, 0
  for _, l in ipairs(limits) do
    local k, kind = l[L_KEY], l[L_KIND]
    if level_cache[k] == nil and (kind == KIND_GAUGE or kind == KIND_BUCKET) then
      level_cache[k] = false -- asked for below (a ticket naming a key twice asks once)
      m = m + 1
      ask_limits[m] = l
      n = n + 1
      ask_fields[n] = k
      if kind == KIND_BUCKET then
        n = n + 1
        ask_fields[n] = at_field(k)
      end
    end
  end
  if n == 0 then return end
  local v = redis.call('HMGET', LV, unpack(ask_fields, 1, n))
  local i = 1
  for j = 1, m do
    local l = ask_limits[j]
    if l[L_KIND] == KIND_GAUGE then
      level_cache[l[L_KEY]] = number(v[i] or '0')
      i = i + 1
    else
      if v[i] then
        level_cache[l[L_KEY]], bucket_at[l[L_KEY]] = number(v[i]), number(v[i + 1])
      end
      i = i + 2
    end
  end
end

local function flush_levels()
  if n_set > 0 then redis.call('HSET', LV, unpack(level_set, 1, n_set)) end
  if n_drop > 0 then redis.call('HDEL', LV, unpack(level_drop, 1, n_drop)) end
  n_set, n_drop = 0, 0
end

-- A gauge's count, dropped at zero. Its counts are whole slots, so no fraction is formatted.
-- (What flush_levels writes is put in level_set here and in set_bucket, not by a function
-- of its own: a Lua call costs hundreds of instructions.)
local function set_gauge(k, count)
  level_cache[k] = count
  if count > 0 then
    n_set = n_set + 2
    level_set[n_set - 1], level_set[n_set] = k, string.format('%d', count)
  else
    n_drop = n_drop + 1
    level_drop[n_drop] = k
  end
end

-- The level of limit l as configured now (current's): level_of(queued) is
-- level_at(current(queued) or queued), for a caller that has not asked current (each call
-- of either costs hundreds of instructions: see current).
local function level_at(l)
  local k, kind = l[L_KEY], l[L_KIND]
  if kind ~= KIND_GAUGE and kind ~= KIND_BUCKET then
    return tonumber(redis.call('HGET', D, k) or '0')
  end
  local level = level_cache[k] -- gauges' and buckets' levels: read for the call at once
  if level == nil then
    fetch_levels({l})
    level = level_cache[k]
  end
  if kind == KIND_GAUGE then
    if learning == nil then learn() end
    if learning then return math.max(level, l[L_CAPACITY]) end
    return level
  end
  local capacity = l[L_CAPACITY]
  if not level then return capacity end
  level = level + (now - bucket_at[k]) * l[L_RATE]
  if level < capacity then return level end -- math.min(capacity, level), written out
  return capacity
end

local function level_of(queued)
  return level_at(current(queued) or queued)
end

local function fits(l, a, lv)
  if l[L_KIND] == KIND_BUCKET then return a <= lv end -- what is left must cover it
  return lv + a <= l[L_CAPACITY]
end

-- The first limit the ticket does not fit: {index, level, amount}, or nil; and the key of the
-- first shadow limit it does not fit (which does not refuse it), or ''.
local function check(t, only_daily)
  local shadowed = ''
  fetch_limits(t[T.limits], t[T.pool])
  if not only_daily then fetch_levels(t[T.limits]) end
  for i, queued in ipairs(t[T.limits]) do
    local l = (not only_daily or queued[L_KIND] == KIND_DAILY) and current(queued)
    if l then
      local a, lv = amount(t, l[L_UNIT]), level_at(l)
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

-- Written by the next flush_levels.
local function set_bucket(l, level)
  local k = l[L_KEY]
  local n = n_set + 2
  level_set[n - 1], level_set[n] = k, num(level)
  level_set[n + 1], level_set[n + 2] = at_fields[k] or at_field(k), now_text
  n_set = n + 2
  level_cache[k], bucket_at[k] = level, now -- what reading it back gives: %.17g is exact
end
