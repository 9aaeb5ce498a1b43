-- charge: count usage nobody reserved, for a call that already happened (a gateway reporting
-- after the call, e.g. Envoy's rate limit requests at the end of a stream): each of the
-- ticket's limits moves as a settled lease's overuse would (buckets into debt if need be,
-- daily quotas up), and the ledger gets the tokens and price but no call. Nothing is
-- checked or refused, and no capacity is freed, so nothing is dispatched.
-- ARGV[3] ticket JSON (the engine leaves only its token and USD limits in it);
-- ARGV[4] usage JSON [input, output].
-- Returns {}.
reap()
local t = cjson.decode(ARGV[3])
local usage = cjson.decode(ARGV[4])
-- The arithmetic of _model.price_nano_usd: up, with a tolerance for float noise.
local usd = math.ceil(usage[1] * t[T.price_in] + usage[2] * t[T.price_out] - PRICE_SLACK)
move_limits(t, day, usage[1] + usage[2], usd)
charge(t, usage[1], usage[2], usd, 0)
return cjson.encode({})
