-- idle: a function of the library only (read-only, for FCALL_RO; not a script): for a
-- replica of another admitd version deciding whether this library is still in use
-- (libraries.py), seconds since an operation of it last ran (begin's now outlives the
-- call), at ARGV[1] ("" for Redis TIME), or nil when none has run since Redis loaded it.
-- Written here rather than as a local of the library, which scripts load too (a function
-- may hold at most 200 locals).
if now == nil then return false end
local at = tonumber(ARGV[1]) or tonumber(redis.call('TIME')[1])
return tostring(at - now)
