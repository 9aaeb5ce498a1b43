-- renew: set a live lease's expiry to now + extend_by.
-- ARGV[3] lease id; ARGV[4] extend_by seconds; ARGV[5] tenant that must own it, or "".
-- Returns {lease} or {error = "gone" | "lost" | "not_owner"}, or for a lease that expired
-- less than a lease TTL ago {error = "expired", expired = {lease, settlement (absent: none)}}.
reap()
local id, tenant = ARGV[3], ARGV[5]
local lease = load_lease(id)
if not lease then
  local grave = tombstone(id)
  if not grave then return cjson.encode({error = unknown_lease()}) end
  if tenant ~= '' and grave.t[T.tenant] ~= tenant then return cjson.encode({error = 'not_owner'}) end
  local s = grave.settled
  if s then s.already_released = true end
  return cjson.encode({error = 'expired', expired = {lease = record(grave), settlement = s}})
end
if tenant ~= '' and lease.t[T.tenant] ~= tenant then return cjson.encode({error = 'not_owner'}) end
lease.expires = now + tonumber(ARGV[4])
redis.call('HSET', key(LEASE, id), 'expires', num(lease.expires))
redis.call('ZADD', key('expiry'), expiry_score(lease.expires), id)
return cjson.encode({lease = record(lease)})
