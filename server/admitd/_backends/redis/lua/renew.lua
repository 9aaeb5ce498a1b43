-- renew: set a live lease's expiry to now + extend_by.
-- ARGV[3] lease id; ARGV[4] extend_by seconds; ARGV[5] tenant that must own it, or "".
-- Returns {lease} or {error = "gone" | "lost" | "not_owner"}.
reap()
local id, tenant = ARGV[3], ARGV[5]
local lease = load_lease(id)
if not lease then return cjson.encode({error = unknown_lease()}) end
if tenant ~= '' and lease.t[T.tenant] ~= tenant then return cjson.encode({error = 'not_owner'}) end
lease.expires = now + tonumber(ARGV[4])
redis.call('HSET', key('lease', id), 'expires', num(lease.expires))
redis.call('ZADD', key('expiry'), num(lease.expires), id)
return cjson.encode({lease = record(lease)})
