-- Library part 8 of 8 (see _lib1_base.lua): what every call starts from. A script calls
-- begin(KEYS, ARGV) after the library (the loader writes the call), a function of the
-- library loaded once (scripts.function_library) as its first step: its state from an
-- earlier call is forgotten here.
local MICRO_DIGITS = 6 -- TIME's microseconds, padded with MICROS to six digits
local MICROS = '00000'
local day_number, day_text, aging_text -- kept from call to call by the function library
local function begin(keys, argv)
  base = keys[1]
  rebase()
  -- now_text is a decimal that reads back as exactly now: the time given, or TIME's seconds
  -- and microseconds as one decimal (formatting now with num cost a sprintf every call).
  if argv[1] ~= '' then
    now_text = argv[1]
  else
    local t = redis.call('TIME')
    now_text = t[1] .. '.' .. string.sub(MICROS .. t[2], -MICRO_DIGITS)
  end
  now = number(now_text) -- kept: a bucket's time and a lease's grant are written as now_text
  if argv[2] ~= aging_text then aging_text, aging = argv[2], tonumber(argv[2]) end -- parsed once
  local d = math.floor(now / DAY_SECONDS)
  if d ~= day_number then day_number, day_text = d, tostring(d) end -- formatted once a day
  day = day_text
  LV, D = key('level'), key_of(KIND_DAILY, day)
  gate_cache, head_cache, gate_def_cache = {}, {}, {}
  configured, version = nil, nil
  current_cache = {}
  level_cache, bucket_at, n_set, n_drop = {}, {}, 0, 0
  learn_until, learning = nil, nil
  FINISHED = {}
  server_now, replica_dead = nil, {}
end
