-- configure: replace the definitions of every configured limit (capacity and rate by key).
-- ARGV[3] JSON list of limits. Returns {count}.
local limits = cjson.decode(ARGV[3])
redis.call('DEL', key('limits'))
for _, l in ipairs(limits) do
  -- The capacity and rate as sent (cjson.encode would round them to 14 digits).
  redis.call('HSET', key('limits'), l[1], '[' .. num(l[5]) .. ',' .. num(l[6]) .. ']')
end
return cjson.encode({count = #limits})
