-- idle: a function of the library only (read-only, for FCALL_RO; not a script): for a
-- replica of another admitd version deciding whether this library is still in use
-- (libraries.py), seconds since an operation of it last ran (begin's now outlives the
-- call), at ARGV[1] ("" for Redis TIME), or nil when none has run since Redis loaded it.
-- Written here rather than as a local of the library: a script's chunk may have at most
-- 200 locals, and the library with an operation's code is near that.
if now == nil then return false end
local at = tonumber(ARGV[1]) or tonumber(redis.call('TIME')[1])
return tostring(at - now)
