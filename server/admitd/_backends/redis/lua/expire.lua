-- expire: report leases reaped since the last call (exactly once across replicas), give back
-- grants nobody claimed in time (their replica died), end learning after a failover when its
-- time is up (failover.lua), and dispatch what that freed.
-- Returns {expired, progress, next_expiry_in} (seconds to the next lease expiry, unclaimed
-- grant deadline or end of learning).
reap()
local freed = false
for _, id in ipairs(redis.call('ZRANGEBYSCORE', key(UNCLAIMED), '-inf', now_text)) do
  redis.call('ZREM', key(UNCLAIMED), id)
  redis.call('DEL', key(GRANTED, id))
  redis.call('HDEL', key('claimer'), id)
  give_back(id, END_UNCLAIMED)
  freed = true
end
local expired = {}
for _, item in ipairs(redis.call('LRANGE', key('expired'), 0, -1)) do
  table.insert(expired, cjson.decode(item))
end
redis.call('DEL', key('expired'))
if not learn() and learn_until > 0 then -- learning is over: the phantoms go
  redis.call('DEL', key(LEARN))
  freed = true
end
local progress = new_progress()
if freed or #expired > 0 then dispatch_all(progress) end
local result = {expired = expired, progress = shown(progress)}
-- The reaper comes back at the next lease expiry or unclaimed grant's deadline.
for _, set in ipairs({key('expiry'), key(UNCLAIMED)}) do
  local first = redis.call('ZRANGE', set, 0, 0, 'WITHSCORES')
  if #first > 0 then
    local at = tonumber(first[2])
    if set == key('expiry') then -- scored in whole milliseconds: the lease has its exact time
      at = tonumber(redis.call('HGET', key(LEASE, first[1]), 'expires') or '') or (at + 1) / 1000
    end
    local due = at - now
    if not result.next_expiry_in or due < result.next_expiry_in then result.next_expiry_in = due end
  end
end
if learning and (not result.next_expiry_in or learn_until - now < result.next_expiry_in) then
  result.next_expiry_in = learn_until - now -- and at the end of learning
end
return cjson.encode(result)
