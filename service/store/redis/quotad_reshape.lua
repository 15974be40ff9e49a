
---------------------------------------------------------------------------------------------
-- Reload that changes a limit's shape (README "Reload that changes a limit's shape"), after
-- quotad.lua's counters. Every replica names a counter from the configuration alone and
-- replicas reload at different moments, so a change of what a counter's state means is found
-- here, atomically, by whichever call next reads the state (load_all).
--
-- Next to each counter's state the hash keeps the shape it was written under:
--   ~k:<counter>  "shape;cap;seen[;units;until;cap]": the shape (kind and what defines its
--                 state: period, unit and zone, emission interval, guard; shape_of) and
--                 capacity as the caller sent them, the scoping era it has taken in (`seen`,
--                 below), and the retired counter, if one still counts. A string compared by
--                 its prefix: a call that converts nothing parses one number.
-- When a call brings another shape for a counter that has state, the old state is decoded with
-- the old shape's code and, as ledger_reload.cc does:
--  * the new counter starts with the units the old one may still count (every unit the new
--    shape would still count, had it been charged at its latest possible time, and every unit
--    the old shape counts now; a bucket's refilled burst too unless the new bucket refills no
--    slower), charged now;
--  * the old counter is kept as a retired one (units, until, cap), checked and charged
--    alongside the new one until its units leave: the window in force at the reload never
--    grants more than the stricter of the old and the new configuration.
-- A state that cannot be decoded (an unknown shape, a layout of another size, or an old
-- concurrency counter's sorted set not readable here: it is not among the call's keys, and on a
-- Cluster slot being migrated it may have moved) denies until the hash expires (~x: when the code that wrote it said every counter had drained); it never reads
-- as empty, nor fails the call.
--
-- Scoping (the name changes: f.x <-> f.x[scope]):
--   ~s:<limit>    "ts;tu": when the latest scoped era began (a scoped counter of the
--                 limit wrote after the unscoped one), and the latest unscoped era.
-- A scoped counter seen for the first time, or one that has not taken in the latest unscoped
-- era (seen < tu), starts with the unscoped counter's units (as the embedded ledger's
-- scope_seeds); an unscoped one that has not taken in the latest scoped era (seen < ts) with
-- the sum of the scoped counters'. Concurrency counters copy the live leases instead (their
-- slots count on the new counter until freed, moved or expired: C.free, C.move). Replicas on
-- both sides of a reload at once make every call start a new era: units may count twice
-- (over-denial), never less.

local RK = {cal = W, unl = W, roll = W, slide = S, sb = B, tb = T, conc = C}
local META, SIDE = '~k:', '~s:'

local function fmt(n) return string.format('%d', n) end

-- What defines a counter's state (not its capacity, nor a bucket's burst): its arguments as the
-- caller sent them (parse_counters), and its capacity's.
local function shape_of(c)
  if c.kind == 'conc' then return 'conc', c.args[c.wi - 4] end
  local i = c.wi - 6
  return c.args[i + 1] .. '|' .. c.args[i + 3] .. '|' .. c.args[i + 4], c.args[i + 2]
end

-- True when `v` has the size of `kind`'s packed state.
local function layout_ok(kind, v)
  local n = #v
  if kind == 'cal' or kind == 'unl' or kind == 'roll' then return n == 56 end
  if kind == 'slide' then return n == 80 or n == 88 end
  if kind == 'tb' then return n == 16 end
  if kind == 'sb' then return n >= 41 and (n - 41) % 16 == 0 and string.sub(v, 1, 1) == 'B' end
  if kind == 'conc' then return n == 40 end
  return false
end

local function unescape(field)
  return (string.gsub(field, '%%(%x%x)', function(h) return string.char(tonumber(h, 16)) end))
end

-- A counter of field `name` as written under `shape`, to decode its state with its own code;
-- nil for a shape this library does not know.
local function old_counter(shape, name, cap, key)
  cap = tonumber(cap) or 0
  local k, a, b = 'conc', '0', '0'
  if shape ~= 'conc' then k, a, b = string.match(shape, '^([^|]*)|([^|]*)|([^|]*)$') end
  if not k then return nil end
  local kind = string.match(k, '^[^:]*')
  if not RK[kind] or not tonumber(a) or not tonumber(b) then return nil end
  local o = {name = name, kind = kind, cap = cap, a = tonumber(a), b = tonumber(b), key = key,
             wi = 1, nw = 0, args = {}}
  if kind == 'unl' then o.cap = INF end
  -- the state key q:{cred}:s, the sorted set q:{cred}:z:<counter> (unescaped)
  if kind == 'conc' then o.zkey = string.sub(key, 1, -2) .. 'z:' .. unescape(name) end
  return o
end

-- How long after a charge `c`'s shape may still count it (as of now).
local function horizon(c, now)
  if c.kind == 'roll' then return c.a + c.b end
  if c.kind == 'slide' then return c.a end
  if c.kind == 'sb' then return c.n * c.a end -- every bucket it keeps
  if c.kind == 'tb' then return c.cap * c.a end
  if c.kind == 'cal' or c.kind == 'unl' then
    for w = c.wi, c.wi + 2 * c.nw - 1, 2 do
      local ws, we = tonumber(c.args[w]), tonumber(c.args[w + 1])
      if ws <= now and now < we then return now - ws end
    end
  end
  return 0
end

-- What state `v` of old counter `o` stands for under c's shape: the units c must count (as if
-- charged now), the retired counter {u, at, cap} (nil: none) and o decoded; nil when `v` does
-- not have o's layout. `rescoped`: c is the other scoping of o's limit.
local function carry(c, o, v, now, key, rescoped)
  if not layout_ok(o.kind, v) then return nil end
  RK[o.kind].load(o, v)
  local h = horizon(c, now)
  local units, ret = 0, nil
  if o.kind == 'slide' then
    S.roll(o, now, nil, key)
    for i = o.g, o.t - 1 do
      local e = entry(o, key, i)
      if i >= o.h or e[1] + h > now then units = units + e[2] end
    end
    if o.u > 0 then ret = {u = o.u, at = S.drained(o)} end
  elseif o.kind == 'sb' then
    -- A bucket's charges were made by its end e at the latest: counted while the old period
    -- may still hold them (the old guard is not in its shape: a bucket of it is not kept), or
    -- the new shape would count them if made at e.
    local left, at = 0, -INF
    for j = 1, #o.idx do
      local e = math.min((o.idx[j] + 1) * o.a, now)
      if e + o.b > now then
        left, at = left + o.cnt[j], math.max(at, e + o.b)
      end
      if e + o.b > now or e + h > now then units = units + o.cnt[j] end
    end
    if left > 0 then ret = {u = left, at = at} end
  elseif o.kind == 'tb' then
    local out = o.tat > now and math.ceil((o.tat - now) / o.a) or 0
    units = out
    -- What refilled may still count, except under a bucket that refills no slower.
    if not (c.kind == 'tb' and c.a <= o.a and not rescoped) and o.tat > now - h then
      units = units + o.cap
    end
    if out > 0 then ret = {u = out, at = o.tat} end
  elseif o.kind == 'conc' then
    C.roll(o, now, nil, key)
    units = math.max(o.u, 0)
    if o.u > 0 then ret = {u = o.u, at = o.x} end
  else -- windows: their units were charged in [s, e), at min(e, now) at the latest
    if now < o.e or math.min(o.e, now) + h > now then units = math.max(o.u, 0) end
    if o.kind ~= 'unl' and now < o.e and o.u > 0 then ret = {u = o.u, at = o.e} end
  end
  if ret then ret.cap = o.cap end
  if c.kind == 'conc' then units = 0 end -- a window's units are no slots
  if c.kind == 'tb' then units = math.min(units, c.cap) end
  return units, ret, o
end

-- Counts `units` on c as charged now. False when no window given contains now (the call
-- answers -1 before writing, except release: see keep_v).
local function seed(c, units, now, key)
  if units <= 0 or c.kind == 'conc' then return true end
  if not c.K.roll(c, now, c.args, key) then return false end
  c.K.charge(c, now, units)
  c.dirty = true
  return true
end

local function merge(a, b)
  if not a then return b end
  if not b then return a end
  return {u = math.max(a.u, b.u), at = math.max(a.at, b.at), cap = math.min(a.cap, b.cap)}
end

-- A ~k: field: {shape, cap (as sent), seen, ru, rat, rcap}. With `shape` and `caps` (a counter's
-- own), the usual case (a field that starts with them, no retired counter) parses `seen` only.
local function unpack_meta(m, shape, caps)
  if not m then return nil end
  if shape then
    local head = shape .. ';' .. caps .. ';'
    if string.sub(m, 1, #head) == head and not string.find(m, ';', #head + 1, true) then
      return {shape = shape, cap = caps, seen = tonumber(string.sub(m, #head + 1)) or 0}
    end
  end
  local f = {}
  for part in string.gmatch(m .. ';', '([^;]*);') do f[#f + 1] = part end
  return {shape = f[1], cap = f[2], seen = tonumber(f[3]) or 0, ru = tonumber(f[4]),
          rat = tonumber(f[5]), rcap = tonumber(f[6])}
end

local function pack_meta(c, r, now)
  local m = c.shape .. ';' .. c.caps .. ';' .. fmt(c.seen)
  if r and r.at > now then m = m .. ';' .. fmt(r.u) .. ';' .. fmt(r.at) .. ';' .. fmt(r.cap) end
  return m
end

-- Copies onto concurrency counter c the live leases of counter field `from` (sorted set zkey)
-- that c does not hold yet.
local function copy_leases(c, from, zkey, key, now)
  local r = redis.call('ZRANGE', zkey, '(' .. fmt(now), '+inf', 'BYSCORE', 'WITHSCORES')
  if #r == 0 then return end
  local fields = {}
  for i = 1, #r, 2 do
    fields[#fields + 1] = from .. '@' .. r[i]
    fields[#fields + 1] = c.name .. '@' .. r[i]
  end
  local units = call_batched('HMGET', key, fields)
  c.copied = c.copied or {}
  for i = 1, #r, 2 do
    local lease, exp = r[i], tonumber(r[i + 1])
    local u, mine = tonumber(units[i]) or 0, units[i + 1]
    if u > 0 and not mine and not c.copied[lease] then
      c.copied[lease] = u
      c.set[lease], c.moved[lease] = u, exp
      c.u = c.u + u
      c.x, c.m = math.max(c.x, exp), math.min(c.m, exp)
      c.dirty = true
    end
  end
end

-- A concurrency counter whose state was another kind's: the live leases its sorted set still
-- lists (from before) count; the expired ones go.
local function rebuild_slots(c, key, now)
  local r = redis.call('ZRANGE', c.zkey, 0, -1, 'WITHSCORES')
  if #r == 0 then return end
  local fields = {}
  for i = 1, #r, 2 do fields[#fields + 1] = c.name .. '@' .. r[i] end
  local units = call_batched('HMGET', key, fields)
  for i = 1, #r, 2 do
    local lease, exp, u = r[i], tonumber(r[i + 1]), tonumber(units[(i + 1) / 2]) or 0
    if exp > now then
      c.u = c.u + u
      c.x, c.m = math.max(c.x, exp), math.min(c.m, exp)
    else
      c.gone[#c.gone + 1] = lease
    end
  end
end

-- Takes into c the state `v` (its ~k: field `m`) of counter field `from`, another scoping of
-- c's limit. Returns the retired counter for a state it cannot decode.
local function absorb(c, from, v, m, key, now, x)
  local meta = unpack_meta(m)
  local shape = meta and meta.shape
  if not shape and layout_ok(c.kind, v) then shape = c.shape end -- written before version 9
  local o = shape and old_counter(shape, from, (meta and meta.cap) or c.cap, key)
  local ok, units = true, nil
  if o and o.kind == 'conc' and c.kind == 'conc' then
    ok = pcall(copy_leases, c, from, o.zkey, key, now)
    if ok then return nil end
  elseif o then
    ok, units = pcall(carry, c, o, v, now, key, true)
  end
  if not ok or not units then return x > now and {u = INF, at = x, cap = 0} or nil end
  seed(c, units, now, key)
  return nil
end

-- A kind's functions with c's retired counter checked and charged alongside, and its ~k: (and
-- ~s:) fields written with the state.
local function wrap(c)
  local K = c.K
  local w = {}
  for k, f in pairs(K) do w[k] = f end
  function w.fits(c, now, cost, key)
    local ok, at = K.fits(c, now, cost, key)
    local r = c.ret
    if r and now < r.at and r.u + cost > r.cap then
      if ok then return false, r.at end
      return false, math.max(at, r.at)
    end
    return ok, at
  end
  function w.charge(c, now, cost, ...)
    local r = c.ret
    if r and now < r.at then r.u = r.u + cost end
    return K.charge(c, now, cost, ...)
  end
  function w.drained(c, now, args)
    local d = K.drained(c, now, args)
    if c.ret then d = math.max(d, c.ret.at) end
    return d
  end
  function w.pack(c)
    if c.keep_v then return c.keep_v end
    return K.pack(c)
  end
  function w.flush(c, set, del, now)
    if c.keep_v then return end -- the conversion could not be completed: written as it was
    if K.flush then K.flush(c, set, del, now) end
    for _, f in ipairs(c.rdel or {}) do del[#del + 1] = f end
    c.rdel = nil
    set[#set + 1] = META .. c.name
    set[#set + 1] = pack_meta(c, c.ret, now)
    if c.mark then
      set[#set + 1] = SIDE .. c.limit
      set[#set + 1] = c.mark
    end
  end
  c.K = w
end

-- The fields reshape_load needs, two per counter, appended to `fields`.
local function reshape_fields(cs, fields)
  for _, c in ipairs(cs) do
    local p = string.find(c.name, '[', 1, true)
    c.limit = p and string.sub(c.name, 1, p - 1) or c.name
    c.scoped = p ~= nil
    fields[#fields + 1] = META .. c.name
    fields[#fields + 1] = SIDE .. c.limit
  end
end

-- Loads counter c (its kind's functions in c.K) from its state `v`, its ~k: field `m` and its
-- limit's ~s: field `side`, converting a state written under another shape or scoping (above).
-- clock(): Redis's time (read only when needed: one TIME less per call when nothing changed);
-- x: when the hash expires. Writes nothing (save_all writes what changed).
local function reshape_load(c, v, m, side, key, clock, x)
  c.shape, c.caps = shape_of(c)
  local meta = unpack_meta(m, c.shape, c.caps)
  local ret = nil
  if meta and meta.rat and meta.rat > clock() then
    ret = {u = meta.ru, at = meta.rat, cap = meta.rcap}
  end
  c.seen = meta and meta.seen or 0
  local rewrite = not meta or meta.shape ~= c.shape or meta.cap ~= c.caps
  if v and ((meta and meta.shape == c.shape) or (not meta and layout_ok(c.kind, v))) then
    c.K.load(c, v)
  elseif v then -- written under another shape
    c.K.load(c, nil)
    local o = meta and old_counter(meta.shape, c.name, meta.cap or c.cap, key)
    local ok, units, r = false, nil, nil
    if o then ok, units, r = pcall(carry, c, o, v, clock(), key, false) end
    if not ok then units, r = nil, nil end
    local decoded = units ~= nil
    if not decoded then -- cannot be decoded: deny until the hash expires
      units, r = 0, x > clock() and {u = INF, at = x, cap = 0} or nil
    else
      c.cd = math.max(c.cd, o.cd or 0)
    end
    if decoded and o.kind == 'slide' then
      c.rdel = {}
      for i = o.dh, o.t - 1 do c.rdel[#c.rdel + 1] = c.name .. '#' .. fmt(i) end
      if c.kind == 'slide' then c.h, c.t, c.g, c.dh = o.t, o.t, o.t, o.t end
    end
    ret = merge(ret, r)
    if c.kind == 'conc' then rebuild_slots(c, key, clock()) end
    if not seed(c, units, clock(), key) then c.keep_v = v end
    c.dirty = true
  else
    c.K.load(c, nil)
  end
  -- Scoping eras.
  local ts, tu = 0, 0
  if side then
    local a, b = string.match(side, '^([^;]*);([^;]*)$')
    ts, tu = tonumber(a) or 0, tonumber(b) or 0
  end
  if c.scoped then
    if not v or tu > c.seen then
      local bv = redis.call('HMGET', key, c.limit, META .. c.limit)
      if bv[1] then ret = merge(ret, absorb(c, c.limit, bv[1], bv[2], key, clock(), x)) end
      c.seen = math.max(c.seen, tu)
      -- A new scope is written by what charges or carries into it (absorb), never by the era
      -- alone: a Release or Renew after the hash expired would recreate the scope behind
      -- max_scopes' count (~n).
      if v then c.dirty = true end
    end
    if ts <= tu then c.mark = fmt(clock()) .. ';' .. fmt(tu) end -- a scoped era begins
  elseif ts > c.seen then
    local pre = c.name .. '['
    local names = {}
    for _, f in ipairs(redis.call('HKEYS', key)) do
      if string.sub(f, 1, #pre) == pre and not string.find(f, '[#@]') then
        names[#names + 1] = f
      end
    end
    if #names > 0 then
      local fields = {}
      for _, f in ipairs(names) do
        fields[#fields + 1] = f
        fields[#fields + 1] = META .. f
      end
      local vs = call_batched('HMGET', key, fields)
      for i, f in ipairs(names) do
        if vs[2 * i - 1] then
          ret = merge(ret, absorb(c, f, vs[2 * i - 1], vs[2 * i], key, clock(), x))
        end
      end
    end
    c.seen = ts
    c.dirty = true
    if ts > tu then c.mark = fmt(ts) .. ';' .. fmt(clock()) end -- an unscoped era begins
  end
  c.ret = ret
  if ret or rewrite or c.mark or (meta and meta.seen ~= c.seen) then wrap(c) end
end
