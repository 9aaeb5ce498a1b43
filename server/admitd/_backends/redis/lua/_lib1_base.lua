-- admitd state machine shared by every script: each operation's .lua file is loaded with this
-- library in front of it, its five parts _lib1_base.lua .. _lib5_queue.lua in order (see
-- backend.py). It mirrors _backends/memory/ (backend.py, counters.py); the two are kept equal by the
-- conformance suite, which runs every scenario against both backends.
--
-- KEYS[1]  namespace base "{prefix}". Every key is KEYS[1] .. ":" .. name: they all share the
--          hash tag, so they live in one Redis Cluster slot with KEYS[1].
-- ARGV[1]  time in Unix seconds to use, or "" to read Redis TIME (tests pass their clock)
-- ARGV[2]  queue aging in seconds (a waiter climbs one priority class per this much waiting)
-- ARGV[3..] the operation's own arguments (see its header)
-- Returns  a JSON document (cjson), decoded by codec.py.
--
-- A ticket (JSON from the engine; stored as sent, because cjson.encode keeps only 14
-- significant digits and would round refill rates and prices) has: id tenant pool in out usd
-- pin pout prio cost ttl wait claim def idem fp mqt mqa limits, where each limit is [key,
-- kind, unit, scope, capacity, rate, name, owner, shadow] with kind gauge|bucket|daily and
-- unit slot|request|token|nano_usd; def is true for a deferred ticket (Enqueue); a shadow
-- limit is checked and counted but never refuses.

local base = KEYS[1]
local function key(...)
  return base .. ':' .. table.concat({...}, ':')
end

local now
if ARGV[1] ~= '' then
  now = tonumber(ARGV[1])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local aging = tonumber(ARGV[2])
local day = tostring(math.floor(now / 86400))
local LEDGER_KEEP = 400 * 86400 -- = _model.LEDGER_DAYS, in seconds
local MAX_EXAMINED = 1024
local MAX_EXACT_POSITION = 100 -- = _model.MAX_EXACT_POSITION
local RATE_WINDOW = 30 -- = _model.RATE_WINDOW
local DAY_KEEP = 172800
local MAX_PAUSE = 600 -- = _model.MAX_PAUSE
local DEDUP_KEEP = 60 -- = _model.DEDUP_KEEP
local G, B, D = key('gauge'), key('bucket'), key('daily', day)

local function num(x)
  return string.format('%.17g', x)
end

local function amount(t, unit)
  if unit == 'token' then return t['in'] + t.out end
  if unit == 'nano_usd' then return t.usd end
  return 1
end
