-- beat: a replica's heartbeat. It promises its next beat within ARGV[4] seconds of Redis
-- TIME; grants made for the waiters of a replica past its promise (nobody will claim them)
-- go back at once, and what that frees is dispatched. Its waiters still queued leave at the
-- next dispatch pass that reaches them (_lib5_queue.lua dispatch_pool).
-- ARGV[3] this replica's id; ARGV[4] seconds after which, without a beat, it is dead.
-- Returns {progress, lapsed = true when its previous promise had already passed (other
-- replicas may have dropped its waiters meanwhile)}.
reap()
local rep, dead_after = ARGV[3], tonumber(ARGV[4])
local replicas = key(REPLICAS)
local promised = redis.call('HGET', replicas, rep)
local lapsed = promised ~= false and tonumber(promised) < server_time()
redis.call('HSET', replicas, rep, num(server_time() + dead_after))
replica_dead[rep] = false
if not promised then
  -- A replica starting: forget those dead for a day (nothing of theirs can still wait:
  -- their waiters' waits and grants' claim timeouts have run out).
  local all = redis.call('HGETALL', replicas)
  for i = 1, #all, 2 do
    if tonumber(all[i + 1]) < server_time() - DAY_SECONDS then
      redis.call('HDEL', replicas, all[i])
    end
  end
end
local freed = false
local claimers = redis.call('HGETALL', key('claimer'))
for i = 1, #claimers, 2 do
  local id, owner = claimers[i], claimers[i + 1]
  if not redis.call('ZSCORE', key(UNCLAIMED), id) then
    redis.call('HDEL', key('claimer'), id) -- settled some other way
  elseif dead(owner) then
    redis.call('ZREM', key(UNCLAIMED), id)
    redis.call('DEL', key(GRANTED, id))
    redis.call('HDEL', key('claimer'), id)
    give_back(id, END_UNCLAIMED)
    freed = true
  end
end
local progress = new_progress()
if freed then dispatch_all(progress) end
return cjson.encode({progress = shown(progress), lapsed = lapsed})
