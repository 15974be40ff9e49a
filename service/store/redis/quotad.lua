#!lua name=quotad
-- quotad's decisions as Redis 7 functions: each decision is one atomic call, timed by Redis's
-- own clock (TIME), on keys of one credential (one hash slot: the caller puts the credential in
-- a {hash tag}). The counter semantics follow service/core/limits.cc (Counter::Fits, Charge,
-- Refund, Free, MoveExpiry); differences are named where they occur.
--
-- Times are integer microseconds since the Unix epoch (Redis TIME's resolution; Lua numbers are
-- doubles, exact up to 2^53, which nanoseconds since 1970 would pass).
--
-- Counters (ARGV, after the call's own arguments; one key per counter in KEYS, same order):
--   kind cap a b nwin [start end]*nwin
--   cal   calendar window: a = guard; the windows [start, end) the caller computed in the
--         limit's zone around its own clock (e.g. previous, current, next)
--   unl   unlimited: like cal (one window [0, INF) when it has no unit), never denies
--   roll  rolling from first use: a = period, b = guard
--   slide sliding exact: a = span (period + guard)
--   tb    token bucket (GCRA): a = emission interval (period / rate, rounded up), cap = burst
--   conc  concurrency: cap slots held by live leases
-- Keys (hashes): cal/unl/roll {s, e, u, c}: window start, end, used, carried (charged within
-- the guard, counts in the next window too); slide: a ring {h, t, u, a<i>, n<i>} of charges
-- (time, units), oldest at h; tb {tat}; conc: {u, x, L<lease>} (used, latest expiry, units per
-- lease) and a second key, the leases by expiry (a sorted set). A lease (KEYS[1]) is a string
-- "exp at cost t1 .. tn": t<i> is the token of its charge on counter i, for refunds. Keys expire
-- once they hold nothing.

local VERSION = 1
local INF = 9007199254740991 -- 2^53 - 1: never

local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

local function num(v, default)
  if v then return tonumber(v) end
  return default
end

-- Keeps a key until `at_us` (plus a second), or for ever.
local function expire_at(key, at_us)
  if at_us >= INF then
    redis.call('PERSIST', key)
  else
    redis.call('PEXPIREAT', key, math.floor(at_us / 1000) + 1000)
  end
end

local function parse_counters(keys, kbase, args, i, n)
  local cs = {}
  local kn = kbase
  for k = 1, n do
    kn = kn + 1
    local c = {key = keys[kn], kind = args[i], cap = tonumber(args[i + 1]),
               a = tonumber(args[i + 2]), b = tonumber(args[i + 3]), windows = {}}
    local nw = tonumber(args[i + 4])
    i = i + 5
    for w = 1, nw do
      c.windows[w] = {tonumber(args[i]), tonumber(args[i + 1])}
      i = i + 2
    end
    if c.kind == 'unl' then c.cap = INF end
    if c.kind == 'conc' then -- its second key: the leases by expiry
      kn = kn + 1
      c.zkey = keys[kn]
    end
    cs[k] = c
  end
  return cs, i
end

---------------------------------------------------------------------------------------------
-- Windows: cal, unl, roll.

local function window_load(c)
  local v = redis.call('HMGET', c.key, 's', 'e', 'u', 'c')
  c.s, c.e, c.u, c.c = num(v[1], -INF), num(v[2], -INF), num(v[3], 0), num(v[4], 0)
  c.e0, c.c0 = c.e, c.c -- the key's expiry follows these only
end

-- Counter::Roll. False when no window the caller gave contains `now` (calendar only).
local function window_roll(c, now)
  if now < c.e then return true end
  if c.kind == 'roll' then
    -- Closed: the next charge opens a new window. Units charged within the old window's guard
    -- count in it while the upstream's window they may have opened can last.
    local carried = c.c > 0 and now < c.e + c.a
    c.u = carried and c.c or 0
    return true
  end
  for _, w in ipairs(c.windows) do
    if w[1] <= now and now < w[2] then
      local is_next = w[1] == c.e -- the guard's charges count here
      c.u = is_next and c.c or 0
      c.c = 0
      c.s, c.e = w[1], w[2]
      c.dirty = true
      return true
    end
  end
  return false
end

local function window_guard(c)
  if c.kind == 'roll' then return c.b end
  return c.a
end

local function window_fits(c, now, cost)
  if c.kind == 'unl' then return true end
  local guard = window_guard(c)
  if c.u + cost <= c.cap then
    local in_guard = guard > 0 and now < c.e and now >= c.e - guard
    if not in_guard or c.c + cost <= c.cap then return true end
  end
  if cost > c.cap then return false, INF end
  -- limits.cc answers end_ns_ for a closed rolling window too (a time already past); the units
  -- it carried leave at end + period.
  if c.kind == 'roll' and now >= c.e then return false, c.e + c.a end
  return false, c.e
end

local function window_charge(c, now, cost)
  local guard = window_guard(c)
  if c.kind == 'roll' and now >= c.e then -- opens a new window, with what the roll carried
    c.s, c.e, c.c = now, now + c.a + c.b, 0
  end
  c.u = c.u + cost
  if guard > 0 and now >= c.e - guard then c.c = c.c + cost end
  c.dirty = true
  return c.s
end

-- When every unit counted now has left (Counter::DrainedAt).
local function window_drained(c)
  if c.c > 0 then
    if c.kind == 'roll' then return c.e + c.a end
    for _, w in ipairs(c.windows) do
      if w[1] == c.e then return w[2] end
    end
    return INF -- the next window is unknown: keep the key
  end
  return c.e
end

local function window_save(c)
  if not c.dirty then return end
  redis.call('HSET', c.key, 's', c.s, 'e', c.e, 'u', c.u, 'c', c.c)
  if c.e ~= c.e0 or (c.c > 0) ~= (c.c0 > 0) then expire_at(c.key, window_drained(c)) end
end

-- Counter::Refund for windows: only units of the window still open that they were charged in.
local function window_refund(c, now, token, units)
  if now >= c.e or token ~= c.s then return 0 end
  local take = math.min(units, math.max(c.u, 0))
  c.u = c.u - take
  c.dirty = take > 0
  return take
end

---------------------------------------------------------------------------------------------
-- Sliding exact: a ring of (time, units), oldest first.

local function slide_entry(c, i)
  local e = c.ent[i]
  if e == nil then
    local v = redis.call('HMGET', c.key, 'a' .. i, 'n' .. i)
    e = {tonumber(v[1]), tonumber(v[2])}
    c.ent[i] = e
  end
  return e
end

local function slide_load(c, now)
  local v = redis.call('HMGET', c.key, 'h', 't', 'u')
  c.h, c.t, c.u = num(v[1], 0), num(v[2], 0), num(v[3], 0)
  c.ent, c.gone = {}, {}
  while c.h < c.t do
    local e = slide_entry(c, c.h)
    if e[1] + c.a > now then break end
    c.u = c.u - e[2]
    c.gone[#c.gone + 1] = c.h
    c.h = c.h + 1
  end
  return true
end

local function slide_fits(c, now, cost)
  if c.u + cost <= c.cap then return true end
  if cost > c.cap then return false, INF end
  local need, freed = c.u + cost - c.cap, 0
  for i = c.h, c.t - 1 do
    local e = slide_entry(c, i)
    freed = freed + e[2]
    if freed >= need then return false, e[1] + c.a end
  end
  return false, INF
end

local function slide_charge(c, now, cost)
  c.u = c.u + cost
  c.dirty = true
  if c.t > c.h then
    local last = slide_entry(c, c.t - 1)
    if last[1] >= now then -- same instant (or Redis's clock stepped back): merge
      last[2] = last[2] + cost
      c.touched = c.t - 1
      return last[1]
    end
  end
  c.ent[c.t] = {now, cost}
  c.touched = c.t
  c.t = c.t + 1
  return now
end

local function slide_save(c)
  if not c.dirty then return end
  for _, i in ipairs(c.gone) do redis.call('HDEL', c.key, 'a' .. i, 'n' .. i) end
  redis.call('HSET', c.key, 'h', c.h, 't', c.t, 'u', c.u)
  if c.touched then
    local e = c.ent[c.touched]
    redis.call('HSET', c.key, 'a' .. c.touched, e[1], 'n' .. c.touched, e[2])
  end
  if c.h < c.t then expire_at(c.key, slide_entry(c, c.t - 1)[1] + c.a) end
end

local function slide_refund(c, now, token, units)
  -- Entries are in time order: binary search for the charge's instant.
  local lo, hi = c.h, c.t
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if slide_entry(c, mid)[1] < token then lo = mid + 1 else hi = mid end
  end
  if lo == c.t or slide_entry(c, lo)[1] ~= token then return 0 end
  local e = slide_entry(c, lo)
  local take = math.min(units, e[2])
  e[2] = e[2] - take
  c.u = c.u - take
  c.touched, c.dirty = lo, true
  return take
end

---------------------------------------------------------------------------------------------
-- Token bucket (GCRA): tat is the theoretical arrival time.

local function tb_load(c)
  c.tat = num(redis.call('HGET', c.key, 'tat'), -INF)
  return true
end

local function tb_fits(c, now, cost)
  local tat = math.max(c.tat, now) + cost * c.a
  local allowed_at = tat - c.cap * c.a
  if allowed_at <= now then return true end
  if cost > c.cap then return false, INF end
  return false, allowed_at
end

local function tb_charge(c, now, cost)
  c.tat = math.max(c.tat, now) + cost * c.a
  c.dirty = true
  return c.tat -- the charge's units are the last `cost` emission intervals before it
end

local function tb_save(c)
  if not c.dirty then return end
  redis.call('HSET', c.key, 'tat', c.tat)
  expire_at(c.key, c.tat)
end

local function tb_refund(c, now, token, charged, units)
  -- Only the part of the charge's intervals still ahead of now is outstanding.
  local own_start = math.max(now, token - charged * c.a)
  if token <= own_start or c.tat <= now then return 0 end
  local take = math.min(units, math.floor((token - own_start) / c.a),
                        math.floor((c.tat - now) / c.a))
  c.tat = c.tat - take * c.a
  c.dirty = take > 0
  return take
end

---------------------------------------------------------------------------------------------
-- Concurrency: slots held by leases until their expiry. Two keys: a hash {u, x, L<lease>} (used,
-- latest expiry, units per lease) and a sorted set of leases by expiry, so that dropping the
-- expired ones costs O(log n) per call plus the ones dropped.

local function conc_load(c, now)
  local v = redis.call('HMGET', c.key, 'u', 'x')
  c.u, c.x = num(v[1], 0), num(v[2], -INF)
  c.gone, c.set, c.moved = {}, {}, {}
  local expired = redis.call('ZRANGEBYSCORE', c.zkey, '-inf', now)
  if #expired > 0 then
    local fields = {}
    for i, lease in ipairs(expired) do fields[i] = 'L' .. lease end
    local units = redis.call('HMGET', c.key, unpack(fields))
    for i, lease in ipairs(expired) do
      c.u = c.u - num(units[i], 0)
      c.gone[#c.gone + 1] = lease
    end
    c.dirty = true
  end
  return true
end

local function conc_fits(c, now, cost)
  if c.u + cost <= c.cap then return true end
  if cost > c.cap then return false, INF end
  -- When enough of the earliest-expiring leases will have freed their slots.
  local need, freed, offset = c.u + cost - c.cap, 0, 0
  while true do
    local page = redis.call('ZRANGEBYSCORE', c.zkey, '(' .. string.format('%d', now), '+inf',
                            'WITHSCORES', 'LIMIT', offset, 64)
    if #page == 0 then return false, INF end
    local fields = {}
    for i = 1, #page, 2 do fields[#fields + 1] = 'L' .. page[i] end
    local units = redis.call('HMGET', c.key, unpack(fields))
    for i = 1, #page, 2 do
      freed = freed + num(units[(i + 1) / 2], 0)
      if freed >= need then return false, tonumber(page[i + 1]) end
    end
    offset = offset + 64
  end
end

local function conc_charge(c, now, cost, lease, exp)
  local prev = num(redis.call('HGET', c.key, 'L' .. lease), 0)
  c.set[lease] = prev + cost
  c.moved[lease] = exp
  c.u = c.u + cost
  c.x = math.max(c.x, exp)
  c.dirty = true
  return 0
end

-- Counter::Free: the slots of a lease; 0 when it holds none here.
local function conc_free(c, lease)
  local units = num(redis.call('HGET', c.key, 'L' .. lease), 0)
  if units == 0 then return 0 end
  c.gone[#c.gone + 1] = lease
  c.u = c.u - units
  c.dirty = true
  return units
end

-- Counter::MoveExpiry. False if the lease holds no slots here.
local function conc_move(c, lease, exp)
  if redis.call('HEXISTS', c.key, 'L' .. lease) == 0 then return false end
  c.moved[lease] = exp
  c.x = math.max(c.x, exp)
  c.dirty = true
  return true
end

local function conc_save(c)
  if not c.dirty then return end
  if c.u <= 0 and next(c.set) == nil then
    redis.call('DEL', c.key, c.zkey)
    return
  end
  for _, lease in ipairs(c.gone) do
    redis.call('HDEL', c.key, 'L' .. lease)
    redis.call('ZREM', c.zkey, lease)
  end
  for lease, units in pairs(c.set) do redis.call('HSET', c.key, 'L' .. lease, units) end
  for lease, exp in pairs(c.moved) do redis.call('ZADD', c.zkey, exp, lease) end
  redis.call('HSET', c.key, 'u', c.u, 'x', c.x)
  expire_at(c.key, c.x)
  expire_at(c.zkey, c.x)
end

---------------------------------------------------------------------------------------------
-- Dispatch by kind.

local function write_lease(key, rec)
  local parts = {}
  for i, v in ipairs(rec) do parts[i] = string.format('%d', v) end
  redis.call('SET', key, table.concat(parts, ' '), 'PXAT', math.floor(rec[1] / 1000) + 1000)
end

local function is_window(c) return c.kind == 'cal' or c.kind == 'unl' or c.kind == 'roll' end

local function load(c, now)
  if is_window(c) then
    window_load(c)
    return window_roll(c, now)
  elseif c.kind == 'slide' then return slide_load(c, now)
  elseif c.kind == 'tb' then return tb_load(c)
  elseif c.kind == 'conc' then return conc_load(c, now)
  end
  error('quotad: unknown counter kind ' .. tostring(c.kind))
end

local function fits(c, now, cost)
  if is_window(c) then return window_fits(c, now, cost)
  elseif c.kind == 'slide' then return slide_fits(c, now, cost)
  elseif c.kind == 'tb' then return tb_fits(c, now, cost)
  else return conc_fits(c, now, cost)
  end
end

local function charge(c, now, cost, lease, exp)
  if is_window(c) then return window_charge(c, now, cost)
  elseif c.kind == 'slide' then return slide_charge(c, now, cost)
  elseif c.kind == 'tb' then return tb_charge(c, now, cost)
  else return conc_charge(c, now, cost, lease, exp)
  end
end

local function save(c)
  if is_window(c) then window_save(c)
  elseif c.kind == 'slide' then slide_save(c)
  elseif c.kind == 'tb' then tb_save(c)
  else conc_save(c)
  end
end

---------------------------------------------------------------------------------------------
-- The functions.

-- FCALL quotad_acquire 1+n lease c1..cn  cost lease_id ttl_us n counters...
-- Charges `cost` on every counter, or on none. Answers
--   {1, now, lease_expiry}                 granted; the lease records each charge's token
--   {0, now, retry_at or -1, counter}      denied: counter (1-based) is the one that frees
--                                          last; retry_at is when all would fit (-1: never)
--   {-1, now, counter}                     no calendar window given contains Redis's time:
--                                          compute them around `now` and call again
local function acquire(keys, args)
  local cost, lease, ttl, n = tonumber(args[1]), args[2], tonumber(args[3]), tonumber(args[4])
  local cs = parse_counters(keys, 1, args, 5, n)
  local now = now_us()
  for k, c in ipairs(cs) do
    if not load(c, now) then return {-1, now, k} end
  end
  local retry, limiting = -INF, 0
  for k, c in ipairs(cs) do
    local ok, at = fits(c, now, cost)
    if not ok and at > retry then retry, limiting = at, k end
  end
  -- A denial writes nothing: what load() rolled is recomputed the same way next time.
  if limiting > 0 then
    if retry >= INF then retry = -1 end
    return {0, now, retry, limiting}
  end
  local exp = now + ttl
  local lease_rec = {exp, now, cost}
  for k, c in ipairs(cs) do
    lease_rec[k + 3] = charge(c, now, cost, lease, exp)
    save(c)
  end
  write_lease(keys[1], lease_rec)
  return {1, now, exp}
end

-- Reads a live lease as {exp, at, cost, t1, .., tn}, or nil.
local function live_lease(key, now)
  local v = redis.call('GET', key)
  if not v then return nil end
  local l = {}
  for f in string.gmatch(v, '%S+') do l[#l + 1] = tonumber(f) end
  if l[1] <= now then return nil end
  return l
end

-- FCALL quotad_release 1+n lease c1..cn  used lease_id n counters...
-- Ends a lease (counters: the same as its acquire, in the same order). used >= 0 refunds
-- cost - used on each window limit whose charged window is still open; used < 0 refunds
-- nothing. Frees its concurrency slots. Answers {1, now, freed, refunded_1, ..., refunded_n},
-- or {0, now} when the lease is unknown or expired.
local function release(keys, args)
  local used, lease, n = tonumber(args[1]), args[2], tonumber(args[3])
  local cs = parse_counters(keys, 1, args, 4, n)
  local now = now_us()
  local l = live_lease(keys[1], now)
  if l == nil then return {0, now} end
  local out = {1, now, 0}
  local cost = l[3]
  local units = used >= 0 and math.max(cost - used, 0) or 0
  for k, c in ipairs(cs) do
    local token, got = l[k + 3], 0
    if c.kind == 'conc' then
      conc_load(c, now)
      out[3] = out[3] + conc_free(c, lease)
    elseif units > 0 and token ~= nil then
      if is_window(c) then
        window_load(c)
        got = window_refund(c, now, token, units)
      elseif c.kind == 'slide' then
        slide_load(c, now)
        got = slide_refund(c, now, token, units)
      elseif c.kind == 'tb' then
        tb_load(c)
        got = tb_refund(c, now, token, cost, units)
      end
    end
    out[#out + 1] = got
    save(c)
  end
  redis.call('DEL', keys[1])
  return out
end

-- FCALL quotad_renew 1+n lease c1..cn  ttl_us lease_id n counters...
-- Moves a live lease's expiry to now + ttl, on the lease and on its concurrency counters.
-- Answers {1, now, expiry}, or {0, now} when the lease is unknown or expired.
local function renew(keys, args)
  local ttl, lease, n = tonumber(args[1]), args[2], tonumber(args[3])
  local cs = parse_counters(keys, 1, args, 4, n)
  local now = now_us()
  local l = live_lease(keys[1], now)
  if l == nil then return {0, now} end
  local exp = now + ttl
  for _, c in ipairs(cs) do
    if c.kind == 'conc' then
      conc_load(c, now)
      conc_move(c, lease, exp)
      conc_save(c)
    end
  end
  l[1] = exp
  write_lease(keys[1], l)
  return {1, now, exp}
end

redis.register_function{function_name = 'quotad_version', flags = {'no-writes'},
                        callback = function() return VERSION end}
redis.register_function('quotad_acquire', acquire)
redis.register_function('quotad_release', release)
redis.register_function('quotad_renew', renew)
