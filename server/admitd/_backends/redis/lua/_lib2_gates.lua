-- Library part 2 of 8 (see _lib1_base.lua): pool gates.

-- Pool gates (the same state machine as its twin, _backends/memory/gates.py): a provider's
-- pause, a circuit breaker and an AIMD factor, in hash "gate:<pool>"; their settings in the
-- hash of limits (configure.lua), at field GATE_DEF .. <pool>, read with the ticket's limits
-- (fetch_limits, _lib3_limits).
local GATE_FIELDS = {'factor', 'decreased_at', 'paused_until', 'circuit', 'opened_until',
                     'probes', 'win', 'cur', 'failed', 'prev', 'prev_failed'}
local GATE_DEF = 'gate:' -- no limit key starts so (they start with their scope)
-- This call's, by pool (begin empties them): gates read whole, the heads of gates, settings.
local gate_cache, head_cache, gate_def_cache

local function gate_def(pool)
  local d = gate_def_cache[pool]
  if d == nil then
    local v = redis.call('HGET', key('limits'), GATE_DEF .. pool)
    d = v and shared(v) or false
    gate_def_cache[pool] = d
  end
  return d or nil
end

local function gate_of(pool)
  local g = gate_cache[pool]
  if g == nil then
    local v = redis.call('HMGET', key_of('gate', pool), unpack(GATE_FIELDS))
    g = {factor = number(v[1] or '1'), decreased_at = number(v[2] or '-1e300'),
         paused_until = number(v[3] or '0'), circuit = v[4] or CIRCUIT_CLOSED,
         opened_until = number(v[5] or '0'), probes = number(v[6] or '0'),
         win = number(v[7] or '0'), cur = number(v[8] or '0'),
         failed = number(v[9] or '0'), prev = number(v[10] or '0'),
         prev_failed = number(v[11] or '0')}
    -- As stored (the numbers read back exactly), to tell whether a save changes anything.
    if v[1] then
      g.stored = {}
      for i, name in ipairs(GATE_FIELDS) do g.stored[i] = g[name] end
    end
    gate_cache[pool] = g
  end
  return g
end

-- What most calls need of a gate, read alone: the AIMD factor (a limit's capacity), the
-- pause, the circuit (shut, and a probe's grant), and whether it is stored (report). The
-- rest (the breaker's counts and times) matters only when a breaker is set and the circuit
-- is not closed, or when an outcome moves it: reading and parsing all eleven fields on every
-- call was ~5% of a pair. The gate read whole when this call has it.
local function gate_head(pool)
  local g = gate_cache[pool] or head_cache[pool]
  if g == nil then
    local v = redis.call('HMGET', key_of('gate', pool), 'factor', 'paused_until', 'circuit')
    g = {factor = number(v[1] or '1'), paused_until = number(v[2] or '0'),
         circuit = v[3] or CIRCUIT_CLOSED, stored = v[1] and true}
    head_cache[pool] = g
  end
  return g
end

local function gate_save(pool, g)
  if g.stored then
    local same = true
    for i, name in ipairs(GATE_FIELDS) do
      if g[name] ~= g.stored[i] then same = false break end
    end
    if same then return end -- most Releases move nothing here: a write (and its numbers) saved
  end
  redis.call('HSET', key_of('gate', pool), 'factor', num(g.factor),
             'decreased_at', num(g.decreased_at), 'paused_until', num(g.paused_until),
             'circuit', g.circuit, 'opened_until', num(g.opened_until), 'probes', g.probes,
             'win', g.win, 'cur', g.cur, 'failed', g.failed, 'prev', g.prev,
             'prev_failed', g.prev_failed)
  g.stored = {}
  for i, name in ipairs(GATE_FIELDS) do g.stored[i] = g[name] end
end

-- Why the pool's gate admits nothing now, as a denial (cause paused|open|probing), or nil.
local function shut(pool)
  local g = gate_head(pool)
  local cause, seconds = nil, 0
  local d = gate_def(pool)
  local b = d and d.breaker
  if g.paused_until > now then
    cause, seconds = CAUSE_PAUSED, g.paused_until - now
  elseif b and b ~= cjson.null and g.circuit ~= CIRCUIT_CLOSED then
    g = gate_of(pool)
    if g.circuit == CIRCUIT_OPEN then
      if now < g.opened_until then
        cause, seconds = CAUSE_OPEN, g.opened_until - now
      else
        g.circuit, g.probes = CIRCUIT_HALF_OPEN, 0
        gate_save(pool, g)
      end
    end
    if not cause and g.circuit == CIRCUIT_HALF_OPEN and g.probes >= b.probes then
      cause, seconds = CAUSE_PROBING, b.open_for / b.probes
    end
  end
  if not cause then return nil end
  return {limit = gate_limit(pool), level = seconds, amount = 1, cause = cause}
end

-- A call ended: its outcome (OUTCOME_*) moves the breaker and the AIMD factor; a provider's
-- retry-after pauses the pool.
local function report(pool, outcome, retry_after, probe)
  if retry_after <= 0 and gate_cache[pool] == nil then
    -- Most calls: no pause, and a pool without AIMD or a breaker, whose gate this call has
    -- not read. Nothing can move then, and reading the gate (eleven fields, each a number
    -- parsed) to find that out was ~5% of a pair: only a gate not stored yet is written.
    local d = gate_def(pool)
    local a, b = d and d.aimd, d and d.breaker
    local still = not d or outcome == OUTCOME_CANCELLED
      or ((not a or a == cjson.null) and (not b or b == cjson.null))
    if still and gate_head(pool).stored then return end
  end
  local g = gate_of(pool)
  if retry_after > 0 then
    g.paused_until = math.max(g.paused_until, now + math.min(retry_after, MAX_PAUSE))
  end
  local d = gate_def(pool)
  if d and outcome ~= OUTCOME_CANCELLED then
    local a = d.aimd
    if a and a ~= cjson.null then
      if outcome == OUTCOME_PROVIDER_RATE_LIMITED then
        if now - g.decreased_at >= a.cooldown then
          g.factor = math.max(a.floor, g.factor * a.decrease)
          g.decreased_at = now
        end
      elseif outcome == OUTCOME_OK then
        g.factor = math.min(1, g.factor + a.increase)
      end
    end
    local b = d.breaker
    if b and b ~= cjson.null then
      local failed = outcome == OUTCOME_PROVIDER_ERROR or outcome == OUTCOME_TIMEOUT
      if probe and g.circuit == CIRCUIT_HALF_OPEN then -- its slot was freed when it settled
        if failed then
          g.circuit, g.opened_until, g.probes = CIRCUIT_OPEN, now + b.open_for, 0
        else
          g.circuit, g.probes = CIRCUIT_CLOSED, 0
          g.cur, g.failed, g.prev, g.prev_failed = 0, 0, 0, 0
        end
      elseif g.circuit == CIRCUIT_CLOSED then
        local w = math.floor(now / b.window)
        if w ~= g.win then
          if w == g.win + 1 then g.prev, g.prev_failed = g.cur, g.failed
          else g.prev, g.prev_failed = 0, 0 end
          g.cur, g.failed, g.win = 0, 0, w
        end
        local into = now / b.window - w
        g.cur = g.cur + 1
        if failed then g.failed = g.failed + 1 end
        local calls = g.prev * (1 - into) + g.cur
        local failures = g.prev_failed * (1 - into) + g.failed
        if calls >= b.min_calls and failures >= b.failure_rate * calls then
          g.circuit, g.opened_until, g.probes = CIRCUIT_OPEN, now + b.open_for, 0
        end
      end
    end
  end
  gate_save(pool, g)
end
