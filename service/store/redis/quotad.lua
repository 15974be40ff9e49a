#!lua name=quotad
-- quotad's decisions as Redis 7 functions: each decision is one atomic call, timed by Redis's
-- own clock (TIME), on keys of one credential (one hash slot: the caller puts the credential in
-- a {hash tag}). The counter semantics follow service/core/limits.cc (Counter::Fits, Charge,
-- Refund, Free, MoveExpiry, Adopt); differences are named where they occur.
--
-- Times are integer microseconds since the Unix epoch (Redis TIME's resolution; Lua numbers are
-- doubles, exact up to 2^53, which nanoseconds since 1970 would pass).
--
-- The library is this file (the counters), quotad_buckets.lua (sliding with sub-buckets),
-- quotad_reshape.lua (a counter written under another shape or scoping, converted when read),
-- quotad_queue.lua (the wait queues' helpers), quotad_outside.lua (what Report learns of use
-- outside quotad), quotad_functions.lua (a call's state, the functions) then quotad_batch.lua
-- (several decisions in one call), embedded as one source (embed_lua.cmake).
--
-- Layout (few redis.call per decision: each costs ~1-2 us inside redis-server):
--   q:{cred}:s   one hash per credential: field <counter> = its state packed as doubles
--                (struct.pack), <counter>#<i> = entry i of a sliding log (at, units),
--                <counter>@<lease> = a lease's slots on a concurrency counter, !<feature> = the
--                feature's cooldown, ~x = when the hash expires (set again only when a counter
--                needs it to live longer), ~k:<counter> = the shape its state was written
--                under, ~s:<limit> = its scoping eras (quotad_reshape.lua), ~n<limit> = its
--                scopes in use (max_scopes), ~r = the last reset, ~o = the outside estimates
--                and throttle counts (quotad_outside.lua). A decision reads every counter in
--                one HMGET and writes them back in one HSET.
--   q:{cred}:z:<counter>  concurrency: its leases by expiry (sorted set).
--   q:{cred}:l:<lease>    a lease: exp, at, cost, then (token, aux) per counter; expires at exp.
--   q:{cred}:r:<id>       a request_id's first grant (fingerprint, lease, times), for retries.
--
-- Counters (ARGV, after the call's own arguments): name kind cap a b nwin [start end]*nwin
-- (kind may be followed by ':' and what else defines the state, e.g. cal:hour:UTC; a scoped
-- counter's name is its limit's, then [scope])
--   cal   calendar window: a = guard; the windows [start, end) the caller computed in the
--         limit's zone around its own clock (e.g. previous, current, next)
--   unl   unlimited: like cal (one window [-INF, INF) when it has no unit), never denies
--   roll  rolling from first use: a = period, b = guard
--   slide sliding exact: a = span (period + guard), b = period
--   sb    sliding with sub-buckets: a = bucket width, b = period, one "window" [slots, 0]: the
--         buckets kept (enough to cover the span, as Rule::bucket_slots)
--   tb    token bucket (GCRA): a = emission interval (period / rate, rounded up), cap = burst
--   conc  concurrency: cap slots held by live leases (KEYS holds its sorted set, in order)
-- Every counter may be cooling down (cd: grants nothing before it), after a throttle Report.

local VERSION = 11
local INF = 9007199254740991 -- 2^53 - 1: never

local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

local function pk(fmt, ...) return struct.pack(fmt, ...) end

-- The expiry to set for something that must live until `need`: with as much slack again (so
-- that a counter whose horizon moves with every call sets it once per horizon, not per call).
local function slack(need, now)
  if need >= INF then return INF end
  local base = math.max(need, now)
  return math.min(base + math.max(base - now, 1000000), INF - 1)
end

-- redis.call(cmd, key, list...) a batch of at most `step` (even, default 1000) values at a time:
-- Lua's unpack takes about 8 000 values at most, and a credential may have more counters, a
-- counter more expired leases. Answers the batches' replies one after the other (HMGET's).
local function call_batched(cmd, key, list, step)
  step = step or 1000
  local out = {}
  for i = 1, #list, step do
    local r = redis.call(cmd, key, unpack(list, i, math.min(i + step - 1, #list)))
    if type(r) == 'table' then
      for j = 1, #r do out[#out + 1] = r[j] end
    end
  end
  return out
end

local function expire_at(key, at_us)
  if at_us >= INF then
    redis.call('PERSIST', key)
  else
    redis.call('PEXPIREAT', key, math.floor(at_us / 1000) + 1000)
  end
end

-- Counters from args[i..]; concurrency counters take their sorted set from keys[kz], kz+1, ...
local function parse_counters(keys, kz, args, i, n)
  local cs = {}
  for k = 1, n do
    local c = {name = args[i], kind = args[i + 1], cap = tonumber(args[i + 2]),
               a = tonumber(args[i + 3]), b = tonumber(args[i + 4]), wi = i + 6,
               nw = tonumber(args[i + 5]), args = args}
    -- A kind may carry what else defines its state ("cal:hour:UTC"): part of its shape.
    local colon = string.find(c.kind, ':', 1, true)
    if colon then c.kind, c.sx = string.sub(c.kind, 1, colon - 1), string.sub(c.kind, colon + 1) end
    i = i + 6 + 2 * c.nw
    if c.kind == 'unl' then c.cap = INF end
    if c.kind == 'sb' then c.n = tonumber(args[c.wi]) end
    if c.kind == 'conc' then
      c.zkey = keys[kz]
      kz = kz + 1
    end
    cs[k] = c
  end
  return cs, i
end

---------------------------------------------------------------------------------------------
-- Windows: cal, unl, roll. State: s e u c ad adat cd (start, end, used, carried into the next
-- window by the guard, adopted units refunds never undercut, charges at or before adat give
-- nothing back, cooldown).

local W = {}

function W.load(c, v)
  if v then
    c.s, c.e, c.u, c.c, c.ad, c.adat, c.cd = struct.unpack('ddddddd', v)
  else
    c.s, c.e, c.u, c.c, c.ad, c.adat, c.cd = -INF, -INF, 0, 0, 0, -INF, 0
  end
end

function W.pack(c) return pk('ddddddd', c.s, c.e, c.u, c.c, c.ad, c.adat, c.cd) end

-- Counter::Roll. False when no window the caller gave contains `now` (calendar only).
function W.roll(c, now, args)
  if now < c.e then return true end
  if c.kind == 'roll' then
    -- Closed: the next charge opens a new window. Units charged within the old window's guard
    -- count in it while the upstream's window they may have opened can last.
    c.u = (c.c > 0 and now < c.e + c.a) and c.c or 0
    c.ad = 0
    return true
  end
  for w = c.wi, c.wi + 2 * c.nw - 1, 2 do
    local ws, we = tonumber(args[w]), tonumber(args[w + 1])
    if ws <= now and now < we then
      c.u = ws == c.e and c.c or 0 -- the next window: the guard's charges count here
      c.c, c.ad = 0, 0
      c.s, c.e = ws, we
      c.dirty = true
      return true
    end
  end
  return false
end

local function guard(c)
  if c.kind == 'roll' then return c.b end
  return c.a
end

function W.fits(c, now, cost)
  if c.kind == 'unl' then return true end
  local g = guard(c)
  if c.u + cost <= c.cap then
    local in_guard = g > 0 and now < c.e and now >= c.e - g
    if not in_guard or c.c + cost <= c.cap then return true end
  end
  if cost > c.cap then return false, INF end
  -- limits.cc answers end_ns_ for a closed rolling window too (a time already past); the units
  -- it carried leave at end + period.
  if c.kind == 'roll' and now >= c.e then return false, c.e + c.a end
  return false, c.e
end

function W.charge(c, now, cost)
  if c.kind == 'roll' and now >= c.e then -- opens a new window, with what the roll carried
    c.s, c.e, c.c = now, now + c.a + c.b, 0
  end
  c.u = c.u + cost
  local g = guard(c)
  if g > 0 and now >= c.e - g then c.c = c.c + cost end
  c.dirty = true
  return c.s, 0
end

-- When every unit counted now has left (Counter::DrainedAt).
function W.drained(c, now, args)
  if c.c > 0 then
    if c.kind == 'roll' then return c.e + c.a end
    for w = c.wi, c.wi + 2 * c.nw - 1, 2 do
      if tonumber(args[w]) == c.e then return tonumber(args[w + 1]) end
    end
    return INF -- the next window is unknown: keep the key
  end
  return math.max(c.e, c.cd)
end

-- Counter::Refund for windows: only units of the window still open that they were charged in,
-- never charged before an adoption, never below the adopted count.
function W.refund(c, now, token, aux, charged, units, at)
  if now >= c.e or token ~= c.s or at <= c.adat then return 0 end
  local take = math.min(units, math.max(c.u - c.ad, 0))
  if take <= 0 then return 0 end
  c.u = c.u - take
  c.dirty = true
  return take
end

-- Counter::Adopt: raises the window's used units to `used`, never lowering them; a rolling
-- window opens if closed and ends at `reset` when that is later. Returns before, added.
function W.adopt(c, now, used, reset)
  local before = (c.kind == 'roll' and now >= c.e) and 0 or c.u
  if c.kind == 'roll' then
    if now >= c.e then c.s, c.e, c.c = now, now + c.a + c.b, 0 end
    if reset > c.e then c.e = reset end
  end
  local added = math.max(0, used - c.u)
  c.u = c.u + added
  c.ad = math.max(c.ad, used)
  c.dirty = true
  return before, added
end

-- Counter::View (after roll): used units and when the window ends (INF: no window open).
function W.view(c, now)
  if c.kind == 'roll' then
    if now < c.e then return c.u, c.e end
    return 0, INF
  end
  return c.u, c.e
end

---------------------------------------------------------------------------------------------
-- Sliding exact: a log of (at, units) charges, oldest first, entries h..t-1 in fields
-- <name>#<i>. State: h t u ha hn ta tn dh adat cd g (head and tail entries inline, so that a
-- call reads no entry unless the head expires or a denial looks for its retry time; entries
-- g..h-1 have left the window and are kept one period more, as Log::gone, for Report to compare
-- a slow call's count with; fields below min(g, h) are deleted, in batches).

local S = {}
local BATCH = 16

function S.load(c, v)
  if v and #v >= 88 then
    c.h, c.t, c.u, c.ha, c.hn, c.ta, c.tn, c.dh, c.adat, c.cd, c.g =
        struct.unpack('ddddddddddd', v)
  elseif v then -- written by version 5 or older: nothing kept after leaving the window
    c.h, c.t, c.u, c.ha, c.hn, c.ta, c.tn, c.dh, c.adat, c.cd =
        struct.unpack('dddddddddd', v)
    c.g = c.h
  else
    c.h, c.t, c.u, c.ha, c.hn, c.ta, c.tn, c.dh, c.adat, c.cd = 0, 0, 0, 0, 0, 0, 0, 0, -INF, 0
    c.g = 0
  end
  c.ent = {}
  if c.t > c.h then
    local hd = {c.ha, c.hn}
    c.ent[c.h] = hd
    c.ent[c.t - 1] = c.t - 1 == c.h and hd or {c.ta, c.tn}
  end
end

function S.pack(c)
  if c.t > c.h then
    local hd, tl = c.ent[c.h], c.ent[c.t - 1]
    c.ha, c.hn, c.ta, c.tn = hd[1], hd[2], tl[1], tl[2]
  end
  return pk('ddddddddddd', c.h, c.t, c.u, c.ha, c.hn, c.ta, c.tn, c.dh, c.adat, c.cd, c.g)
end

-- Entry i (h <= i < t), reading it and the next ones in one HMGET when not read yet.
local function entry(c, key, i)
  local e = c.ent[i]
  if e then return e end
  local last = math.min(i + BATCH, c.t) - 1
  local fields = {}
  for j = i, last do fields[#fields + 1] = c.name .. '#' .. j end
  local vs = redis.call('HMGET', key, unpack(fields))
  for j = i, last do
    if not c.ent[j] then
      local v = vs[j - i + 1]
      c.ent[j] = v and {struct.unpack('dd', v)} or {0, 0}
    end
  end
  return c.ent[i]
end

function S.roll(c, now, args, key)
  while c.h < c.t do
    local e = entry(c, key, c.h)
    if e[1] + c.a > now then break end
    c.u = c.u - e[2]
    c.h = c.h + 1
    c.dirty = true
  end
  -- Kept one period after leaving the window (span), as Log::gone.
  while c.g < c.h do
    local e = entry(c, key, c.g)
    if e[1] + c.a + c.b > now then break end
    c.g = c.g + 1
    c.dirty = true
  end
  return true
end

function S.fits(c, now, cost, key)
  if c.u + cost <= c.cap then return true end
  if cost > c.cap then return false, INF end
  local need, freed = c.u + cost - c.cap, 0
  for i = c.h, c.t - 1 do
    local e = entry(c, key, i)
    freed = freed + e[2]
    if freed >= need then return false, e[1] + c.a end
  end
  return false, INF
end

function S.charge(c, now, cost)
  c.u = c.u + cost
  c.dirty = true
  if c.t > c.h then
    local last = c.ent[c.t - 1]
    if last[1] >= now then -- same instant (or Redis's clock stepped back): merge
      last[2] = last[2] + cost
      c.touched = c.t - 1
      return last[1], c.t - 1
    end
  end
  c.ent[c.t] = {now, cost}
  c.touched = c.t
  c.t = c.t + 1
  return now, c.t - 1
end

-- Fields to write and delete for the entries.
function S.flush(c, set, del)
  if c.touched then
    set[#set + 1] = c.name .. '#' .. c.touched
    set[#set + 1] = pk('dd', c.ent[c.touched][1], c.ent[c.touched][2])
  end
  local keep = math.min(c.g, c.h)
  if keep - c.dh >= BATCH or (keep == c.t and keep > c.dh) then
    for i = c.dh, keep - 1 do del[#del + 1] = c.name .. '#' .. i end
    c.dh = keep
  end
end

function S.drained(c)
  if c.t > c.h then return math.max(c.ent[c.t - 1][1] + c.a, c.cd) end
  return c.cd
end

-- `aux` is the charge's entry index: no search.
function S.refund(c, now, token, aux, charged, units, at, key)
  if aux < c.h or aux >= c.t or token <= c.adat then return 0 end
  local e = entry(c, key, aux)
  if e[1] ~= token then return 0 end
  local take = math.min(units, e[2])
  if take <= 0 then return 0 end
  e[2] = e[2] - take
  c.u = c.u - take
  c.touched, c.dirty = aux, true
  return take
end

-- Counter::Adopt for sliding logs: compares with our charges from one period before `sent` (when
-- the upstream counted the request, at most now) up to now, the ones kept after leaving the
-- window included (g..h-1, one period more); counts the difference as charged at `now`, or at
-- reset - period when the upstream resets sooner.
function S.adopt(c, now, used, reset, key, sent)
  local from = math.min(sent, now) - c.b
  local ours = 0
  for i = c.g, c.t - 1 do
    local e = entry(c, key, i)
    if e[1] > from then ours = ours + e[2] end
  end
  if used <= ours then return ours, 0 end
  local extra = used - ours
  local at = now
  if reset > now and reset - c.b < now then at = reset - c.b end
  if c.t > c.h and c.ent[c.t - 1][1] >= at then
    local last = c.ent[c.t - 1]
    last[2] = last[2] + extra
    c.touched = c.t - 1
  else
    c.ent[c.t] = {at, extra}
    c.touched = c.t
    c.t = c.t + 1
  end
  c.u = c.u + extra
  c.adat = now
  c.dirty = true
  return ours, extra
end

-- Counter::View: the units counted now and when the oldest of them leaves (INF: none).
function S.view(c, now, key)
  for i = c.h, c.t - 1 do
    local e = entry(c, key, i)
    if e[2] > 0 then return c.u, e[1] + c.a end
  end
  return c.u, INF
end

---------------------------------------------------------------------------------------------
-- Token bucket (GCRA). State: tat cd (theoretical arrival time, cooldown).

local T = {}

function T.load(c, v)
  if v then c.tat, c.cd = struct.unpack('dd', v) else c.tat, c.cd = -INF, 0 end
end
function T.pack(c) return pk('dd', c.tat, c.cd) end
function T.roll() return true end

function T.fits(c, now, cost)
  local allowed_at = math.max(c.tat, now) + cost * c.a - c.cap * c.a
  if allowed_at <= now then return true end
  if cost > c.cap then return false, INF end
  return false, allowed_at
end

function T.charge(c, now, cost)
  c.tat = math.max(c.tat, now) + cost * c.a
  c.dirty = true
  return c.tat, 0 -- the charge's units are the last `cost` emission intervals before it
end

function T.drained(c) return math.max(c.tat, c.cd) end

-- Counter::View: the intervals still ahead of now, in units, and when the bucket is full again.
function T.view(c, now)
  if c.tat > now then return math.ceil((c.tat - now) / c.a), c.tat end
  return 0, INF
end

function T.refund(c, now, token, aux, charged, units)
  -- Only the part of the charge's intervals still ahead of now is outstanding.
  local own_start = math.max(now, token - charged * c.a)
  if token <= own_start or c.tat <= now then return 0 end
  local take = math.min(units, math.floor((token - own_start) / c.a),
                        math.floor((c.tat - now) / c.a))
  if take <= 0 then return 0 end
  c.tat = c.tat - take * c.a
  c.dirty = true
  return take
end

---------------------------------------------------------------------------------------------
-- Concurrency: slots held by leases until their expiry. State: u x m zx cd (used, latest lease
-- expiry, a lower bound of the earliest, the sorted set's expiry, cooldown); units per lease in
-- <name>@<lease>; the sorted set orders the leases by expiry, so that dropping the expired ones
-- costs nothing until the earliest expires.

local C = {}

function C.load(c, v)
  if v then c.u, c.x, c.m, c.zx, c.cd = struct.unpack('ddddd', v)
  else c.u, c.x, c.m, c.zx, c.cd = 0, -INF, INF, -INF, 0 end
  c.gone, c.set, c.moved = {}, {}, {}
end
function C.pack(c) return pk('ddddd', c.u, c.x, c.m, c.zx, c.cd) end

local function min_score(zkey, after)
  local r = redis.call('ZRANGE', zkey, '(' .. string.format('%d', after), '+inf',
                       'BYSCORE', 'LIMIT', 0, 1, 'WITHSCORES')
  if #r == 0 then return INF end
  return tonumber(r[2])
end

function C.roll(c, now, args, key)
  if now < c.m then return true end
  local expired = redis.call('ZRANGE', c.zkey, '-inf', string.format('%d', now), 'BYSCORE')
  if #expired > 0 then
    local fields = {}
    for i, lease in ipairs(expired) do fields[i] = c.name .. '@' .. lease end
    local units = call_batched('HMGET', key, fields)
    for i, lease in ipairs(expired) do
      c.u = c.u - (tonumber(units[i]) or 0)
      c.gone[#c.gone + 1] = lease
    end
  end
  if now >= c.x then c.u = 0 end -- every lease has expired (even if the set has gone)
  c.m = min_score(c.zkey, now)
  c.dirty = true
  return true
end

function C.fits(c, now, cost)
  if c.u + cost <= c.cap then return true end
  if cost > c.cap then return false, INF end
  -- When enough of the earliest-expiring leases will have freed their slots.
  local need, freed, offset = c.u + cost - c.cap, 0, 0
  while true do
    local page = redis.call('ZRANGE', c.zkey, '(' .. string.format('%d', now), '+inf', 'BYSCORE',
                            'LIMIT', offset, 64, 'WITHSCORES')
    if #page == 0 then return false, INF end
    local fields = {}
    for i = 1, #page, 2 do fields[#fields + 1] = c.name .. '@' .. page[i] end
    local units = redis.call('HMGET', c.key, unpack(fields))
    for i = 1, #page, 2 do
      freed = freed + (tonumber(units[(i + 1) / 2]) or 0)
      if freed >= need then return false, tonumber(page[i + 1]) end
    end
    offset = offset + 64
  end
end

-- The slots `lease` holds (c.held, read with the state; or copied onto this counter by a reload
-- that changed its scoping, see reshape below).
local function held_by(c, lease)
  local units = c.held or 0
  if units == 0 and c.copied then units = c.copied[lease] or 0 end
  return units
end

function C.charge(c, now, cost, lease, exp)
  c.set[lease] = (c.held or 0) + cost
  c.moved[lease] = exp
  c.u = c.u + cost
  c.x = math.max(c.x, exp)
  c.m = math.min(c.m, exp)
  c.dirty = true
  return 0, 0
end

-- Counter::Free: the slots of a lease (c.held, read with the state); 0 when it holds none.
function C.free(c, lease)
  local units = held_by(c, lease)
  if units == 0 then return 0 end
  c.gone[#c.gone + 1] = lease
  c.set[lease], c.moved[lease] = nil, nil -- a copy not written yet
  c.u = c.u - units
  c.dirty = true
  return units
end

-- Counter::MoveExpiry.
function C.move(c, lease, exp)
  if held_by(c, lease) == 0 then return end
  c.moved[lease] = exp
  c.x = math.max(c.x, exp)
  c.m = math.min(c.m, exp)
  c.dirty = true
end

function C.flush(c, set, del, now)
  for _, lease in ipairs(c.gone) do del[#del + 1] = c.name .. '@' .. lease end
  if #c.gone > 0 then call_batched('ZREM', c.zkey, c.gone) end
  for lease, units in pairs(c.set) do
    set[#set + 1] = c.name .. '@' .. lease
    set[#set + 1] = units
  end
  local zadd = nil
  for lease, exp in pairs(c.moved) do
    zadd = zadd or {}
    zadd[#zadd + 1] = string.format('%d', exp)
    zadd[#zadd + 1] = lease
  end
  if zadd then
    call_batched('ZADD', c.zkey, zadd)
    if c.x > c.zx then
      c.zx = slack(c.x, now)
      expire_at(c.zkey, c.zx)
    end
  end
end

function C.drained(c) return math.max(c.x, c.cd) end
-- Counter::View (after roll): held slots and the earliest expiry of a lease holding some.
function C.view(c, now) return c.u, min_score(c.zkey, now) end
function C.refund() return 0 end
