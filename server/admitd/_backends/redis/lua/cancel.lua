-- cancel: take a waiter out of the queue, or give back its grant if nobody claimed it.
-- ARGV[3] lease id. Returns {progress}.
reap()
local id = ARGV[3]
local progress = new_progress()
local t = unqueue(id, false)
if t then
  if t[T.idempotency_key] ~= '' then redis.call('DEL', idem_key(t)) end
  ended(t, END_CANCELLED, nil)
  dispatch_all(progress) -- it may have been the head holding the queue: who is behind may fit
elseif redis.call('ZREM', key(UNCLAIMED), id) == 1 then
  redis.call('DEL', key(GRANTED, id))
  redis.call('HDEL', key('claimer'), id)
  give_back(id, END_CANCELLED) -- granted while its RPC gave up
  dispatch_all(progress)
end
return cjson.encode({progress = shown(progress)})
