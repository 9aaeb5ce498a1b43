-- admitd state machine shared by every script: each operation's .lua file is loaded with this
-- library in front of it, its eight parts in the order of their names (_lib1_base,
-- _lib2_gates, _lib3_limits, _lib4_charges, _lib4_holders, _lib4_leases, _lib5_queue,
-- _lib6_begin), and in front of those the prologue scripts.py writes from the Python that
-- owns what the scripts share (constants; kinds, units, scopes, outcomes and states; the
-- Redis key names Python reads; gate_limit). A ticket's field is read as t[T.<field>], a
-- limit's as l[L_<FIELD>] and reported usage's as u[U_<FIELD>]: the loader writes each as
-- the JSON key or position Python gives it. Its twin is _backends/memory/ (backend.py and
-- the modules beside it); the conformance suite runs every scenario against both backends.
--
-- KEYS[1]  namespace base "{prefix}". Every key is KEYS[1] .. ":" .. name: they all share the
--          hash tag, so they live in one Redis Cluster slot with KEYS[1].
-- ARGV[1]  time in Unix seconds to use, or "" to read Redis TIME (tests pass their clock)
-- ARGV[2]  queue aging in seconds (a waiter climbs one priority class per this much waiting)
-- ARGV[3..] the operation's own arguments (see its header)
-- Returns  a JSON document (cjson), decoded by codec.py.
--
-- A ticket is JSON from the engine (codec.ticket_json), stored as sent, because
-- cjson.encode keeps only 14 significant digits and would round refill rates and prices;
-- t[T.limits] is a list of limits, each an array read with l[L_KIND] etc.; t[T.deferred] is
-- true for a deferred ticket (Enqueue); a shadow limit is checked and counted but never
-- refuses.

-- What a call starts from is set by begin (_lib6_begin.lua), before the operation's code:
-- the library is also loaded once as a Redis function library (scripts.function_library),
-- whose functions keep it between calls. base is KEYS[1]; now the time to use (now_text, as
-- num writes it, formatted once); aging the queue's aging; day today's UTC day; LV and D
-- the keys of gauges' and buckets' levels (_lib3_limits) and of daily counters.
local base, now, now_text, aging, day, LV, D
-- A key of one name is kept from call to call (for one base: begin calls rebase): a call
-- names the same few ('expiry', 'rate', ...) again and again, and each concatenation makes
-- and hashes a new string. (A table and table.concat per key cost more than one
-- concatenation.) key_of(a, b) keeps a key of two names the same way, for names a
-- deployment has few of (a pool's, a tenant's, a limit's, a day's: never a lease's), at most
-- 1,000 (then it starts over).
local named, named_base, named2, named2_count = {}, nil, {}, 0
local function rebase()
  if base ~= named_base then named, named_base, named2, named2_count = {}, base, {}, 0 end
end
local function key_of(a, b)
  local by = named2[a]
  local k = by and by[b]
  if not k then
    if named2_count >= 1000 then named2, named2_count = {}, 0 end
    by = named2[a]
    if not by then
      by = {}
      named2[a] = by
    end
    k = base .. ':' .. a .. ':' .. b
    by[b] = k
    named2_count = named2_count + 1
  end
  return k
end
local function key(a, b, c)
  if b == nil then
    local k = named[a]
    if not k then
      k = base .. ':' .. a
      named[a] = k
    end
    return k
  end
  if c == nil then return base .. ':' .. a .. ':' .. b end
  return base .. ':' .. a .. ':' .. b .. ':' .. c
end

-- Field names made of a pool's name (its grant rate's, in hash 'rate'; its fair queue's:
-- _lib5_queue fkey and vkey, by class and tenant), made once per pool, kept from call to
-- call (at most 1,000 names, then it starts over): each concatenation makes and hashes a new
-- string, and a length joined to one is formatted with sprintf. adding: how many names the
-- caller is about to add to the pool's (counted against the bound first).
local pool_names, pool_count = {}, 0
local function names(pool, adding)
  if adding then
    if pool_count + adding > 1000 then pool_names, pool_count = {}, 0 end
    pool_count = pool_count + adding
  end
  local p = pool_names[pool]
  if not p then
    if pool_count >= 1000 then pool_names, pool_count = {}, 0 end
    p = {rate_w = pool .. '|w', rate_t = pool .. '|t', rate_c = pool .. '|c',
         length = string.len(pool) .. '|', v = {}, f = {}}
    pool_names[pool] = p
    pool_count = pool_count + 1
  end
  return p
end

-- Seconds, as the strings Redis is sent: a number argument is formatted on every call.
local LEDGER_KEEP = LEDGER_DAYS * DAY_SECONDS .. ''
local DAY_KEEP = 2 * DAY_SECONDS .. '' -- a day's counters outlive it, for leases settled late

-- Numbers Redis sends back, by their text (number(text) is tonumber(text)): most texts a
-- call parses were written shortly before, by num() or as a call's time (a bucket's level
-- and its time, a gauge's typical hold, a lease's grant and expiry), and parsing them, a
-- strtod each, was ~5% of a pair. Exact: num's text reads back as the number it was made
-- from. Kept from call to call in two generations of at most NUMBERS_MAX texts, the older
-- dropped when the newer is full (what was written recently stays). Zero is never kept
-- (-0 and 0 write alike).
local NUMBERS_MAX = 1000
local numbers, numbers_old, numbers_count = {}, {}, 0
local function number(text, x)
  if x == nil then
    x = numbers[text]
    if x ~= nil then return x end
    x = numbers_old[text] or tonumber(text)
    if x == nil then return nil end
  end
  if x ~= 0 then
    if numbers_count >= NUMBERS_MAX then numbers, numbers_old, numbers_count = {}, numbers, 0 end
    numbers[text] = x
    numbers_count = numbers_count + 1
  end
  return x
end

-- A number as Redis is sent it, reading back exactly: %.17g, or for a whole number of up to
-- 15 digits %d, which costs a third as much (formatting a number cost more than a command).
-- Kept by number(), which then reads it back without parsing.
local WHOLE_MAX = 1e15 -- whole numbers below it, in magnitude, have at most 15 digits
local function num(x)
  local text
  if x % 1 == 0 and x > -WHOLE_MAX and x < WHOLE_MAX then
    text = string.format('%d', x)
  else
    text = string.format('%.17g', x)
  end
  number(text, x)
  return text
end

-- Seconds as the whole milliseconds of a PX or PEXPIRE (rounded up), formatted with %d: Lua
-- writes a number it passes with %.14g.
local function ms(seconds)
  return string.format('%d', math.ceil(seconds * 1000))
end

-- Decoded JSON by its text, kept from call to call by the function library (a script's copy
-- starts empty every call): a ticket's limits (the same text for every call of a tenant in
-- a pool), a configured limit, a pool gate's settings. Decoding them was ~15% of a pair's
-- instructions. What this gives is shared between calls: never changed, only read. Keyed by
-- the whole text, so what is decoded is always what the text says.
local SHARED_MAX = 1000 -- texts kept at most (then it starts over): a config's limits and gates
local shared_texts, shared_count = {}, 0
local function shared(text, decoded)
  local v = shared_texts[text]
  if v == nil then
    if shared_count >= SHARED_MAX then shared_texts, shared_count = {}, 0 end
    v = decoded or cjson.decode(text) -- decoded: text's value, when text is not JSON itself
    shared_texts[text] = v
    shared_count = shared_count + 1
  end
  return v
end

-- A ticket from its JSON (codec.ticket_json): the call's own fields decoded, and the rest
-- from TICKET_SHARED on (tenant, pool, prices, ... and limits: the same text for every call
-- of a tenant in a pool) decoded once for all the tickets that carry the same, kept by
-- shared() (the text without its '{' is its key: a JSON text never starts so) as a
-- metatable whose __index the ticket reads those fields from: copying them in cost as much
-- as decoding them (so never iterate a ticket with pairs or encode it whole). Any flat
-- ticket split there reads the same; one written by an older admitd with spaces is decoded
-- whole. Kept from call to call by its text, as shared() keeps what it decodes (and never
-- changed either): a Release decodes the ticket its Acquire did, which then costs a lookup.
-- Each decoded ticket was new memory for Lua's collector to walk and free, the dearest
-- part of its cost.
local TICKETS_MAX = 1000 -- tickets kept at most (then it starts over): ~2.5 MB
local tickets, ticket_count = {}, 0
local function decode_ticket(raw)
  local t = tickets[raw]
  if t then return t end
  local at = string.find(raw, TICKET_SHARED, 1, true)
  if at then
    t = cjson.decode(string.sub(raw, 1, at - 1) .. '}')
    local rest = string.sub(raw, at + 1)
    local s = shared_texts[rest]
    if s == nil then s = shared(rest, {__index = cjson.decode('{' .. rest)}) end
    setmetatable(t, s)
  else
    t = cjson.decode(raw)
  end
  if ticket_count >= TICKETS_MAX then tickets, ticket_count = {}, 0 end
  tickets[raw] = t
  ticket_count = ticket_count + 1
  return t
end

local function amount(t, unit)
  if unit == UNIT_TOKEN then return t[T.input_tokens] + t[T.max_output_tokens] end
  if unit == UNIT_NANO_USD then return t[T.nano_usd] end
  return 1
end
