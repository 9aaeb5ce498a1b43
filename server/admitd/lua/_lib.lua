-- admitd state machine shared by every script: each operation's .lua file is loaded with this
-- library in front of it (see _redis.py). It mirrors _memory.py; the two are kept equal by
-- the conformance suite, which runs every scenario against both backends.
--
-- KEYS[1]  namespace base "{prefix}". Every key is KEYS[1] .. ":" .. name: they all share the
--          hash tag, so they live in one Redis Cluster slot with KEYS[1].
-- ARGV[1]  time in Unix seconds to use, or "" to read Redis TIME (tests pass their clock)
-- ARGV[2]  queue aging in seconds (a waiter climbs one priority class per this much waiting)
-- ARGV[3..] the operation's own arguments (see its header)
-- Returns  a JSON document (cjson), decoded by _redis.py.
--
-- A ticket (JSON from the engine; stored as sent, because cjson.encode keeps only 14
-- significant digits and would round refill rates and prices) has: id tenant pool in out usd
-- pin pout prio cost ttl wait claim def idem fp mqt mqa limits, where each limit is [key,
-- kind, unit, scope, capacity, rate, name, owner, shadow] with kind gauge|bucket|daily and
-- unit slot|request|token|nano_usd; def is true for a deferred ticket (Enqueue); a shadow
-- limit is checked and counted but never refuses.

local base = KEYS[1]
local function key(...)
  return base .. ':' .. table.concat({...}, ':')
end

local now
if ARGV[1] ~= '' then
  now = tonumber(ARGV[1])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local aging = tonumber(ARGV[2])
local day = tostring(math.floor(now / 86400))
local LEDGER_KEEP = 400 * 86400 -- = _backend.LEDGER_DAYS, in seconds
local MAX_EXAMINED = 1024
local MAX_EXACT_POSITION = 1000 -- = _backend.MAX_EXACT_POSITION
local RATE_WINDOW = 30 -- = _backend.RATE_WINDOW
local DAY_KEEP = 172800
local MAX_PAUSE = 600 -- = _backend.MAX_PAUSE
local DEDUP_KEEP = 60 -- = _backend.DEDUP_KEEP
local G, B, D = key('gauge'), key('bucket'), key('daily', day)

local function num(x)
  return string.format('%.17g', x)
end

local function amount(t, unit)
  if unit == 'token' then return t['in'] + t.out end
  if unit == 'nano_usd' then return t.usd end
  return 1
end

-- Pool gates (the same state machine as _gates.GateState): a provider's pause, a circuit
-- breaker and an AIMD factor, in hash "gate:<pool>"; their settings in hash "gates".
local GATE_FIELDS = {'factor', 'decreased_at', 'paused_until', 'circuit', 'opened_until',
                     'probes', 'win', 'cur', 'failed', 'prev', 'prev_failed'}
local gate_cache, gate_def_cache = {}, {}

local function gate_def(pool)
  local d = gate_def_cache[pool]
  if d == nil then
    local v = redis.call('HGET', key('gates'), pool)
    d = v and cjson.decode(v) or false
    gate_def_cache[pool] = d
  end
  return d or nil
end

local function gate_of(pool)
  local g = gate_cache[pool]
  if g == nil then
    local v = redis.call('HMGET', key('gate', pool), unpack(GATE_FIELDS))
    g = {factor = tonumber(v[1] or '1'), decreased_at = tonumber(v[2] or '-1e300'),
         paused_until = tonumber(v[3] or '0'), circuit = v[4] or 'closed',
         opened_until = tonumber(v[5] or '0'), probes = tonumber(v[6] or '0'),
         win = tonumber(v[7] or '0'), cur = tonumber(v[8] or '0'),
         failed = tonumber(v[9] or '0'), prev = tonumber(v[10] or '0'),
         prev_failed = tonumber(v[11] or '0')}
    gate_cache[pool] = g
  end
  return g
end

local function gate_save(pool, g)
  redis.call('HSET', key('gate', pool), 'factor', num(g.factor),
             'decreased_at', num(g.decreased_at), 'paused_until', num(g.paused_until),
             'circuit', g.circuit, 'opened_until', num(g.opened_until), 'probes', g.probes,
             'win', g.win, 'cur', g.cur, 'failed', g.failed, 'prev', g.prev,
             'prev_failed', g.prev_failed)
end

-- Why the pool's gate admits nothing now, as a denial (cause paused|open|probing), or nil.
local function shut(pool)
  local g = gate_of(pool)
  local cause, seconds = nil, 0
  local d = gate_def(pool)
  local b = d and d.breaker
  if g.paused_until > now then
    cause, seconds = 'paused', g.paused_until - now
  elseif b and b ~= cjson.null then
    if g.circuit == 'open' then
      if now < g.opened_until then
        cause, seconds = 'open', g.opened_until - now
      else
        g.circuit, g.probes = 'half_open', 0
        gate_save(pool, g)
      end
    end
    if not cause and g.circuit == 'half_open' and g.probes >= b.probes then
      cause, seconds = 'probing', b.open_for / b.probes
    end
  end
  if not cause then return nil end
  return {limit = {'pool:' .. pool .. ':availability', 'gate', 'request', 'pool', 0, 0,
                   'availability', pool, false}, level = seconds, amount = 1, cause = cause}
end

-- A call ended: its outcome (1 ok, 2 rate limited, 3 error, 4 timeout, 5 cancelled) moves
-- the breaker and the AIMD factor; a provider's retry-after pauses the pool.
local function report(pool, outcome, retry_after, probe)
  local g = gate_of(pool)
  if retry_after > 0 then
    g.paused_until = math.max(g.paused_until, now + math.min(retry_after, MAX_PAUSE))
  end
  local d = gate_def(pool)
  if d and outcome ~= 5 then
    local a = d.aimd
    if a and a ~= cjson.null then
      if outcome == 2 then
        if now - g.decreased_at >= a.cooldown then
          g.factor = math.max(a.floor, g.factor * a.decrease)
          g.decreased_at = now
        end
      elseif outcome == 1 then
        g.factor = math.min(1, g.factor + a.increase)
      end
    end
    local b = d.breaker
    if b and b ~= cjson.null then
      local failed = outcome == 3 or outcome == 4
      if probe and g.circuit == 'half_open' then -- its slot was freed when it settled
        if failed then
          g.circuit, g.opened_until, g.probes = 'open', now + b.open_for, 0
        else
          g.circuit, g.probes, g.cur, g.failed, g.prev, g.prev_failed = 'closed', 0, 0, 0, 0, 0
        end
      elseif g.circuit == 'closed' then
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
          g.circuit, g.opened_until, g.probes = 'open', now + b.open_for, 0
        end
      end
    end
  end
  gate_save(pool, g)
end

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

local function idem_key(t)
  return key('idem', string.len(t.tenant) .. '/' .. t.tenant .. '/' .. t.idem)
end

-- Deadlines are kept in the values and compared with now (which tests inject); the Redis
-- TTL (real time) only collects garbage.
local function remember_key(t)
  redis.call('SET', idem_key(t), t.id .. '|' .. num(now + t.ttl) .. '|' .. t.fp,
             'PX', math.ceil(t.ttl * 1000))
end

-- The idempotency entry of t's key: ref, fingerprint; nil when absent or past its deadline.
local function known_key(t)
  local v = redis.call('GET', idem_key(t))
  if not v then return nil end
  local a = string.find(v, '|', 1, true)
  local b = string.find(v, '|', a + 1, true)
  if tonumber(string.sub(v, a + 1, b - 1)) <= now then return nil end
  return string.sub(v, 1, a - 1), string.sub(v, b + 1)
end

local function released(id)
  local v = redis.call('GET', key('released', id))
  if not v then return nil end
  local s = cjson.decode(v)
  if s.drop_at <= now then return nil end
  return s
end

local function record(lease)
  local t = lease.t
  return {id = t.id, tenant = t.tenant, pool = t.pool, ['in'] = t['in'], out = t.out,
          usd = t.usd, expires_in = lease.expires - now, queued_for = lease.queued,
          held_for = now - lease.granted, shadowed = lease.shadowed}
end

local function load_lease(id)
  local v = redis.call('HMGET', key('lease', id), 'ticket', 'day', 'granted', 'expires', 'queued',
                       'shadowed', 'probe')
  if not v[1] then return nil end
  return {t = cjson.decode(v[1]), day = v[2], granted = tonumber(v[3]),
          expires = tonumber(v[4]), queued = tonumber(v[5]), shadowed = v[6] or '',
          probe = v[7] == '1'}
end

-- Grants per second of a pool, over a sliding window of two fixed windows (the same state
-- and arithmetic as _backend.GrantRate).
local function rate_state(pool)
  local v = redis.call('HMGET', key('rate'), pool .. '|f', pool .. '|t', pool .. '|w',
                       pool .. '|c', pool .. '|p')
  if not v[1] then return nil end
  local r = {first = tonumber(v[1]), total = tonumber(v[2]), win = tonumber(v[3]),
             cur = tonumber(v[4]), prev = tonumber(v[5])}
  local w = math.floor(now / RATE_WINDOW)
  if w ~= r.win then
    if w == r.win + 1 then r.prev = r.cur else r.prev = 0 end
    r.cur, r.win = 0, w
  end
  return r
end

local function count_grant(pool)
  local r = rate_state(pool) or
    {first = now, total = 0, win = math.floor(now / RATE_WINDOW), cur = 0, prev = 0}
  redis.call('HSET', key('rate'), pool .. '|f', num(r.first), pool .. '|t', r.total + 1,
             pool .. '|w', r.win, pool .. '|c', r.cur + 1, pool .. '|p', r.prev)
end

local function grants_per_second(pool)
  local r = rate_state(pool)
  if not r then return nil end
  local span = now - r.first
  if span < RATE_WINDOW then
    if span > 0 and r.total > 1 then return (r.total - 1) / span end
    return nil
  end
  return (r.prev * (1 - (now / RATE_WINDOW - r.win)) + r.cur) / RATE_WINDOW
end

-- Dedup: "dedup:<len>/<tenant><key>" names the leader in flight; "dedupend:<leader>" keeps
-- how its call ended (with its shared result, base64) for a minute; FINISHED goes back in
-- this script's progress, and "end:<leader>" on the grants channel tells other replicas.
local FINISHED = {}

local function dedup_key(t)
  return key('dedup', string.len(t.tenant) .. '/' .. t.tenant .. t.dd)
end

local function dedup_finish(t, result)
  if (t.dd or '') == '' then return end
  local k = dedup_key(t)
  if redis.call('GET', k) == t.id then redis.call('DEL', k) end
  local e = {leader = t.id, result = result}
  redis.call('SET', key('dedupend', t.id), cjson.encode(e), 'PX', DEDUP_KEEP * 1000)
  table.insert(FINISHED, e)
  redis.call('PUBLISH', key('grants'), 'end:' .. t.id)
end

-- A waiter or grant left unserved: remember why for a deferred ticket (one lease TTL), and
-- tell the dedup followers of a leader to retry.
local function ended(t, kind, d)
  if t.def then
    redis.call('SET', key('ended', t.id), cjson.encode({kind = kind, tenant = t.tenant, denial = d}),
               'PX', math.ceil(t.ttl * 1000))
  end
  dedup_finish(t, nil)
end

local function reserve(t, raw, queued_for, shadowed)
  for _, l in ipairs(t.limits) do
    local a = amount(t, l[3])
    if l[2] == 'gauge' then
      redis.call('HINCRBYFLOAT', G, l[1], a)
    elseif l[2] == 'bucket' then
      set_bucket(l, level_of(l) - a)
    else
      redis.call('HINCRBYFLOAT', D, l[1], a)
      redis.call('EXPIRE', D, DAY_KEEP)
    end
  end
  local g = gate_of(t.pool)
  local probe = g.circuit == 'half_open'
  if probe then
    g.probes = g.probes + 1
    gate_save(t.pool, g)
  end
  local lease = {t = t, day = day, granted = now, expires = now + t.ttl, queued = queued_for,
                 shadowed = shadowed, probe = probe}
  redis.call('HSET', key('lease', t.id), 'ticket', raw, 'day', day, 'granted', num(now),
             'expires', num(lease.expires), 'queued', num(queued_for), 'shadowed', shadowed,
             'probe', probe and '1' or '0')
  redis.call('ZADD', key('expiry'), num(lease.expires), t.id)
  redis.call('HINCRBY', key('inflight', 'pool'), t.pool, 1)
  redis.call('HINCRBY', key('inflight', 'tenant'), t.tenant, 1)
  if t.idem ~= '' then remember_key(t) end
  count_grant(t.pool)
  return record(lease)
end

local function decr_field(h, field, by)
  if tonumber(redis.call('HINCRBYFLOAT', h, field, -by)) <= 0 then
    redis.call('HDEL', h, field)
  end
end

-- End a lease: free its slots and move token/USD counters by charged - reserved.
local function settle(lease, token_delta, usd_delta)
  local t = lease.t
  if lease.probe then
    local g = gate_of(t.pool)
    g.probes = math.max(0, g.probes - 1)
    gate_save(t.pool, g)
  end
  for _, l in ipairs(t.limits) do
    if l[3] == 'slot' then
      decr_field(G, l[1], 1)
    else
      local delta = 0
      if l[3] == 'token' then delta = token_delta elseif l[3] == 'nano_usd' then delta = usd_delta end
      if delta ~= 0 then
        if l[2] == 'bucket' then
          -- A refund never lifts a bucket above capacity; overuse may put it in debt.
          set_bucket(l, math.min((current(l) or l)[5], level_of(l) - delta))
        elseif l[2] == 'daily' then
          local dk = key('daily', lease.day)
          if delta > 0 or redis.call('HEXISTS', dk, l[1]) == 1 then
            if tonumber(redis.call('HINCRBYFLOAT', dk, l[1], delta)) < 0 then
              redis.call('HSET', dk, l[1], 0)
            end
            redis.call('EXPIRE', dk, DAY_KEEP)
          end
        end
      end
    end
  end
  redis.call('DEL', key('lease', t.id))
  redis.call('ZREM', key('expiry'), t.id)
  decr_field(key('inflight', 'pool'), t.pool, 1)
  decr_field(key('inflight', 'tenant'), t.tenant, 1)
end

-- The cost ledger: per UTC day a hash of "<len>/<tenant><pool>|<calls|in|out|usd>" counters.
local function charge(t, input, output, usd)
  local k = key('ledger', day)
  local f = string.len(t.tenant) .. '/' .. t.tenant .. t.pool .. '|'
  -- %d: HINCRBY wants an integer, and Lua would write -0 (a free call's price) or 1e+15.
  redis.call('HINCRBY', k, f .. 'calls', 1)
  redis.call('HINCRBY', k, f .. 'in', string.format('%d', input))
  redis.call('HINCRBY', k, f .. 'out', string.format('%d', output))
  redis.call('HINCRBY', k, f .. 'usd', string.format('%d', usd))
  redis.call('EXPIRE', k, LEDGER_KEEP)
end

-- End a grant nobody used: everything it reserved is refunded.
-- kind: why, for a deferred ticket's record ("unclaimed" or "cancelled").
local function give_back(id, kind)
  local lease = load_lease(id)
  if lease then
    ended(lease.t, kind, nil)
    settle(lease, -(lease.t['in'] + lease.t.out), -lease.t.usd)
  end
end

-- Every operation reaps first, so no expired lease ever holds capacity; expire.lua reports
-- them (once, whichever replica runs it).
local function reap()
  local ids = redis.call('ZRANGEBYSCORE', key('expiry'), '-inf', num(now), 'LIMIT', 0, 1000)
  for _, id in ipairs(ids) do
    local lease = load_lease(id)
    if lease then
      redis.call('RPUSH', key('expired'), cjson.encode(record(lease)))
      settle(lease, 0, 0) -- the full reservation stays charged
      charge(lease.t, lease.t['in'], lease.t.out, lease.t.usd)
      dedup_finish(lease.t, nil)
    else
      redis.call('ZREM', key('expiry'), id)
    end
  end
end

-- Fair queue: per (priority class, pool) a sorted set of "seq|id" scored by finish tag.
local function fkey(cls, pool, tenant)
  return cls .. '|' .. string.len(pool) .. '|' .. pool .. tenant
end

local function vkey(cls, pool)
  return cls .. '|' .. pool
end

local function qkey(cls, pool)
  return key('q', cls, pool)
end

local function push(t, raw)
  local cls = t.prio
  local fk = fkey(cls, t.pool, t.tenant)
  local v = tonumber(redis.call('HGET', key('vtime'), vkey(cls, t.pool)) or '0')
  local last = tonumber(redis.call('HGET', key('lastf'), fk) or '0')
  local tag = math.max(v, last) + t.cost
  redis.call('HSET', key('lastf'), fk, num(tag))
  local member = string.format('%016d', redis.call('INCR', key('seq'))) .. '|' .. t.id
  redis.call('ZADD', qkey(cls, t.pool), num(tag), member)
  redis.call('HSET', key('w', t.id), 'ticket', raw, 'enq', num(now),
             'member', member, 'tag', num(tag))
  redis.call('HINCRBY', key('queued', 'tenant'), t.tenant, 1)
  redis.call('INCR', key('queued', 'total'))
  redis.call('SADD', key('queued', 'pools'), t.pool)
end

-- Take a waiter out; served advances virtual time, otherwise its tag is given back.
local function unqueue(id, served)
  local w = redis.call('HMGET', key('w', id), 'ticket', 'member', 'tag')
  if not w[1] then return nil end
  local t, tag = cjson.decode(w[1]), tonumber(w[3])
  local cls = t.prio
  redis.call('ZREM', qkey(cls, t.pool), w[2])
  redis.call('DEL', key('w', id))
  local fk, vk = fkey(cls, t.pool, t.tenant), vkey(cls, t.pool)
  local v = tonumber(redis.call('HGET', key('vtime'), vk) or '0')
  local last = tonumber(redis.call('HGET', key('lastf'), fk) or '0')
  if served then
    if tag > v then
      v = tag
      redis.call('HSET', key('vtime'), vk, num(v))
    end
  elseif last == tag then
    last = tag - t.cost
    redis.call('HSET', key('lastf'), fk, num(last))
  end
  if last <= v then redis.call('HDEL', key('lastf'), fk) end
  decr_field(key('queued', 'tenant'), t.tenant, 1)
  redis.call('DECR', key('queued', 'total'))
  local left = 0
  for c = 0, 3 do left = left + redis.call('ZCARD', qkey(c, t.pool)) end
  if left == 0 then redis.call('SREM', key('queued', 'pools'), t.pool) end
  return t
end

local function new_progress()
  return {grants = {}, rejections = {}, blocked = {}, passed_over = {}, finished = FINISHED}
end

-- The waiters of pool in service order: each call of the returned function gives the next
-- {member, tag, id, t, raw, enq}, or nil. Strict classes with aging, finish tags within one.
local function fair_order(pool)
  local cursor = {0, 0, 0, 0}
  local function head(c)
    local m = redis.call('ZRANGE', qkey(c, pool), cursor[c + 1], cursor[c + 1], 'WITHSCORES')
    if #m == 0 then return false end
    local id = string.sub(m[1], 18)
    local w = redis.call('HMGET', key('w', id), 'ticket', 'enq')
    return {member = m[1], tag = tonumber(m[2]), id = id, t = cjson.decode(w[1]), raw = w[1],
            enq = tonumber(w[2])}
  end
  local heads = {head(0), head(1), head(2), head(3)}
  return function()
    local best, bk = nil, nil
    for c = 0, 3 do
      local h = heads[c + 1]
      if h then
        local k = {c - math.floor((now - h.enq) / aging), c, h.tag, h.member}
        if not bk or k[1] < bk[1] or (k[1] == bk[1] and (k[2] < bk[2] or (k[2] == bk[2]
            and (k[3] < bk[3] or (k[3] == bk[3] and k[4] < bk[4]))))) then
          best, bk = h, k
        end
      end
    end
    if best then
      local c = best.t.prio
      cursor[c + 1] = cursor[c + 1] + 1
      heads[c + 1] = head(c)
    end
    return best
  end
end

-- Grant waiters of pool in fair order until a pool-wide limit blocks the head. A waiter held
-- back by its own tenant's limit is passed over with the rest of that tenant's waiters.
-- Returns the denial of the watch ticket (when examined and not granted) and its own grant.
local function dispatch_pool(pool, watch, progress)
  local skipped, served, gone, never = {}, {}, {}, {}
  local watched, own = nil, nil
  local examined = 0
  local next_waiter = fair_order(pool)
  while examined < MAX_EXAMINED do
    local best = next_waiter()
    if not best then break end
    examined = examined + 1
    local t = best.t
    if skipped[t.tenant] and best.id == watch then
      watched = skipped[t.tenant] -- behind its own tenant's held waiter
    end
    if not skipped[t.tenant] then
      local closed = shut(pool)
      if best.id ~= watch and now > best.enq + t.wait then
        table.insert(gone, best.id) -- its RPC has ended (its replica may have died)
      elseif closed and closed.cause == 'open' then
        table.insert(never, {best.id, closed}) -- refused at once, queued calls too
        if best.id == watch then watched = closed end
      elseif closed then
        if best.id == watch then watched = closed end
        progress.blocked[pool] = closed
        break
      else
        local d, shadowed = check(t, false)
        if not d then
          local rec = reserve(t, best.raw, now - best.enq, shadowed)
          table.insert(served, best.id)
          if best.id == watch then
            own = rec
          else
            table.insert(progress.grants, rec)
            -- Unclaimed until the replica holding the RPC takes it (pub/sub or polling).
            redis.call('SET', key('granted', best.id), cjson.encode(rec),
                       'PX', math.floor((t.claim + 60) * 1000))
            redis.call('ZADD', key('unclaimed'), num(now + t.claim), best.id)
            redis.call('PUBLISH', key('grants'), best.id)
          end
        else
          if best.id == watch then watched = denial(t, d) end
          local l = t.limits[d[1] + 1]
          if l[2] == 'daily' then
            table.insert(never, {best.id, denial(t, d)}) -- cannot fit before the day turns
          elseif l[4] == 'tenant' then
            skipped[t.tenant] = denial(t, d)
            table.insert(progress.passed_over, denial(t, d))
          else
            progress.blocked[pool] = denial(t, d)
            break
          end
        end
      end
    end
  end
  for _, id in ipairs(served) do unqueue(id, true) end
  for _, n in ipairs(never) do
    ended(unqueue(n[1], false), 'rejected', n[2])
    table.insert(progress.rejections, n)
  end
  for _, id in ipairs(gone) do ended(unqueue(id, false), 'timeout', nil) end
  return watched, own
end

local function dispatch_all(progress)
  for _, pool in ipairs(redis.call('SMEMBERS', key('queued', 'pools'))) do
    dispatch_pool(pool, '', progress)
  end
  return progress
end

-- cjson encodes an empty table as {}; the Python side accepts both {} and [] for lists.
