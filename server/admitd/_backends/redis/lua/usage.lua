-- usage: the cost ledger's rows of some UTC days.
-- ARGV[3] JSON list of day numbers (days since 1970-01-01).
-- Returns {rows = [{day, tenant, pool, calls, in, out, usd, cr, cw}]} (cr, cw: cached and
-- cache-write input tokens).
local rows = {}
for _, d in ipairs(cjson.decode(ARGV[3])) do
  local flat = redis.call('HGETALL', key('ledger', tostring(d)))
  local by = {}
  for i = 1, #flat, 2 do
    local f = flat[i]
    local slash = string.find(f, '/', 1, true)
    local n = tonumber(string.sub(f, 1, slash - 1))
    local tenant = string.sub(f, slash + 1, slash + n)
    local rest = string.sub(f, slash + n + 1)
    local bar = string.len(rest) - string.find(string.reverse(rest), '|', 1, true) + 1
    local pool, metric = string.sub(rest, 1, bar - 1), string.sub(rest, bar + 1)
    local row_key = string.len(tenant) .. '/' .. tenant .. pool
    local row = by[row_key]
    if not row then
      row = {day = d, tenant = tenant, pool = pool, calls = 0, ['in'] = 0, out = 0, usd = 0,
             cr = 0, cw = 0}
      by[row_key] = row
      table.insert(rows, row)
    end
    row[metric] = tonumber(flat[i + 1])
  end
end
return cjson.encode({rows = rows})
