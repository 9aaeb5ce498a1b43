-- charge: count usage nobody reserved, for a call that already happened (a gateway reporting
-- after the call, e.g. Envoy's rate limit requests at the end of a stream): each of the
-- ticket's limits moves as a settled lease's overuse would (buckets into debt if need be,
-- daily quotas up), and the ledger gets the tokens and price but no call. Nothing is
-- checked or refused, and no capacity is freed, so nothing is dispatched.
-- ARGV[3] ticket JSON (the engine leaves only its token and USD limits in it);
-- ARGV[4] the usage, a JSON array (U_*).
-- Returns {}.
reap()
local t = decode_ticket(ARGV[3])
local used, usd = settle_usage(t, cjson.decode(ARGV[4]))
move_limits(t, day, used[U_INPUT_TOKENS] + used[U_OUTPUT_TOKENS], usd)
charge(t, used, usd, 0)
return cjson.encode({})
