-- look: where a waiter stands, or what became of a deferred ticket.
-- ARGV[3] lease id; ARGV[4] "1" to claim an unclaimed grant (GetTicket), "0" not to.
-- Returns {queued = {tenant, pool, position, depth, grants_per_second?, wait_left}}
--      or {lease, claimed (it was claimed before this look)} or {ended = {kind, tenant,
--      denial?}} or {} when unknown.
reap()
local id = ARGV[3]
local w = redis.call('HMGET', key('w', id), 'ticket', 'enq', 'member')
if w[1] then
  local t, enq = decode_ticket(w[1]), tonumber(w[2])
  local wait_left = enq + t[T.wait] - now
  if wait_left >= 0 then
    local position, exact = 0, false
    local depth, others = 0, 0
    for c = 0, PRIORITY_CLASSES - 1 do
      local n = redis.call('ZCARD', qkey(c, t[T.pool]))
      depth = depth + n
      if c ~= t[T.priority] then others = others + n end
    end
    if others == 0 then
      -- One class: the fair order is its sorted set's (aging only orders classes), so the
      -- rank is exact. Walking the order cost ~17 us a waiter: 200 waiters timing out
      -- together, each looked up for its QUEUE_TIMEOUT, kept Redis busy for 0.3 s.
      position, exact = redis.call('ZRANK', qkey(t[T.priority], t[T.pool]), w[3]) or 0, true
    else
      local next_waiter = fair_order(t[T.pool], true)
      while position <= MAX_EXACT_POSITION do
        local h = next_waiter()
        if not h then break end
        if h.id == id then
          exact = true
          break
        end
        position = position + 1
      end
    end
    if not exact then
      -- Beyond the exact walk: the higher classes plus its rank in its own (aging ignored).
      local ahead = redis.call('ZRANK', qkey(t[T.priority], t[T.pool]), w[3]) or 0
      for c = 0, t[T.priority] - 1 do ahead = ahead + redis.call('ZCARD', qkey(c, t[T.pool])) end
      position = math.max(MAX_EXACT_POSITION, ahead)
    end
    return cjson.encode({queued = {tenant = t[T.tenant], pool = t[T.pool], position = position,
                                   depth = depth, grants_per_second = grants_per_second(t[T.pool]),
                                   wait_left = wait_left}})
  end
  ended(unqueue(id, false), END_TIMEOUT, nil) -- its wait ran out; a dispatch had not seen
end
local lease = load_lease(id)
if lease then
  local unclaimed = redis.call('ZSCORE', key(UNCLAIMED), id)
  if ARGV[4] == '1' and unclaimed then
    redis.call('ZREM', key(UNCLAIMED), id)
    redis.call('DEL', key(GRANTED, id))
  end
  return cjson.encode({lease = record(lease), claimed = not unclaimed})
end
local e = redis.call('GET', key('ended', id))
if e then return cjson.encode({ended = cjson.decode(e)}) end
return '{}'
