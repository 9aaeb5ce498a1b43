-- Library part 4 of 5 (see _lib1_base.lua): idempotency, leases, grant rates, dedup,
-- the cost ledger and the reaper.

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
-- and arithmetic as _backends/memory/rate.py).
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
