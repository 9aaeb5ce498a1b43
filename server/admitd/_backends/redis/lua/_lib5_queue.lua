-- Library part 7 of 8 (see _lib1_base.lua): the fair queue and its dispatch pass. Its twins
-- are _backends/memory/fairqueue.py, queue.py and dispatch.py (the dispatch pass).

-- Fair queue: per (priority class, pool) a sorted set of "seq|id" scored by finish tag.
local SEQ_DIGITS = 16 -- a member is the sequence number in this many digits, '|', the id
local GRANTED_KEEP = 60 -- seconds a grant's record outlives its claim deadline
-- A class's number as its keys spell it, written once: Lua formats a number it joins to a
-- string with sprintf every time.
local CLASS = {}
for c = 0, PRIORITY_CLASSES - 1 do CLASS[c] = c .. '' end

-- Kept by names() (_lib1_base), each new one counted against its bound.
local function fkey(cls, pool, tenant)
  local by = names(pool).f[tenant]
  local k = by and by[cls]
  if not k then
    local p = names(pool, 1)
    by = p.f[tenant]
    if not by then
      by = {}
      p.f[tenant] = by
    end
    k = CLASS[cls] .. '|' .. p.length .. pool .. tenant
    by[cls] = k
  end
  return k
end

local function vkey(cls, pool)
  local k = names(pool).v[cls]
  if not k then
    k = CLASS[cls] .. '|' .. pool
    names(pool, 1).v[cls] = k
  end
  return k
end

local function qkey(cls, pool)
  return key('q', CLASS[cls], pool)
end

-- Replicas' heartbeats: hash REPLICAS maps a replica's id to the Redis TIME by which it
-- promised its next beat (beat.lua). A waiter (hash field 'rep') and an unclaimed grant (hash
-- 'claimer') name the replica whose RPC waits for them; once that replica is past its
-- promise, nobody waits for them any more. Liveness is judged on Redis TIME even when a test
-- injects the admission clock: processes die in real time, and no replica's own clock can
-- declare another dead.
local server_now -- begin forgets it
local function server_time()
  if not server_now then
    local t = redis.call('TIME')
    server_now = tonumber(t[1]) + tonumber(t[2]) / 1000000
  end
  return server_now
end

local replica_dead -- this call's, by replica (begin empties it)
-- True when replica rep has missed its heartbeats. An unknown replica ('' for a deferred
-- ticket, or one never seen) is presumed alive: the claim timeout remains the last resort.
local function dead(rep)
  if not rep or rep == '' then return false end
  local d = replica_dead[rep]
  if d == nil then
    local promised = redis.call('HGET', key(REPLICAS), rep)
    d = promised ~= false and tonumber(promised) < server_time()
    replica_dead[rep] = d
  end
  return d
end

-- The members ("seq|id") a tenant has queued in a class of a pool: the waiters a credit moves.
local function mkey(fk)
  return key('qt', fk)
end

local function push(t, raw, rep)
  local cls = t[T.priority]
  local fk = fkey(cls, t[T.pool], t[T.tenant])
  local v = tonumber(redis.call('HGET', key('vtime'), vkey(cls, t[T.pool])) or '0')
  local last = tonumber(redis.call('HGET', key('lastf'), fk) or '0')
  local tag = math.max(v, last) + t[T.cost]
  redis.call('HSET', key('lastf'), fk, num(tag))
  local seq = string.format('%0' .. SEQ_DIGITS .. 'd', redis.call('INCR', key('seq')))
  local member = seq .. '|' .. t[T.lease_id]
  redis.call('ZADD', qkey(cls, t[T.pool]), num(tag), member)
  redis.call('SADD', mkey(fk), member)
  local fields = {'ticket', raw, 'enq', now_text, 'member', member, 'tag', num(tag)}
  if rep ~= '' then
    table.insert(fields, 'rep')
    table.insert(fields, rep)
  end
  redis.call('HSET', key('w', t[T.lease_id]), unpack(fields))
  redis.call('HINCRBY', key_of('queued', SCOPE_TENANT), t[T.tenant], 1)
  redis.call('INCR', key_of('queued', 'total'))
  redis.call('SADD', key_of('queued', 'pools'), t[T.pool])
end

-- Take a waiter out; served advances virtual time, otherwise its tag is given back.
local function unqueue(id, served)
  local w = redis.call('HMGET', key('w', id), 'ticket', 'member', 'tag')
  if not w[1] then return nil end
  local t, tag = decode_ticket(w[1]), tonumber(w[3])
  local cls = t[T.priority]
  redis.call('ZREM', qkey(cls, t[T.pool]), w[2])
  redis.call('DEL', key('w', id))
  local fk, vk = fkey(cls, t[T.pool], t[T.tenant]), vkey(cls, t[T.pool])
  redis.call('SREM', mkey(fk), w[2])
  local v = tonumber(redis.call('HGET', key('vtime'), vk) or '0')
  local last = tonumber(redis.call('HGET', key('lastf'), fk) or '0')
  if served then
    if tag > v then
      v = tag
      redis.call('HSET', key('vtime'), vk, num(v))
    end
  elseif last == tag then
    last = tag - t[T.cost]
    redis.call('HSET', key('lastf'), fk, num(last))
  end
  if last <= v then redis.call('HDEL', key('lastf'), fk) end
  decr_field(key_of('queued', SCOPE_TENANT), t[T.tenant])
  redis.call('DECR', key_of('queued', 'total'))
  local left = 0
  for c = 0, PRIORITY_CLASSES - 1 do left = left + redis.call('ZCARD', qkey(c, t[T.pool])) end
  if left == 0 then redis.call('SREM', key_of('queued', 'pools'), t[T.pool]) end
  return t
end

-- A lease of t was released refunded tokens under its reservation: its tenant's last finish
-- and its queued waiters move back by that part of its cost (t[T.cost] / tokens is 1 / weight),
-- never below the class's virtual time, so only a tenant still waiting is credited and an idle
-- one cannot bank refunds to burst past busy tenants later (see push). Twin: FairQueue.credit
-- and Ticket.credit.
local function credit(t, refunded)
  if refunded <= 0 then return end
  local cls = t[T.priority]
  local fk = fkey(cls, t[T.pool], t[T.tenant])
  local last = tonumber(redis.call('HGET', key('lastf'), fk))
  if not last then return end
  local v = tonumber(redis.call('HGET', key('vtime'), vkey(cls, t[T.pool])) or '0')
  local shift = math.min(t[T.cost] * refunded / (t[T.input_tokens] + t[T.max_output_tokens]),
                         last - v)
  if shift <= 0 then return end -- its finish is not above the virtual time: nothing to credit
  local q = qkey(cls, t[T.pool])
  for _, member in ipairs(redis.call('SMEMBERS', mkey(fk))) do
    local wk = key('w', string.sub(member, SEQ_DIGITS + 2))
    local tag = tonumber(redis.call('HGET', wk, 'tag')) - shift
    redis.call('ZADD', q, num(tag), member)
    redis.call('HSET', wk, 'tag', num(tag))
  end
  last = last - shift
  if last <= v then
    redis.call('HDEL', key('lastf'), fk)
  else
    redis.call('HSET', key('lastf'), fk, num(last))
  end
end

local function new_progress()
  return {grants = {}, rejections = {}, blocked = {}, passed_over = {}, finished = FINISHED}
end

-- A progress with nothing in it is left out of an answer (codec.progress reads none as
-- empty): most calls move nothing else, and encoding five empty tables cost ~10k
-- instructions a call. p: nil for one never made (see dispatch_all), which has only
-- what this call finished.
local function shown(p)
  if p == nil then
    if next(FINISHED) then return new_progress() end
    return nil
  end
  if next(p.grants) or next(p.rejections) or next(p.blocked) or next(p.passed_over)
      or next(p.finished) then
    return p
  end
  return nil
end

-- A ticket granted without entering its pool's empty queue: virtual time moves as if it had
-- been pushed and served (its tag, max(V, its tenant's last finish) + cost, becomes V).
local function served_alone(t)
  local cls = t[T.priority]
  local fk, vk = fkey(cls, t[T.pool], t[T.tenant]), vkey(cls, t[T.pool])
  local v = number(redis.call('HGET', key('vtime'), vk) or '0')
  local stored_last = redis.call('HGET', key('lastf'), fk)
  local tag = math.max(v, number(stored_last or '0')) + t[T.cost]
  if tag > v then redis.call('HSET', key('vtime'), vk, num(tag)) end
  if stored_last then redis.call('HDEL', key('lastf'), fk) end -- its last finish is V now
end

-- The waiters of pool in service order: each call of the returned function gives the next
-- {member, tag, id, t, raw, enq}, or nil. Strict classes with aging, finish tags within one.
local function fair_order(pool, light)
  -- light: only ids, tags and enqueue times (where a waiter stands); else each waiter's
  -- ticket too, decoded (dispatch). A look walks up to MAX_EXACT_POSITION waiters, and
  -- decoding each one's ticket was most of its time.
  local cursor = {}
  for c = 1, PRIORITY_CLASSES do cursor[c] = 0 end
  local function head(c)
    local m = redis.call('ZRANGE', qkey(c, pool), cursor[c + 1], cursor[c + 1], 'WITHSCORES')
    if #m == 0 then return false end
    local id = string.sub(m[1], SEQ_DIGITS + 2)
    local h = {c = c, member = m[1], tag = tonumber(m[2]), id = id}
    if light then
      h.enq = tonumber(redis.call('HGET', key('w', id), 'enq'))
    else
      local w = redis.call('HMGET', key('w', id), 'ticket', 'enq', 'rep')
      h.t, h.raw, h.enq, h.rep = decode_ticket(w[1]), w[1], tonumber(w[2]), w[3]
    end
    return h
  end
  local heads = {}
  for c = 0, PRIORITY_CLASSES - 1 do heads[c + 1] = head(c) end
  return function()
    local best, bk = nil, nil
    for c = 0, PRIORITY_CLASSES - 1 do
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
      cursor[best.c + 1] = cursor[best.c + 1] + 1
      heads[best.c + 1] = head(best.c)
    end
    return best
  end
end

-- Grant waiters of pool in fair order until a pool-wide limit blocks the head. A waiter held
-- back by its own tenant's limit is passed over with the rest of that tenant's waiters.
-- Returns the denial of the watch ticket (when examined and not granted) and its own grant.
local function dispatch_pool(pool, watch, progress)
  local skipped, served, gone, never, abandoned = {}, {}, {}, {}, {}
  local watched, own = nil, nil
  local examined = 0
  local next_waiter = fair_order(pool)
  while examined < MAX_EXAMINED do
    local best = next_waiter()
    if not best then break end
    examined = examined + 1
    local t = best.t
    if skipped[t[T.tenant]] and best.id == watch then
      watched = skipped[t[T.tenant]] -- behind its own tenant's held waiter
    end
    if not skipped[t[T.tenant]] then
      local closed = shut(pool)
      if best.id ~= watch and dead(best.rep) then
        table.insert(abandoned, best.id) -- its replica missed its heartbeats: nobody waits
      elseif best.id ~= watch and now > best.enq + t[T.wait] then
        table.insert(gone, best.id) -- its RPC has ended
      elseif closed and closed.cause == CAUSE_OPEN then
        table.insert(never, {best.id, closed}) -- refused at once, queued calls too
        if best.id == watch then watched = closed end
      elseif closed then
        if best.id == watch then watched = closed end
        progress.blocked[pool] = closed
        break
      else
        local d, shadowed = check(t, false)
        if not d then
          local rec = record(reserve(t, best.raw, now - best.enq, shadowed, best.id == watch))
          table.insert(served, best.id)
          if best.id == watch then
            own = rec
          else
            table.insert(progress.grants, rec)
            -- Unclaimed until the replica holding the RPC takes it (pub/sub or polling).
            local keep = math.floor((t[T.claim_timeout] + GRANTED_KEEP) * 1000)
            redis.call('SET', key(GRANTED, best.id), cjson.encode(rec), 'PX', keep)
            redis.call('ZADD', key(UNCLAIMED), num(now + t[T.claim_timeout]), best.id)
            if best.rep then redis.call('HSET', key('claimer'), best.id, best.rep) end
            redis.call('PUBLISH', key(GRANTS), best.id)
          end
        else
          if best.id == watch then watched = denial(t, d) end
          local l = t[T.limits][d.index]
          if l[L_KIND] == KIND_DAILY then
            table.insert(never, {best.id, denial(t, d)}) -- cannot fit before the day turns
          elseif l[L_SCOPE] == SCOPE_TENANT then
            skipped[t[T.tenant]] = denial(t, d)
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
    ended(unqueue(n[1], false), END_REJECTED, n[2])
    table.insert(progress.rejections, n)
  end
  for _, id in ipairs(gone) do ended(unqueue(id, false), END_TIMEOUT, nil) end
  for _, id in ipairs(abandoned) do -- as if its RPC had cancelled (cancel.lua)
    local t = unqueue(id, false)
    if t[T.idempotency_key] ~= '' then redis.call('DEL', idem_key(t)) end
    ended(t, END_CANCELLED, nil)
  end
  return watched, own
end

-- progress: nil to have one made only when a pool has waiters (five tables, most calls none).
local function dispatch_all(progress)
  for _, pool in ipairs(redis.call('SMEMBERS', key_of('queued', 'pools'))) do
    progress = progress or new_progress()
    dispatch_pool(pool, '', progress)
  end
  return progress
end

-- cjson encodes an empty table as {}; the Python side accepts both {} and [] for lists.
