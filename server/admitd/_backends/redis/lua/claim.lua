-- claim: the RPC waiting for this grant has it; the lease is now the caller's.
-- ARGV[3] lease id. Returns {claimed = 1 if the grant was still unclaimed, else 0}.
local id = ARGV[3]
redis.call('DEL', key(GRANTED, id))
redis.call('HDEL', key('claimer'), id)
return cjson.encode({claimed = redis.call('ZREM', key(UNCLAIMED), id)})
