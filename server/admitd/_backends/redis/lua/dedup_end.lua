-- dedup_end: how a dedup leader's call ended, if it did in the last minute.
-- ARGV[3] the leader's lease id. Returns {leader, result?} or {}.
local e = redis.call('GET', key(DEDUP_END, ARGV[3]))
return e or '{}'
