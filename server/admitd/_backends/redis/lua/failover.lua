-- failover: record the primary admitd now talks to, and when it is not the one recorded
-- (a replica was promoted, or Redis restarted and may have lost writes) begin learning:
-- for ARGV[5] seconds every gauge counts as full, as leases lost with the old primary may hold
-- any of its slots (_lib3_limits.lua), and every token or USD bucket starts empty, as their
-- reservations may have emptied it. A lease unknown meanwhile answers 'lost' (LOST).
-- Idempotent: the first admitd replica that sees the new primary begins learning, the others
-- find it recorded.
-- ARGV[3] the primary's identity ("<master_replid>/<run_id>" from INFO);
-- ARGV[4] "1" when this admitd talked to another primary before (a store holding no
-- identity then lost its state), else "0"; ARGV[5] the window in seconds (one lease TTL);
-- ARGV[6] "1" to learn, "0" to trust the new primary (only unknown leases answer 'lost').
-- Returns {changed = true | false, learning = seconds (0: none)}.
local known = redis.call('GET', key(PRIMARY))
if known == ARGV[3] then return cjson.encode({changed = false, learning = 0}) end
redis.call('SET', key(PRIMARY), ARGV[3])
if not known and ARGV[4] ~= '1' then -- a new store: nothing was granted before
  return cjson.encode({changed = false, learning = 0})
end
local window = tonumber(ARGV[5])
local keep = 2 * math.ceil(window * 1000) -- garbage collection only: deadlines are values
redis.call('SET', key(LOST), num(now + window), 'PX', keep)
if ARGV[6] ~= '1' then return cjson.encode({changed = true, learning = 0}) end
redis.call('SET', key(LEARN), num(now + window), 'PX', keep)
local flat = redis.call('HGETALL', key('limits'))
for i = 1, #flat, 2 do
  local c = string.sub(flat[i + 1], 1, 1) == '[' and cjson.decode(flat[i + 1]) -- a limit's
  local rate = c and tonumber(c[C_RATE])
  if rate and rate > 0 then -- a bucket: what it has left is unknown, so nothing
    local capacity, k = tonumber(c[C_CAPACITY]), flat[i]
    local v = redis.call('HMGET', LV, k, k .. '|at')
    local level = capacity
    if v[1] then level = math.min(capacity, tonumber(v[1]) + (now - tonumber(v[2])) * rate) end
    redis.call('HSET', LV, k, num(math.min(0, level)), k .. '|at', now_text)
  end
end
return cjson.encode({changed = true, learning = window})
