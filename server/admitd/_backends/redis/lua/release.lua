-- release: settle a lease with actual usage (idempotently) and dispatch the freed capacity.
-- ARGV[3] lease id; ARGV[4] usage JSON [input, output] or "" for the full reservation;
-- ARGV[5] tenant that must own it, or ""; ARGV[6] outcome (1 ok .. 5 cancelled);
-- ARGV[7] the provider's retry-after in seconds (0: none); ARGV[8] a dedup leader's result
-- for its followers (base64), or "" for none.
-- Returns {settlement, progress} or {error = "gone" | "not_owner"}.
reap()
local id, tenant = ARGV[3], ARGV[5]
local done = released(id)
if done then
  local s = done
  if tenant ~= '' and s.lease.tenant ~= tenant then return cjson.encode({error = 'not_owner'}) end
  s.already_released = true
  return cjson.encode({settlement = s, progress = new_progress()})
end
local lease = load_lease(id)
if not lease then return cjson.encode({error = 'gone'}) end
local t = lease.t
if tenant ~= '' and t.tenant ~= tenant then return cjson.encode({error = 'not_owner'}) end
local reserved = t['in'] + t.out
local used_in, used_out, charged_usd = t['in'], t.out, t.usd
if ARGV[4] ~= '' then
  local usage = cjson.decode(ARGV[4])
  used_in, used_out = usage[1], usage[2]
  -- Same rounding as _model.price_nano_usd: up, with a tolerance for float noise.
  charged_usd = math.ceil(used_in * t.pin + used_out * t.pout - 0.000001)
end
local charged = used_in + used_out
local s = {lease = record(lease), charged_tokens = charged,
           refunded_tokens = math.max(0, reserved - charged), charged_nano_usd = charged_usd,
           already_released = false, drop_at = now + t.ttl}
settle(lease, charged - reserved, charged_usd - t.usd)
charge(t, used_in, used_out, charged_usd)
report(t.pool, tonumber(ARGV[6]), tonumber(ARGV[7]), lease.probe)
if ARGV[6] == '1' and ARGV[8] ~= '' then dedup_finish(t, ARGV[8]) else dedup_finish(t, nil) end
redis.call('ZREM', key('unclaimed'), id)
redis.call('DEL', key('granted', id))
redis.call('SET', key('released', id), cjson.encode(s), 'PX', math.ceil(t.ttl * 1000))
return cjson.encode({settlement = s, progress = dispatch_all(new_progress())})
