-- acquire: grant now, queue, or deny a ticket; atomic with the dispatch pass it triggers.
-- ARGV[3] ticket JSON; ARGV[4] "1" to queue when it does not fit now, "0" to fail fast;
-- ARGV[5] the id of the replica whose RPC waits for it, "" for none (a deferred ticket).
-- Returns {lease?, queued?, replayed?, waiting_on?, follows?, denial?, full?, mismatch?,
-- progress};
-- full = {scope, depth, limit, pool_depth, grants_per_second?}.
reap()
local t = decode_ticket(ARGV[3])
local wait = ARGV[4] == '1'
local progress -- made when something may move (shown(nil) has what this call finished)

if t[T.idempotency_key] ~= '' then
  local ref, fp = known_key(t)
  if ref then
    if fp ~= t[T.fingerprint] then return cjson.encode({mismatch = true}) end
    if redis.call('EXISTS', key('w', ref)) == 1 then
      -- The retry's replica waits for it now (the first one's may be the one that died).
      if ARGV[5] ~= '' then redis.call('HSET', key('w', ref), 'rep', ARGV[5]) end
      return cjson.encode({queued = true, replayed = true, waiting_on = ref,
                           progress = shown(progress)})
    end
    local lease = load_lease(ref)
    if lease then
      if ARGV[5] ~= '' and redis.call('ZREM', key(UNCLAIMED), ref) == 1 then
        -- granted while its first attempt's RPC was gone: this retry's caller has it now,
        -- so it must not go back as unclaimed (claim.lua)
        redis.call('DEL', key(GRANTED, ref))
        redis.call('HDEL', key('claimer'), ref)
      end
      return cjson.encode({lease = record(lease), replayed = true, progress = shown(progress)})
    end
    local s = released(ref)
    if s then
      s.lease.expires_in = 0
      return cjson.encode({lease = s.lease, replayed = true, progress = shown(progress)})
    end
    -- the lease expired: a retry may reserve again
  end
end

if (t[T.dedup_key] or '') ~= '' then
  local leader = redis.call('GET', dedup_key(t))
  if leader then return cjson.encode({follows = leader, progress = shown(progress)}) end
end

local d = check(t, true)
if d then
  return cjson.encode({denial = refusal(t, denial(t, d)), progress = shown(progress)})
end
local closed = shut(t[T.pool])
if closed and closed.cause == CAUSE_OPEN then -- refused at once, never queued
  return cjson.encode({denial = refusal(t, closed), progress = shown(progress)})
end
if wait then
  local mine = tonumber(redis.call('HGET', key_of('queued', SCOPE_TENANT), t[T.tenant]) or '0')
  local total = tonumber(redis.call('GET', key_of('queued', 'total')) or '0')
  local full = nil
  if mine >= t[T.max_queued_tenant] then
    full = {scope = FULL_TENANT, depth = mine, limit = t[T.max_queued_tenant]}
  elseif total >= t[T.max_queued_total] then
    full = {scope = FULL_GLOBAL, depth = total, limit = t[T.max_queued_total]}
  end
  if full then
    full.pool_depth = 0
    for c = 0, PRIORITY_CLASSES - 1 do
      full.pool_depth = full.pool_depth + redis.call('ZCARD', qkey(c, t[T.pool]))
    end
    full.grants_per_second = grants_per_second(t[T.pool])
    return cjson.encode({full = full, progress = shown(progress)})
  end
end

-- Nothing waits in the pool: the dispatch pass would examine this ticket alone, so decide it
-- here as that pass would, without entering the queue and leaving it (most of an Acquire's
-- cost when the queue is empty). A ticket that would wait and does not fit now, and a daily
-- quota (checked above; never refused here), take the queue's path below.
if redis.call('SISMEMBER', key_of('queued', 'pools'), t[T.pool]) == 0 then
  local pool = t[T.pool]
  local closed, d, shadowed = shut(pool), nil, ''
  if not closed then d, shadowed = check(t, false) end
  if not closed and not d then
    if (t[T.dedup_key] or '') ~= '' then redis.call('SET', dedup_key(t), t[T.lease_id]) end
    served_alone(t)
    local lease = reserve(t, ARGV[3], 0, shadowed, true)
    local moved = shown(progress)
    if moved then
      return cjson.encode({lease = record(lease), waiting_on = t[T.lease_id], progress = moved})
    end
    -- Most Acquires: the engine has the rest of the lease record in the ticket
    -- (codec.acquire_result). %.14g as cjson writes a number.
    local mark = shadowed == '' and '""' or cjson.encode(shadowed)
    return '{"granted":[' .. string.format('%.14g', lease.expires - now) .. ',' .. mark .. ']}'
  end
  local l = d and t[T.limits][d.index]
  if not wait and not (l and l[L_KIND] == KIND_DAILY) then
    progress = new_progress()
    local held_by = closed
    if closed then
      progress.blocked[pool] = closed
    else
      held_by = denial(t, d)
      if l[L_SCOPE] == SCOPE_TENANT then
        table.insert(progress.passed_over, held_by)
      else
        progress.blocked[pool] = held_by
      end
    end
    return cjson.encode({denial = refusal(t, held_by), progress = shown(progress)})
  end
end

progress = new_progress()
push(t, ARGV[3], ARGV[5])
if t[T.idempotency_key] ~= '' then remember_key(t) end
if (t[T.dedup_key] or '') ~= '' then redis.call('SET', dedup_key(t), t[T.lease_id]) end
local watched, own = dispatch_pool(t[T.pool], t[T.lease_id], progress)
local moved = shown(progress)
if own then return cjson.encode({lease = own, waiting_on = t[T.lease_id], progress = moved}) end
if wait then return cjson.encode({queued = true, waiting_on = t[T.lease_id], progress = moved}) end
unqueue(t[T.lease_id], false)
if t[T.idempotency_key] ~= '' then redis.call('DEL', idem_key(t)) end
if (t[T.dedup_key] or '') ~= '' then -- refused in the step that made it a leader: nobody joined
  redis.call('DEL', dedup_key(t))
end
local held_by = watched or progress.blocked[t[T.pool]]
return cjson.encode({denial = refusal(t, held_by), progress = shown(progress)})
