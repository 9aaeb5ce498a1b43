-- release: settle a lease with actual usage (idempotently) and dispatch the freed capacity.
-- ARGV[3] lease id; ARGV[4] the reported usage, a JSON array (U_*), or the rule for none
-- (UNREPORTED_*);
-- ARGV[5] tenant that must own it, or ""; ARGV[6] outcome (OUTCOME_*);
-- ARGV[7] the provider's retry-after in seconds (0: none); ARGV[8] a dedup leader's result
-- for its followers (base64), or "" for none.
-- Returns {settlement, progress} or {error = "gone" | "lost" | "not_owner"}, or for a lease
-- that expired less than a lease TTL ago {error = "expired", expired = {lease, settlement}},
-- settled once to the usage reported (settle_expired).
reap()
local id, tenant = ARGV[3], ARGV[5]
-- A live lease was never released (ids are new for every ticket): its record is looked for
-- only when the lease is not there.
local lease = load_lease(id)
local done = not lease and released(id)
if done then
  local s = done
  if tenant ~= '' and s.lease[T.tenant] ~= tenant then return cjson.encode({error = 'not_owner'}) end
  s.already_released = true
  return cjson.encode({settlement = s, progress = new_progress()})
end
local reported = ARGV[4]
if string.sub(reported, 1, 1) == '[' then reported = cjson.decode(reported) end
if not lease then
  local grave = tombstone(id)
  if not grave then return cjson.encode({error = unknown_lease()}) end
  if tenant ~= '' and grave.t[T.tenant] ~= tenant then return cjson.encode({error = 'not_owner'}) end
  return cjson.encode({error = 'expired', expired = settle_expired(id, grave, reported)})
end
local t = lease.t
if tenant ~= '' and t[T.tenant] ~= tenant then return cjson.encode({error = 'not_owner'}) end
local reserved = t[T.input_tokens] + t[T.max_output_tokens]
local used, charged_usd = settle_usage(t, reported)
local charged = used[U_INPUT_TOKENS] + used[U_OUTPUT_TOKENS]
local s = {lease = record(lease), charged_tokens = charged,
           refunded_tokens = math.max(0, reserved - charged), charged_nano_usd = charged_usd,
           already_released = false, drop_at = now + t[T.ttl]}
held(lease)
settle(lease, charged - reserved, charged_usd - t[T.nano_usd])
charge(t, used, charged_usd)
local outcome = number(ARGV[6])
report(t[T.pool], outcome, number(ARGV[7]), lease.probe)
if outcome == OUTCOME_OK and ARGV[8] ~= '' then dedup_finish(t, ARGV[8]) else dedup_finish(t, nil) end
if not lease.claimed then -- a grant made for a waiter another call queued
  redis.call('ZREM', key(UNCLAIMED), id)
  redis.call('DEL', key(GRANTED, id))
  redis.call('HDEL', key('claimer'), id)
end
local settled = cjson.encode(s) -- kept for a retried Release, and the answer: encoded once
redis.call('SET', key('released', id), settled, 'PX', ms(t[T.ttl]))
credit(t, s.refunded_tokens)
local progress = shown(dispatch_all(nil))
if not progress then return '{"settlement":' .. settled .. '}' end
return '{"settlement":' .. settled .. ',"progress":' .. cjson.encode(progress) .. '}'
