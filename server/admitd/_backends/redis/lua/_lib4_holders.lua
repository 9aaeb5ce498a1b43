-- Library part 5 of 8 (see _lib1_base.lua): the holders of each gauge's slots, and why a
-- ticket is refused now. Its twins are the holders in _backends/memory/leases.py and
-- refusal in _backends/memory/counters.py.

-- The leases holding each gauge's slots are in sorted set "holders:<limit key>" by grant time
-- in whole seconds (the exact time is the lease's 'granted'): a set of up to 128 members is a
-- listpack, which every insert walks reading each member's score, and a whole number is read
-- as it is stored where a fraction of 17 digits is parsed each time (with 120 leases held a
-- pair cost 30% more). An older admitd's fractional scores sort among them by time just the
-- same. Each gauge's typical hold (an average of the holds released, the newest weighing
-- HOLD_WEIGHT) in hash "hold". The same state and arithmetic as _backends/memory/leases.py.

-- Its holder released lease: fold how long it was held into its gauges' typical holds. This
-- was ~5% of a pair: the keys of a ticket's gauges are listed once per list of limits (a
-- shared one, never changed: decode_ticket), kept from call to call (at most 1,000 lists,
-- then it starts over); the fields written go in one array made once; and a hold equal to
-- the one before (a pool's and its tenant's gauges, held alike) is formatted once.
local gauges_of, gauges_count = {}, 0
local hold_fields = {}
local function held(lease)
  local limits = lease.t[T.limits]
  local keys = gauges_of[limits]
  if not keys then
    keys = {}
    for _, l in ipairs(limits) do
      if l[L_KIND] == KIND_GAUGE then keys[#keys + 1] = l[L_KEY] end
    end
    if gauges_count >= 1000 then gauges_of, gauges_count = {}, 0 end
    gauges_of[limits] = keys
    gauges_count = gauges_count + 1
  end
  local n = #keys
  if n == 0 then return end
  local seconds = now - lease.granted
  local v = redis.call('HMGET', key('hold'), unpack(keys))
  local last, text
  for i = 1, n do
    local typical = v[i] and number(v[i])
    local hold = seconds
    if typical then hold = typical + HOLD_WEIGHT * (seconds - typical) end
    if hold ~= last then last, text = hold, num(hold) end
    hold_fields[2 * i - 1], hold_fields[2 * i] = keys[i], text
  end
  redis.call('HSET', key('hold'), unpack(hold_fields, 1, 2 * n))
end

-- Seconds until the first need holders of gauge lkey are expected to end, soonest first: a
-- holder at its grant time plus the typical hold while that is ahead, else at its expiry.
local function holder_ends(lkey, need, unknown)
  local v = redis.call('HGET', key('hold'), lkey)
  local hold = v and tonumber(v)
  local h = redis.call('ZRANGE', key_of('holders', lkey), 0, MAX_EXAMINED - 1)
  local ends = {}
  for _, id in ipairs(h) do
    local v = redis.call('HMGET', key(LEASE, id), 'expires', 'granted')
    local expires = tonumber(v[1])
    if expires then
      local typical = hold and tonumber(v[2]) + hold
      if typical and typical > now then expires = math.min(expires, typical) end
      table.insert(ends, expires - now)
    end
  end
  table.sort(ends)
  local out = {}
  for i = 1, math.min(need, #ends) do out[i] = ends[i] end
  if not learn() then return out end
  -- Learning: the unknown slots it counts as held end with it, and no holder's before it.
  local wait, all = learn_until - now, {}
  for i = 1, need do
    if i <= unknown then all[i] = wait
    elseif ends[i - unknown] then all[i] = math.max(wait, ends[i - unknown])
    else break end
  end
  return all
end

-- Why t is refused now: the first limit it does not fit (its pool's gate first when shut;
-- shadow limits never refuse), with every other one it does not fit in also, so that the
-- policy's retry delay is the longest of theirs; a gauge's says when the holders of the slots
-- it needs are expected to end. held_by when it fits every limit (what holds the waiters
-- ahead of it).
local function refusal(t, held_by)
  local out = {}
  local closed = shut(t[T.pool])
  if closed then table.insert(out, closed) end
  for _, queued in ipairs(t[T.limits]) do
    local l = current(queued)
    if l and not l[L_SHADOW] then
      local a, lv = amount(t, l[L_UNIT]), level_at(l)
      if not fits(l, a, lv) then
        local d = {limit = l, level = lv, amount = a}
        if l[L_KIND] == KIND_GAUGE then
          local unknown = lv - level_cache[l[L_KEY]] -- as stored (level_of read it)
          d.ends = holder_ends(l[L_KEY], math.ceil(lv + a - l[L_CAPACITY]), unknown)
        end
        table.insert(out, d)
      end
    end
  end
  if #out == 0 then return held_by end
  local first = table.remove(out, 1)
  first.also = out
  return first
end
