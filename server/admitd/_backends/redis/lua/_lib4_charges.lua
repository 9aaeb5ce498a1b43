-- Library part 4 of 8 (see _lib1_base.lua): the cost ledger, and what a Release charges
-- (before the leases, which charge as they end). Its twins are Ledger in
-- _backends/memory/leases.py and _usage.Prices.of.

-- The cost ledger: per UTC day a hash of "<len>/<tenant><pool>|<metric>" counters, metric
-- calls, in, out, usd, cr (cached input) and cw (cache-write input); u is a usage array
-- (U_*), the cached counts being parts of the input. calls: 1 for a settled lease, 0 for
-- usage reported after the call (charge.lua) or a correction (settle_expired). on_day: the
-- ledger's day (default today). A row's field names are made once per tenant and pool (at
-- most 1,000 rows, then it starts over): the length of a name formatted and six
-- concatenations, and a closure, on every Release cost more than its commands' arguments.
local rows, row_count = {}, 0
local function ledger_row(tenant, pool)
  local by = rows[tenant]
  local r = by and by[pool]
  if not r then
    if row_count >= 1000 then rows, row_count = {}, 0 end
    by = rows[tenant]
    if not by then
      by = {}
      rows[tenant] = by
    end
    local f = string.len(tenant) .. '/' .. tenant .. pool .. '|'
    r = {calls = f .. 'calls', input = f .. 'in', output = f .. 'out', usd = f .. 'usd',
         cached = f .. 'cr', written = f .. 'cw'}
    by[pool] = r
    row_count = row_count + 1
  end
  return r
end
local function charge(t, u, usd, calls, on_day)
  local k = key_of('ledger', on_day or day)
  local r = ledger_row(t[T.tenant], t[T.pool])
  -- A day's hash is kept LEDGER_KEEP from when its row (and so maybe the hash) was made:
  -- calls is written first, and answers its increment when new (or 0 before: kept anew).
  if redis.call('HINCRBY', k, r.calls, calls or '1') == (calls or 1) then
    redis.call('EXPIRE', k, LEDGER_KEEP)
  end
  -- %d: HINCRBY wants an integer, and Lua would write -0 (a free call's price) or 1e+15.
  local n = u[U_INPUT_TOKENS]
  if n ~= 0 then redis.call('HINCRBY', k, r.input, string.format('%d', n)) end
  n = u[U_OUTPUT_TOKENS]
  if n ~= 0 then redis.call('HINCRBY', k, r.output, string.format('%d', n)) end
  if usd ~= 0 then redis.call('HINCRBY', k, r.usd, string.format('%d', usd)) end
  n = u[U_CACHED_INPUT_TOKENS]
  if n ~= 0 then redis.call('HINCRBY', k, r.cached, string.format('%d', n)) end
  n = u[U_CACHE_WRITE_INPUT_TOKENS]
  if n ~= 0 then redis.call('HINCRBY', k, r.written, string.format('%d', n)) end
end

-- What a release charges: the reported usage array (U_*) as it is, or by the rule for none
-- (UNREPORTED_*): usage and its nano-USD. The arithmetic of _usage.Prices.of, in its order:
-- rounded up, with a tolerance for float noise.
local function settle_usage(t, reported)
  local u
  if type(reported) == 'table' then
    u = reported
  elseif reported == UNREPORTED_RESERVATION then
    return {t[T.input_tokens], t[T.max_output_tokens], 0, 0}, t[T.nano_usd]
  elseif reported == UNREPORTED_INPUT then
    u = {t[T.input_tokens], 0, 0, 0}
  else
    u = {0, 0, 0, 0}
  end
  local cached, written = u[U_CACHED_INPUT_TOKENS], u[U_CACHE_WRITE_INPUT_TOKENS]
  local uncached = u[U_INPUT_TOKENS] - cached - written
  local usd = math.ceil(uncached * t[T.price_in] + cached * t[T.price_cached]
                        + written * t[T.price_write] + u[U_OUTPUT_TOKENS] * t[T.price_out]
                        - PRICE_SLACK)
  return u, usd
end
