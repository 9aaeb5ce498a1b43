-- configure: replace the definitions of every configured limit (capacity, rate and shadow
-- flag by key). ARGV[3] JSON list of limits. Returns {count}.
local limits = cjson.decode(ARGV[3])
redis.call('DEL', key('limits'))
for _, l in ipairs(limits) do
  -- The capacity and rate as sent (cjson.encode would round them to 14 digits).
  local shadow = l[9] and 'true' or 'false'
  redis.call('HSET', key('limits'), l[1], '[' .. num(l[5]) .. ',' .. num(l[6]) .. ',' .. shadow .. ']')
end
return cjson.encode({count = #limits})
