-- Library part 6 of 8 (see _lib1_base.lua): idempotency, leases, grant rates, dedup and
-- the reaper. Its twins are _backends/memory/leases.py and rate.py.

local REAP_BATCH = '1000' -- leases reaped by one operation at most (the next one reaps on)

local function idem_key(t)
  local tenant = t[T.tenant]
  return key('idem', string.len(tenant) .. '/' .. tenant .. '/' .. t[T.idempotency_key])
end

-- Deadlines are kept in the values and compared with now (which tests inject); the Redis
-- TTL (real time) only collects garbage.
local function remember_key(t)
  local entry = t[T.lease_id] .. '|' .. num(now + t[T.ttl]) .. '|' .. t[T.fingerprint]
  redis.call('SET', idem_key(t), entry, 'PX', ms(t[T.ttl]))
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

-- Why a lease id is unknown: within a lease TTL after the primary changed (failover.lua
-- sets LOST), it may have been granted on the old primary and lost with the writes
-- replication had not carried yet ('lost'); otherwise it is 'gone'.
local function unknown_lease()
  local lost_until = tonumber(redis.call('GET', key(LOST)) or '0')
  if now < lost_until then return 'lost' end
  return 'gone'
end

local function released(id)
  local v = redis.call('GET', key('released', id))
  if not v then return nil end
  local s = cjson.decode(v)
  if s.drop_at <= now then return nil end
  return s
end

-- A lease as the engine sees it (codec.lease): the ticket's keys for the ticket's fields.
local function record(lease)
  local t = lease.t
  return {[T.lease_id] = t[T.lease_id], [T.tenant] = t[T.tenant], [T.pool] = t[T.pool],
          [T.input_tokens] = t[T.input_tokens], [T.max_output_tokens] = t[T.max_output_tokens],
          [T.nano_usd] = t[T.nano_usd], expires_in = lease.expires - now,
          queued_for = lease.queued, held_for = now - lease.granted, shadowed = lease.shadowed}
end

-- A live lease (hash "lease:<id>"), or with where = 'tomb' an expired one's tombstone, which
-- also has ledger (the ledger day its expiry charged), drop (its deadline) and settled (a
-- settlement, JSON, once a Release after the expiry settled it). claimed: granted to the call
-- that asked, never an unclaimed grant (an older admitd did not say so: then unknown).
-- A live lease's three are not asked for: each field read is a string made for Lua. queued,
-- shadowed and probe may be absent (reserve leaves out 0, '' and '0').
local function load_lease(id, where)
  local v
  if where then
    v = redis.call('HMGET', key(where, id), 'ticket', 'day', 'granted', 'expires', 'queued',
                   'shadowed', 'probe', 'claimed', 'ledger', 'drop', 'settled')
  else
    v = redis.call('HMGET', key(LEASE, id), 'ticket', 'day', 'granted', 'expires', 'queued',
                   'shadowed', 'probe', 'claimed')
  end
  if not v[1] then return nil end
  return {t = decode_ticket(v[1]), day = v[2], granted = number(v[3]),
          expires = number(v[4]), queued = v[5] and number(v[5]) or 0, shadowed = v[6] or '',
          probe = v[7] == '1', claimed = v[8] == '1', ledger = v[9], drop = v[10] and number(v[10]),
          settled = v[11] and cjson.decode(v[11])}
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
  local k, p = key('rate'), names(pool)
  local w = redis.call('HGET', k, p.rate_w)
  if w and number(w) == math.floor(now / RATE_WINDOW) then
    -- In the window of the pool's last grant: two counts move, nothing else (no number
    -- formatted, the fractional first grant time not rewritten).
    redis.call('HINCRBY', k, p.rate_t, '1')
    redis.call('HINCRBY', k, p.rate_c, '1')
    return
  end
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

-- Dedup: "dedup:<len>/<tenant><key>" names the leader in flight; DEDUP_END:<leader> keeps
-- how its call ended (with its shared result, base64) for DEDUP_KEEP seconds; FINISHED goes
-- back in this script's progress, and END_PREFIX .. <leader> on the GRANTS channel tells
-- other replicas. (begin empties it.)
local FINISHED

local function dedup_key(t)
  local tenant = t[T.tenant]
  return key('dedup', string.len(tenant) .. '/' .. tenant .. t[T.dedup_key])
end

local function dedup_finish(t, result)
  if (t[T.dedup_key] or '') == '' then return end
  local k = dedup_key(t)
  if redis.call('GET', k) == t[T.lease_id] then redis.call('DEL', k) end
  local e = {leader = t[T.lease_id], result = result}
  redis.call('SET', key(DEDUP_END, t[T.lease_id]), cjson.encode(e), 'PX', DEDUP_KEEP * 1000)
  table.insert(FINISHED, e)
  redis.call('PUBLISH', key(GRANTS), END_PREFIX .. t[T.lease_id])
end

-- A waiter or grant left unserved: remember why for a deferred ticket (one lease TTL), and
-- tell the dedup followers of a leader to retry.
local function ended(t, kind, d)
  if t[T.deferred] then
    local e = cjson.encode({kind = kind, tenant = t[T.tenant], denial = d})
    redis.call('SET', key('ended', t[T.lease_id]), e, 'PX', ms(t[T.ttl]))
  end
  dedup_finish(t, nil)
end

-- A lease's score in sorted set 'expiry': its expiry in whole milliseconds, rounded down. A
-- set of up to 128 members is a listpack, which every insert walks reading each member's
-- score, and a whole number is read as it is stored where a fraction of 17 digits is parsed
-- each time (with 120 leases held, ~100k instructions per ZADD). reap() takes the members due
-- by their score and checks each one's exact expiry.
local function expiry_score(expires)
  return string.format('%d', math.floor(expires * 1000))
end

-- claimed: granted to the call asking for it (its own Acquire), not to a waiter another
-- replica's RPC will claim; its Release then has no unclaimed grant to clear. Returns the
-- lease (record() makes what the engine sees of it).
local function reserve(t, raw, queued_for, shadowed, claimed)
  local granted_second = string.format('%d', math.floor(now)) -- a holder's score (_lib4_holders)
  fetch_levels(t[T.limits]) -- read by check before, as a rule
  for _, l in ipairs(t[T.limits]) do
    local a = amount(t, l[L_UNIT])
    if l[L_KIND] == KIND_GAUGE then
      set_gauge(l[L_KEY], level_cache[l[L_KEY]] + a)
      redis.call('ZADD', key_of('holders', l[L_KEY]), granted_second, t[T.lease_id])
    elseif l[L_KIND] == KIND_BUCKET then
      set_bucket(l, level_of(l) - a)
    else
      redis.call('HINCRBYFLOAT', D, l[L_KEY], a)
      redis.call('EXPIRE', D, DAY_KEEP)
    end
  end
  flush_levels()
  local probe = gate_head(t[T.pool]).circuit == CIRCUIT_HALF_OPEN
  if probe then
    local g = gate_of(t[T.pool])
    g.probes = g.probes + 1
    gate_save(t[T.pool], g)
  end
  local lease = {t = t, day = day, granted = now, expires = now + t[T.ttl], queued = queued_for,
                 shadowed = shadowed, probe = probe}
  local expires, lk = num(lease.expires), key(LEASE, t[T.lease_id])
  local claim = claimed and '1' or '0'
  if queued_for == 0 and shadowed == '' and not probe then
    -- Most leases: queued, shadowed and probe as load_lease reads them absent, left out
    -- (each field stored is strings made and a listpack searched, here and in DEL).
    redis.call('HSET', lk, 'ticket', raw, 'day', day, 'granted', now_text, 'expires', expires,
               'claimed', claim)
  else
    redis.call('HSET', lk, 'ticket', raw, 'day', day, 'granted', now_text, 'expires', expires,
               'queued', num(queued_for), 'shadowed', shadowed, 'probe', probe and '1' or '0',
               'claimed', claim)
  end
  redis.call('ZADD', key('expiry'), expiry_score(lease.expires), t[T.lease_id])
  redis.call('HINCRBY', key_of('inflight', SCOPE_POOL), t[T.pool], '1')
  redis.call('HINCRBY', key_of('inflight', SCOPE_TENANT), t[T.tenant], '1')
  if t[T.idempotency_key] ~= '' then remember_key(t) end
  count_grant(t[T.pool])
  return lease
end

-- Take one from a counter, and drop it at zero. Its counts are whole (slots, leases,
-- waiters), so HINCRBY, whose answer is a number and not a text to parse.
local function decr_field(h, field)
  if redis.call('HINCRBY', h, field, '-1') <= 0 then
    redis.call('HDEL', h, field)
  end
end

-- Move t's limits by a settlement: slots freed, token and USD counters (of the UTC day
-- taken_on) by charged - reserved. A refund never lifts a bucket above capacity; overuse may
-- put it in debt.
-- expired: settle a lease that expired (its slots were freed then): daily counters move both
-- ways, buckets only by overuse (they have refilled since; a refund now could grant what the
-- provider's window no longer has).
local function move_limits(t, taken_on, token_delta, usd_delta, expired)
  if token_delta ~= 0 or usd_delta ~= 0 then fetch_limits(t[T.limits], t[T.pool]) end -- a bucket's
  if not expired or token_delta ~= 0 or usd_delta ~= 0 then fetch_levels(t[T.limits]) end
  for _, l in ipairs(t[T.limits]) do
    local unit = l[L_UNIT]
    if unit == UNIT_SLOT then
      if not expired then
        set_gauge(l[L_KEY], math.max(0, level_cache[l[L_KEY]] - 1))
        redis.call('ZREM', key_of('holders', l[L_KEY]), t[T.lease_id])
      end
    else
      local delta = 0
      if unit == UNIT_TOKEN then delta = token_delta elseif unit == UNIT_NANO_USD then delta = usd_delta end
      if expired and l[L_KIND] == KIND_BUCKET and delta < 0 then delta = 0 end
      if delta ~= 0 then
        if l[L_KIND] == KIND_BUCKET then
          local c = current(l) or l
          set_bucket(l, math.min(c[L_CAPACITY], level_at(c) - delta))
        elseif l[L_KIND] == KIND_DAILY then
          local dk = key_of(KIND_DAILY, taken_on)
          if delta > 0 or redis.call('HEXISTS', dk, l[L_KEY]) == 1 then
            if tonumber(redis.call('HINCRBYFLOAT', dk, l[L_KEY], delta)) < 0 then
              redis.call('HSET', dk, l[L_KEY], 0)
            end
            redis.call('EXPIRE', dk, DAY_KEEP)
          end
        end
      end
    end
  end
  flush_levels()
end

-- End a lease: free its slots and move token/USD counters by charged - reserved.
local function settle(lease, token_delta, usd_delta)
  local t = lease.t
  if lease.probe then
    local g = gate_of(t[T.pool])
    g.probes = math.max(0, g.probes - 1)
    gate_save(t[T.pool], g)
  end
  move_limits(t, lease.day, token_delta, usd_delta)
  redis.call('DEL', key(LEASE, t[T.lease_id]))
  redis.call('ZREM', key('expiry'), t[T.lease_id])
  decr_field(key_of('inflight', SCOPE_POOL), t[T.pool])
  decr_field(key_of('inflight', SCOPE_TENANT), t[T.tenant])
end

-- End a grant nobody used: everything it reserved is refunded.
-- kind: why, for a deferred ticket's record (END_UNCLAIMED or END_CANCELLED).
local function give_back(id, kind)
  local lease = load_lease(id)
  if lease then
    local t = lease.t
    ended(t, kind, nil)
    settle(lease, -(t[T.input_tokens] + t[T.max_output_tokens]), -t[T.nano_usd])
  end
end

-- An expired lease's tombstone ("tomb:<id>", its lease hash renamed, which settle then finds
-- gone), kept one lease TTL past the expiry: the twin of _backends/memory/tombstones.py.
local function bury(id, lease)
  local t = lease.t
  local k = key('tomb', id)
  redis.call('RENAME', key(LEASE, id), k)
  redis.call('HSET', k, 'ledger', day, 'drop', num(lease.expires + t[T.ttl]))
  redis.call('PEXPIRE', k, ms(t[T.ttl]))
end

-- The tombstone of an expired lease, or nil (none, or past its deadline).
local function tombstone(id)
  local grave = load_lease(id, 'tomb')
  if grave and grave.drop > now then return grave end
  return nil
end

-- A Release of an expired lease (grave, its tombstone) reporting usage (a table, or the rule
-- for none): settled once, as memory/tombstones.py does: the ledger row its expiry charged and
-- its daily quotas move from the reservation to what it used, its buckets only by overuse.
-- Returns {lease, settlement} (already_released when a Release had settled it before).
local function settle_expired(id, grave, reported)
  local s = grave.settled
  if s then
    s.already_released = true
    return {lease = record(grave), settlement = s}
  end
  local t = grave.t
  local reserved = t[T.input_tokens] + t[T.max_output_tokens]
  local u, usd = settle_usage(t, reported)
  local charged = u[U_INPUT_TOKENS] + u[U_OUTPUT_TOKENS]
  move_limits(t, grave.day, charged - reserved, usd - t[T.nano_usd], true)
  local correction = {u[U_INPUT_TOKENS] - t[T.input_tokens],
                      u[U_OUTPUT_TOKENS] - t[T.max_output_tokens],
                      u[U_CACHED_INPUT_TOKENS], u[U_CACHE_WRITE_INPUT_TOKENS]}
  charge(t, correction, usd - t[T.nano_usd], 0, grave.ledger)
  s = {lease = record(grave), charged_tokens = charged,
       refunded_tokens = math.max(0, reserved - charged), charged_nano_usd = usd,
       already_released = false}
  redis.call('HSET', key('tomb', id), 'settled', cjson.encode(s))
  return {lease = s.lease, settlement = s}
end

-- Every operation reaps first, so no expired lease ever holds capacity; expire.lua reports
-- them (once, whichever replica runs it).
local function reap()
  local ids = redis.call('ZRANGEBYSCORE', key('expiry'), '-inf', expiry_score(now), 'LIMIT', '0',
                        REAP_BATCH)
  for _, id in ipairs(ids) do
    local lease = load_lease(id)
    if lease and lease.expires > now then -- later in this millisecond (expiry_score): not yet
      lease = false
    end
    if lease then
      redis.call('RPUSH', key('expired'), cjson.encode(record(lease)))
      bury(id, lease)
      settle(lease, 0, 0) -- the full reservation stays charged
      local t = lease.t
      charge(t, settle_usage(t, UNREPORTED_RESERVATION))
      dedup_finish(t, nil)
    elseif lease == nil then
      redis.call('ZREM', key('expiry'), id)
    end
  end
end
