-- quotad's function library, sixth part (the embedded library is quotad.lua, ...,
-- quotad_outside.lua, this file, then quotad_batch.lua, as one source: see embed_lua.cmake): a
-- call's state, the functions.

---------------------------------------------------------------------------------------------
-- State of a call: the credential's hash, read once, written once.

local KINDS = {cal = W, unl = W, roll = W, slide = S, sb = B, tb = T, conc = C}

-- Reads the state of every counter (and `extra` fields) in one HMGET, converting a state written
-- under another shape or scoping (quotad_reshape.lua). Returns the extra values.
local function load_all(key, cs, extra)
  local fields = {'~x'}
  for k, c in ipairs(cs) do
    c.key = key
    c.K = KINDS[c.kind]
    if not c.K then error('quotad: unknown counter kind ' .. tostring(c.kind)) end
    fields[k + 1] = c.name
  end
  local n0 = #fields
  reshape_fields(cs, fields) -- quotad_reshape.lua: two per counter
  local n = #fields
  for _, f in ipairs(extra) do fields[#fields + 1] = f end
  local v = call_batched('HMGET', key, fields)
  local x, now = tonumber(v[1]) or -INF, nil
  local function clock()
    now = now or now_us()
    return now
  end
  for k, c in ipairs(cs) do
    c.fresh = not v[k + 1] -- no state yet (for a scoped counter: a new scope)
    reshape_load(c, v[k + 1], v[n0 + 2 * k - 1], v[n0 + 2 * k], key, clock, x)
  end
  local rest = {}
  for i = n + 1, #fields do rest[i - n] = v[i] end
  return tonumber(v[1]) or -INF, rest
end

-- Writes back what changed, in one HSET (and one HDEL), and keeps the hash until every counter
-- has drained (`more`: other fields to set; `keep`: a time the hash must live until too).
local function save_all(key, cs, x, now, args, more, keep)
  local set, del, need = {}, {}, keep or -INF
  for _, c in ipairs(cs) do
    if c.dirty then
      if c.K.flush then c.K.flush(c, set, del, now) end
      set[#set + 1] = c.name
      set[#set + 1] = c.K.pack(c)
    end
    need = math.max(need, c.K.drained(c, now, args))
  end
  for _, v in ipairs(more or {}) do set[#set + 1] = v end
  local expire = need > x
  if expire then
    x = slack(need, now)
    set[#set + 1] = '~x'
    set[#set + 1] = string.format('%d', x)
  end
  if #del > 0 then call_batched('HDEL', key, del) end
  if #set > 0 then call_batched('HSET', key, set) end
  if expire then expire_at(key, x) end -- after HSET: the key exists
end


---------------------------------------------------------------------------------------------
-- The functions.

local function read_lease(key, now)
  local v = redis.call('GET', key)
  if not v then return nil end
  local n = (#v) / 8
  local l = {struct.unpack(string.rep('d', n), v)}
  l[n + 1] = nil -- unpack's next position
  if l[1] <= now then return nil end
  return l
end

local function write_lease(key, rec)
  redis.call('SET', key, pk(string.rep('d', #rec), unpack(rec)), 'PXAT',
             math.floor(rec[1] / 1000) + 1000)
end


-- Appends (used, reset or -1, outside) per counter, as Counter::View shows it now and the units
-- held back for use outside quotad (`oe`: the outside estimates, quotad_outside.lua).
local function append_views(out, cs, now, key, oe)
  for _, c in ipairs(cs) do
    local used, reset = c.K.view(c, now, key)
    out[#out + 1] = used
    out[#out + 1] = reset >= INF and -1 or reset
    out[#out + 1] = O.hold(oe, c, 0, now)
  end
end

-- The rule of a counter's name: a scoped counter is "<rule>[<scope>]" (rule names hold no
-- bracket).
local function scope_rule(name)
  local at = string.find(name, '[', 1, true)
  if at then return string.sub(name, 1, at - 1) end
  return name
end

-- Until when counter `c` cools down after a throttle (Report): its own cooldown, or its limit's
-- as the outside estimates keep it by the limit's name (oe, quotad_outside.lua), which outlives
-- a reload that changes the counter's scoping (embedded: OutsideEstimate's cooldown).
local function cooldown_of(oe, c)
  if next(oe) == nil then return c.cd end
  local e = oe[scope_rule(c.name)]
  if e and e[5] and e[5] > c.cd then return e[5] end
  return c.cd
end

-- FCALL quotad_acquire 3+z[+1] lease state dedup zsets.. [locator]
--       cost lease_id ttl_us n keep_lease request_id fingerprint dedup_us feature counters..
--       [locator_value [want_limits [scoped max_scopes scope credential]]]
-- Charges `cost` on every counter, or on none. `request_id` (empty: none): a retry of a grant
-- within dedup_us answers that grant and charges nothing (it only rewrites the record's expiry). `keep_lease` 0: no lease record
-- (nothing to release or renew; for callers that never refund). A non-empty locator_value is
-- stored in the last key (the lease's locator, see redis_backend.h) as long as the lease lives.
-- want_limits 1: a grant, and a denial by the limits, append (used, reset or -1, outside) per
-- counter after their answer, as Counter::View after the decision and the units held back for
-- use outside quotad (the Decision's limits). Units estimated to be used outside quotad (Report,
-- quotad_outside.lua) are held back from every grant as if charged.
-- scoped > 0: counter `scoped` (1-based) is the feature's first scoped limit; a scope new to it
-- (no state yet) is refused once field ~n<counter's rule> counts max_scopes scopes (each grant
-- that creates a scope counts it; a denial creates none), answered {-3, now, max_scopes, scope,
-- feature, credential} (Ledger::Acquire's kResourceExhausted). The count lives in the
-- credential's hash, so it ends with it (when every counter has drained).
-- Answers
--   {1, now, lease_expiry}                 granted
--   {2, now, lease_expiry, lease_id}       a retry of an earlier grant (its time and lease)
--   {0, now, retry_at or -1, counter, cooling}
--                                          denied: counter (1-based; 0: the feature) is the one
--                                          that frees last; retry_at is when all would fit (-1:
--                                          never); cooling 1: by a cooldown (Report), which is
--                                          checked first, as Ledger::Acquire does
--   {-1, now, counter}                     no calendar window given contains Redis's time:
--                                          compute them around `now` and call again
--   {-2, now, first_fingerprint}           the request_id was first used for another request
-- A request is held back (denied) while a waiter of priority 0 or more that shares a counter
-- with it is queued (quotad_wait); `queued` false: the caller checked the queues already.
-- `at`: the time to decide at (nil: Redis's TIME). `need` (quotad_acquire_all's first pass):
-- only checked, nothing charged, answering nil where it would grant; the costs and new scopes
-- of the batch's earlier items count on the counters they share (need[state .. '|' .. name],
-- need.scopes), so each item is checked as if those before it were charged; a request_id an
-- earlier item used (need.rids) answers nil for the same request, -2 for another.
local function acquire(keys, args, queued, at, need)
  local cost, lease, ttl, n = tonumber(args[1]), args[2], tonumber(args[3]), tonumber(args[4])
  local keep, rid, fp, dedup_us, feature = args[5] ~= '0', args[6], args[7], tonumber(args[8]),
                                           args[9]
  local now = at or now_us()
  if rid ~= '' then
    local first = redis.call('GET', keys[3])
    if first then
      local at, exp, flease, ffp = cmsgpack.unpack(first)
      if ffp ~= fp then return {-2, now, ffp} end
      -- Rewrite its expiry (unchanged): a write, so that a WAIT after this call also covers the
      -- record, which another connection may have written and not yet replicated.
      local left = redis.call('PTTL', keys[3])
      if left > 0 then redis.call('PEXPIRE', keys[3], left) end
      return {2, at, exp, flease}
    end
    if need then
      -- An earlier item of the batch with this request_id: the same request is granted once
      -- (the second pass answers it as a retry), another one is refused here, before anything
      -- is charged.
      local earlier = need.rids[keys[3]]
      if earlier and earlier ~= fp then return {-2, now, earlier} end
      if earlier then return nil end
      need.rids[keys[3]] = fp
    end
  end
  local cs, ai = parse_counters(keys, 4, args, 10, n)
  local locator = args[ai]
  local want = args[ai + 1] == '1'
  local sk = tonumber(args[ai + 2]) or 0
  local efields = {'!' .. feature, '~o'}
  if sk > 0 then efields[3] = '~n' .. scope_rule(cs[sk].name) end
  local x, extra = load_all(keys[2], cs, efields)
  local oe = O.decode(extra[2])
  local scopes, new_scope = 0, false
  if sk > 0 then
    -- As Ledger::Acquire: checked first, before cooldowns and limits.
    local smax = tonumber(args[ai + 3])
    scopes, new_scope = tonumber(extra[3]) or 0, cs[sk].fresh
    local pending = 0 -- new scopes of the batch's earlier items (other than this one)
    if need and new_scope then
      local set = need.scopes[keys[2] .. '|' .. efields[3]] or {}
      need.scopes[keys[2] .. '|' .. efields[3]] = set
      for name in pairs(set) do
        if name ~= cs[sk].name then pending = pending + 1 end
      end
      set[cs[sk].name] = true
    end
    if new_scope and scopes + pending >= smax then
      return {-3, now, smax, args[ai + 4], feature, args[ai + 5]}
    end
  end
  if queued ~= false and redis.call('EXISTS', qpre(keys) .. 'wx') == 1 then
    -- Waiting requests go first (as Ledger::Acquire, at priority 0): told when the waiter
    -- ahead last expected to fit (at least 100 ms on).
    local k, r = queue_block(qpre(keys), cs, qscore(0, WAIT_SPAN - 1), '', now)
    if k then return {0, now, math.max(r, now + 100000), k, 0} end
  end
  local retry, limiting, cool = -INF, -1, 0
  local fcd = tonumber(extra[1]) or 0
  if fcd > now then retry, limiting = fcd, 0 end
  for k, c in ipairs(cs) do
    if not c.K.roll(c, now, args, keys[2]) then return {-1, now, k} end
    local cd = cooldown_of(oe, c)
    if cd > now and cd > retry then retry, limiting = cd, k end
  end
  if limiting >= 0 then
    cool = 1
  else
    for k, c in ipairs(cs) do
      local want_units = cost
      if need then
        local id = keys[2] .. '|' .. c.name
        want_units = (need[id] or 0) + cost
        need[id] = want_units
      end
      -- Units learnt to be used from outside quotad are held back as if charged.
      local hold = O.hold(oe, c, cost, now)
      local ok, fit_at = c.K.fits(c, now, want_units + hold, keys[2])
      if not ok and fit_at > retry then retry, limiting = fit_at, k end
    end
  end
  -- A denial writes nothing: what roll() changed is recomputed the same way next time.
  if limiting >= 0 then
    if retry >= INF then retry = -1 end
    local out = {0, now, retry, limiting, cool}
    if want and cool == 0 then append_views(out, cs, now, keys[2], oe) end
    return out
  end
  if need then return nil end
  local exp = now + ttl
  local rec = {exp, now, cost}
  for k, c in ipairs(cs) do
    local token, aux = c.K.charge(c, now, cost, lease, exp)
    rec[2 * k + 2], rec[2 * k + 3] = token, aux
  end
  save_all(keys[2], cs, x, now, args,
           new_scope and {efields[3], string.format('%d', scopes + 1)} or nil)
  if keep then
    write_lease(keys[1], rec)
    if locator and locator ~= '' then
      redis.call('SET', keys[#keys], locator, 'PXAT', math.floor(exp / 1000) + 1000)
    end
  end
  if rid ~= '' then
    redis.call('SET', keys[3], cmsgpack.pack(now, exp, lease, fp), 'PX',
               math.max(1, math.ceil(dedup_us / 1000)))
  end
  local out = {1, now, exp}
  if want then append_views(out, cs, now, keys[2], oe) end -- after save_all: sets written
  return out
end

-- Concurrency counters also read what the lease holds on them.
local function lease_fields(cs, lease)
  local f = {}
  for _, c in ipairs(cs) do
    if c.kind == 'conc' then f[#f + 1] = c.name .. '@' .. lease end
  end
  return f
end

local function set_held(cs, extra)
  local j = 0
  for _, c in ipairs(cs) do
    if c.kind == 'conc' then
      j = j + 1
      c.held = tonumber(extra[j]) or 0
    end
  end
end

-- FCALL quotad_release 2+z[+1] lease state zsets.. [locator]  used lease_id n counters.. [1]
-- Ends a lease (counters: the same as its acquire, in the same order). used >= 0 refunds
-- cost - used on each window limit whose charged window is still open; used < 0 refunds
-- nothing, nor does a lease granted before a reset (quotad_reset). Frees its concurrency slots. A final argument 1 also deletes the locator. Answers
-- {1, now, freed, refunded_1, ..., refunded_n},
-- or {0, now} when the lease is unknown or expired.
local function release(keys, args)
  local used, lease, n = tonumber(args[1]), args[2], tonumber(args[3])
  local now = now_us()
  local cs, ai = parse_counters(keys, 3, args, 4, n)
  if args[ai] == '1' then redis.call('DEL', keys[#keys]) end
  local l = read_lease(keys[1], now)
  if l == nil then return {0, now} end
  local fields = lease_fields(cs, lease)
  fields[#fields + 1] = '~r'
  local x, extra = load_all(keys[2], cs, fields)
  set_held(cs, extra)
  local reset_at = tonumber(extra[#fields]) or -INF
  local out = {1, now, 0}
  local cost, at = l[3], l[2]
  -- A lease granted before the credential was reset gives nothing back (its units are gone).
  local units = (used >= 0 and at > reset_at) and math.max(cost - used, 0) or 0
  for k, c in ipairs(cs) do
    local got = 0
    c.K.roll(c, now, args, keys[2])
    if c.kind == 'conc' then
      out[3] = out[3] + C.free(c, lease)
    elseif units > 0 and l[2 * k + 2] ~= nil then
      got = c.K.refund(c, now, l[2 * k + 2], l[2 * k + 3], cost, units, at, keys[2])
    end
    out[#out + 1] = got
  end
  save_all(keys[2], cs, x, now, args)
  redis.call('DEL', keys[1])
  wake(qpre(keys), cs, now)
  return out
end

-- FCALL quotad_renew 2+z[+1] lease state zsets.. [locator]  ttl_us lease_id n counters.. [1]
-- Moves a live lease's expiry to now + ttl, on the lease and on its concurrency counters (and
-- on the locator, given a final argument 1).
-- Answers {1, now, expiry, previous_expiry}, or {0, now} when the lease is unknown or expired.
-- (previous_expiry: the caller may answer a renewal that shortened the lease without WAIT,
-- since losing it in a failover only keeps the lease longer.)
local function renew(keys, args)
  local ttl, lease, n = tonumber(args[1]), args[2], tonumber(args[3])
  local now = now_us()
  local l = read_lease(keys[1], now)
  if l == nil then return {0, now} end
  local exp = now + ttl
  local cs, ai = parse_counters(keys, 3, args, 4, n)
  if args[ai] == '1' then
    redis.call('PEXPIREAT', keys[#keys], math.floor(exp / 1000) + 1000)
  end
  local conc = {}
  for _, c in ipairs(cs) do
    if c.kind == 'conc' then conc[#conc + 1] = c end
  end
  if #conc > 0 then
    local x, extra = load_all(keys[2], conc, lease_fields(conc, lease))
    set_held(conc, extra)
    for _, c in ipairs(conc) do
      C.roll(c, now, args, keys[2])
      C.move(c, lease, exp)
    end
    save_all(keys[2], conc, x, now, args)
  end
  local before = l[1]
  l[1] = exp
  write_lease(keys[1], l)
  return {1, now, exp, before}
end

-- The units a counter counts now (after roll), as Counter::View's used.
local function view_used(c, now)
  if c.kind == 'roll' then return now < c.e and c.u or 0 end
  if c.kind == 'tb' then return (T.view(c, now)) end
  return c.u
end

-- FCALL quotad_report 1+z state zsets..  n target used full reset_us longest_us observed_us
--       sent_us feature answer retry_us feature_bo_us cap_us nscoped scoped_jit sent_given bo_us
--       mult max_bo_us counters..  (then per counter: rel_us jit; then per scoped limit of the
--       feature, nscoped of them: name rel_us)
-- What an upstream's answer taught, applied atomically on Redis's clock: Ledger::Report's
-- state changes (ledger_report.cc), with the caller's parsing and choices
-- (service/core/report_target.h). `counters` are the feature's unscoped limits that can deny;
-- `target` (1-based, 0: none) the one the X-RateLimit-* counts describe.
--  * used >= 0: the upstream's count of the target, adopted into the window in force unless
--    `reset_us` (0: unknown) has passed by a second or more (CheckUpstreamReset's kPassed); a
--    reset more than `longest_us` (plus up to an hour) ahead is ignored (kTooFar). Never lowers
--    a count; refunds never undercut it. A sliding count is compared with our charges from one
--    period before `sent_us` on (Counter::Adopt), and its units leave at SlidingAdoptedUntil.
--  * answer 1 (a throttle): the hit limits (AttributeThrottle: the target when `full` is 1, else
--    those within 2% of the fullest, counting the units held back for outside use; the scoped
--    limits count as empty) count the throttle and learn outside use (LearnThrottle,
--    quotad_outside.lua: not the target whose count was adopted, not a limit quotad's count has
--    full when sent_given is 0, not a request sent before the last decrease); they cool down
--    until `retry_us`, the target's reset when full, or else now + min(back-off, rel_us (-1:
--    the rest of its window)) * jit, at least 1 ms, the back-off doubling (bo_us times mult per
--    throttle since the last clean answer, at most max_bo_us). A hit scoped limit counts the
--    throttle under its name too and cools down, every scope of it (min(its back-off, its
--    rel_us) * scoped_jit, at least 1 ms, kept in ~o). With no limit hit, or a retry_us
--    ahead, the feature cools down too (feature_bo_us). No cooldown lasts past now + cap_us
--    (the feature's longest window).
--  * answer 0 (a success, status < 400): the back-offs start over where the answer was seen
--    (observed_us) after their cooldown ended. answer 2: neither.
-- Answers {now, before, added, cooldown_until or 0, adopt_status, reset_ignored, capped..}:
-- adopt_status 1 adopted, 0 no count, -1 the reset has passed; reset_ignored 1 for kTooFar;
-- capped: each cooldown that was capped, as asked; or {-1, now, counter} as quotad_acquire.
local function report(keys, args)
  local n, target, used, full = tonumber(args[1]), tonumber(args[2]), tonumber(args[3]),
                                tonumber(args[4])
  local reset0, longest, observed, sent = tonumber(args[5]), tonumber(args[6]),
                                          tonumber(args[7]), tonumber(args[8])
  local feature, answer, retry = args[9], args[10], tonumber(args[11])
  local fbo, cap, nscoped = tonumber(args[12]), tonumber(args[13]), tonumber(args[14])
  local sjit, sent_given = tonumber(args[15]), args[16] == '1'
  local bo0, mult, bomax = tonumber(args[17]), tonumber(args[18]), tonumber(args[19])
  local throttled = answer == '1'
  local now = now_us()
  local cs, i = parse_counters(keys, 2, args, 20, n)
  for k, c in ipairs(cs) do
    local j = i + 2 * (k - 1)
    c.rel, c.jit = tonumber(args[j]), tonumber(args[j + 1])
  end
  local scoped = {} -- the feature's scoped limits: {name, rel}
  for k = 1, nscoped do
    local j = i + 2 * n + 2 * (k - 1)
    scoped[k] = {args[j], tonumber(args[j + 1])}
  end
  local x, extra = load_all(keys[1], cs, {'!' .. feature, '~o'})
  local oe = O.decode(extra[2])
  local oe_dirty = false
  for k, c in ipairs(cs) do
    if not c.K.roll(c, now, args, keys[1]) then return {-1, now, k} end
  end
  local before, added, status, ignored = 0, 0, 0, 0
  local tc = cs[target]
  if tc then
    local reset = reset0
    if used >= 0 and reset > 0 and not sliding(tc) and reset + 1000000 <= now then
      status, full = -1, -1
    else
      if reset > 0 and reset > now + longest + math.min(longest, 3600000000) then
        reset, ignored = 0, 1
      end
      if used >= 0 then
        if sliding(tc) then
          local rel = math.min(now, observed) + tc.b
          if reset <= now or reset > rel then reset = rel end
        end
        before, added = tc.K.adopt(tc, now, math.min(used, tc.cap), reset, keys[1], sent)
        if added > 0 and not sliding(tc) then tc.adat = now end
        status = 1
      end
    end
  end
  local cool_until, capped, limit = 0, {}, now + cap
  local fcool = tonumber(extra[1]) or 0
  local fcool_was = fcool
  local function cap_at(u)
    if u > limit then
      capped[#capped + 1] = u
      return limit
    end
    return u
  end
  -- The entry of limit `name`, created when missing; `rec`: its recovery period now (nil for
  -- a scoped limit, which keeps no estimate: an unscoped era's period stays).
  local function entry_of(name, rec)
    local e = oe[name]
    if not e then
      e = {0, now, 0, rec or 0}
      oe[name] = e
    end
    if rec then e[4] = rec end
    oe_dirty = true
    return e
  end
  if throttled then
    local hit = {}
    if target > 0 and full == 1 then
      hit[1] = target
    else
      local fs = {}
      for k, c in ipairs(cs) do
        if not (k == target and full >= 0) then
          fs[#fs + 1] = {(view_used(c, now) + O.hold(oe, c, 1, now)) / c.cap, k}
        end
      end
      for k = 1, nscoped do fs[#fs + 1] = {0, -k} end
      if #fs == 0 then
        if target > 0 then hit[1] = target end
      else
        local most = 0
        for _, f in ipairs(fs) do most = math.max(most, f[1]) end
        for _, f in ipairs(fs) do
          if f[1] >= most - 0.02 then hit[#hit + 1] = f[2] end
        end
      end
    end
    if #hit == 0 or retry > now then
      fcool = math.max(fcool, math.min(retry > now and retry or now + fbo, limit))
      cool_until = fcool
    end
    local sent_at = sent_given and math.min(sent, now) or now
    for _, k in ipairs(hit) do
      if k < 0 then
        local sl = scoped[-k]
        local e = entry_of(sl[1], nil)
        e[3] = e[3] + 1
        local bo = math.max(math.min(O.backoff(bo0, mult, bomax, e[3]), sl[2]), 1000)
        -- Every scope of the limit cools down, for every feature that charges it (cooldown_of).
        e[5] = math.max(e[5] or 0, cap_at(retry > now and retry or now + math.floor(bo * sjit)))
        cool_until = math.max(cool_until, e[5])
      else
        local c = cs[k]
        local rec = O.recovery(c)
        local e = entry_of(c.name, rec)
        e[3] = e[3] + 1
        -- Without sent_given, a throttle on a limit quotad's count already has full is explained
        -- by that count; a limit whose count this answer gave is known, not estimated; a request
        -- sent before the last decrease was in flight when it was made.
        local counted = k == target and status == 1
        local is_full = not sent_given and view_used(c, now) >= c.cap
        local in_flight = sent_at < e[2] and O.units(e, c.cap, rec, now) > 0
        if estimable(c) and not counted and not is_full and not in_flight then
          O.shrink(e, c.cap, rec, now)
        end
        local u = retry
        if u == 0 and k == target and full == 1 and reset0 > now then u = reset0 end
        if u <= now then
          local rel = c.rel
          if rel < 0 then rel = math.max(0, c.e - now) end
          local bo = O.backoff(bo0, mult, bomax, e[3])
          u = now + math.floor(math.max(math.min(bo, rel), 1000) * c.jit)
        end
        u = cap_at(u)
        if u > c.cd then
          c.cd = u
          c.dirty = true
        end
        e[5] = math.max(e[5] or 0, c.cd)
        cool_until = math.max(cool_until, c.cd)
      end
    end
  elseif answer == '0' then
    -- The back-off starts over on a success seen after the cooldown ended; answers to requests
    -- sent before the throttle say nothing about the upstream now.
    for _, c in ipairs(cs) do
      local e = oe[c.name]
      if e and e[3] > 0 and observed >= cooldown_of(oe, c) then
        e[3], oe_dirty = 0, true
      end
    end
    for _, sl in ipairs(scoped) do
      local e = oe[sl[1]]
      if e and e[3] > 0 and observed >= (e[5] or 0) then
        e[3], oe_dirty = 0, true
      end
    end
  end
  local more, keep = {}, nil
  if fcool > fcool_was then
    more = {'!' .. feature, string.format('%d', fcool)}
    cs[#cs + 1] = {dirty = false, K = {drained = function() return fcool end}}
  end
  if oe_dirty then
    local v
    v, keep = O.encode(oe, now, cap)
    if v then
      more[#more + 1] = '~o'
      more[#more + 1] = v
    else
      redis.call('HDEL', keys[1], '~o')
    end
  end
  save_all(keys[1], cs, x, now, args, more, keep)
  local out = {now, before, added, cool_until, status, ignored}
  for _, u in ipairs(capped) do out[#out + 1] = u end
  return out
end

-- FCALL_RO quotad_usage 1+z state zsets..  n nf counters..  then per feature: name k idx.. m
--       limits..
-- What Ledger::Usage shows, read in one call without writing: per counter (after rolling, in
-- memory only) its used units, when its window ends or its oldest unit leaves (-1: never) and
-- its cooldown (0: none) and the units held back for use outside quotad (quotad_outside.lua);
-- per feature, when its cooldown ends (its own, that of one of its counters idx.., 1-based, or
-- that of one of its scoped limits named in limits.., kept in ~o), 0 when it is not cooling
-- down.
-- Answers {now, (used, reset, cooldown, outside) per counter, cooldown per feature}, or
-- {-1, now, k}.
local function usage(keys, args)
  local n, nf = tonumber(args[1]), tonumber(args[2])
  local now = now_us()
  local cs, i = parse_counters(keys, 2, args, 3, n)
  local feats, fields = {}, {}
  for f = 1, nf do
    local fe = {idx = {}, limits = {}}
    local k = tonumber(args[i + 1])
    for j = 1, k do fe.idx[j] = tonumber(args[i + 1 + j]) end
    fields[f] = '!' .. args[i]
    i = i + 2 + k
    local m = tonumber(args[i])
    for j = 1, m do fe.limits[j] = args[i + j] end
    i = i + 1 + m
    feats[f] = fe
  end
  fields[nf + 1] = '~o'
  local _, extra = load_all(keys[1], cs, fields)
  local oe = O.decode(extra[nf + 1])
  local out = {now}
  for k, c in ipairs(cs) do
    if not c.K.roll(c, now, args, keys[1]) then return {-1, now, k} end
    local used, reset = c.K.view(c, now, keys[1])
    out[#out + 1] = used
    out[#out + 1] = reset >= INF and -1 or reset
    local cd = cooldown_of(oe, c)
    out[#out + 1] = cd > now and cd or 0
    out[#out + 1] = O.hold(oe, c, 0, now)
  end
  for f, fe in ipairs(feats) do
    local u = tonumber(extra[f]) or 0
    for _, k in ipairs(fe.idx) do u = math.max(u, cooldown_of(oe, cs[k])) end
    for _, name in ipairs(fe.limits) do
      local e = oe[name]
      if e and e[5] then u = math.max(u, e[5]) end
    end
    out[#out + 1] = u > now and u or 0
  end
  return out
end

-- Deletes `fields` of hash `key`, a batch at a time (unpack has a limit).
local function hdel_all(key, fields)
  for i = 1, #fields, 1000 do
    redis.call('HDEL', key, unpack(fields, i, math.min(i + 999, #fields)))
  end
end

-- FCALL quotad_reset 1 state: ResetCredential (Ledger::Reset). Forgets every charge of the
-- credential (window, sliding and bucket states, sliding log entries), what was adopted, and
-- every cooldown (the features' and the counters'), the outside estimates and back-offs (~o);
-- concurrency slots held by live leases
-- stay. A lease granted before gives nothing back on release (field ~r: the reset's time).
-- Counter states are kept, emptied (so scoped ones are still listed, as after Counter::Clear),
-- and told apart by their size: 5 doubles concurrency, 7 windows, 10-11 sliding, 2 buckets;
-- sub-bucketed sliding by its leading 'B'.
-- Answers {now}.
local function reset(keys, args)
  local now = now_us()
  local fields = redis.call('HKEYS', keys[1])
  if #fields == 0 then return {now} end
  local del, states = {}, {}
  for _, f in ipairs(fields) do
    local c1 = string.sub(f, 1, 1)
    if f == '~o' then
      del[#del + 1] = f
    elseif c1 == '~' or string.find(f, '@', 1, true) then
      -- the hash's expiry, the reset time, a lease's slots: kept
    elseif c1 == '!' or string.find(f, '#', 1, true) then
      del[#del + 1] = f
    else
      states[#states + 1] = f
    end
  end
  local set = {'~r', string.format('%d', now)}
  if #states > 0 then
    local vs = call_batched('HMGET', keys[1], states)
    for i, f in ipairs(states) do
      local v = vs[i]
      local fresh = nil
      if v and string.sub(v, 1, 1) == 'B' then -- sliding with sub-buckets
        fresh = 'B' .. pk('ddddd', -INF, 0, -INF, 0, 0)
      elseif v and #v == 40 then -- concurrency: its slots stay
        local u, x, m, zx = struct.unpack('ddddd', v)
        fresh = pk('ddddd', u, x, m, zx, 0)
      elseif v and #v == 56 then -- windows
        fresh = pk('ddddddd', -INF, -INF, 0, 0, 0, -INF, 0)
      elseif v and #v >= 80 then -- sliding (its entries are deleted above)
        fresh = pk('ddddddddddd', 0, 0, 0, 0, 0, 0, 0, 0, -INF, 0, 0)
      elseif v and #v == 16 then -- token bucket
        fresh = pk('dd', -INF, 0)
      end
      if fresh then -- kept, empty: a scoped counter is still listed (as Counter::Clear)
        set[#set + 1] = f
        set[#set + 1] = fresh
      else
        del[#del + 1] = f
      end
    end
  end
  hdel_all(keys[1], del)
  call_batched('HSET', keys[1], set)
  wake(string.sub(keys[1], 1, -2), nil, now)
  return {now}
end

-- FCALL_RO quotad_peek 1 state name kind: a counter's state as numbers (for tests, operators).
local function peek(keys, args)
  local v = redis.call('HGET', keys[1], args[1])
  if not v then return {} end
  local from = 1
  if string.sub(v, 1, 1) == 'B' then from = 2 end -- sub-buckets: header, then the pairs
  local out = {struct.unpack(string.rep('d', math.floor((#v - from + 1) / 8)), v, from)}
  out[#out] = nil
  for i, f in ipairs(out) do out[i] = string.format('%d', f) end
  return out
end


-- FCALL quotad_wait <quotad_acquire's keys>  mode waiter priority seq beat_us <its args>
-- An Acquire that may wait, fair across replicas (README "Waiting"). mode
--   enter  a new request: granted if no live waiter of its priority or higher that shares a
--          counter is queued and it fits; otherwise queued (a new arrival number) and denied
--   retry  a queued waiter (seq: its arrival): granted if nobody is ahead of it and it fits,
--          then taken out of the queues; otherwise its heartbeat is refreshed (and its entries
--          put back where they were if they had expired)
--   leave  a waiter gone (deadline, cancelled): taken out of the queues
-- Each entry lives beat_us * 3 after the waiter's last call. Taking a waiter out publishes the
-- new heads of its queues on q:{cred}:freed (so do quotad_release and quotad_reset).
-- Answers as quotad_acquire; a denial {0, now, retry_at, counter, cooling, seq, ahead} also
-- gives the waiter's arrival number and whether a waiter ahead held it back (1) or the limits
-- (0); leave answers {5, now}.
local function wait(keys, args)
  local mode, me, prio, seq, beat = args[1], args[2], tonumber(args[3]), tonumber(args[4]),
                                    tonumber(args[5])
  local sub = {}
  for i = 6, #args do sub[i - 5] = args[i] end
  local now = now_us()
  local pre = qpre(keys)
  local cs = parse_counters(keys, 4, sub, 10, tonumber(sub[4]))
  local function out()
    for _, c in ipairs(cs) do redis.call('ZREM', pre .. 'w:' .. c.name, me) end
    redis.call('HDEL', pre .. 'wx', me)
    if redis.call('HLEN', pre .. 'wx') <= 1 then redis.call('DEL', pre .. 'wx') end
    wake(pre, cs, now)
  end
  if mode == 'leave' then
    out()
    return {5, now}
  end
  local score = qscore(prio, mode == 'enter' and WAIT_SPAN - 1 or seq)
  local k, r
  -- A request_id already granted is answered at once (its first grant, charging nothing).
  if sub[6] == '' or redis.call('EXISTS', keys[3]) == 0 then
    k, r = queue_block(pre, cs, score, me, now)
  end
  local a
  if k then
    a = {0, now, math.max(r, -1), k, 0}
  else
    a = acquire(keys, sub, false)
  end
  if a[1] ~= 0 then
    if a[1] > 0 and mode == 'retry' then out() end
    return a
  end
  if mode == 'enter' then
    seq = redis.call('HINCRBY', pre .. 'wx', '~seq', 1)
    score = qscore(prio, seq)
  end
  local exp = now + 3 * beat
  local at_ms = math.floor(exp / 1000) + 1000
  local back = false
  for _, c in ipairs(cs) do
    local q = pre .. 'w:' .. c.name
    if redis.call('ZADD', q, score, me) == 1 and mode == 'retry' then back = true end
    if redis.call('PEXPIRETIME', q) < at_ms then redis.call('PEXPIREAT', q, at_ms) end
  end
  -- A waiter put back at its own place (its entries expired, or Redis lost them): arrivals from
  -- now on are numbered after it, even if the arrival counter went with the data.
  if back and (tonumber(redis.call('HGET', pre .. 'wx', '~seq')) or 0) < seq then
    redis.call('HSET', pre .. 'wx', '~seq', seq)
  end
  redis.call('HSET', pre .. 'wx', me, pk('dd', exp, a[3]))
  if redis.call('PEXPIRETIME', pre .. 'wx') < at_ms then
    redis.call('PEXPIREAT', pre .. 'wx', at_ms)
  end
  a[6], a[7] = seq, k and 1 or 0
  return a
end

redis.register_function{function_name = 'quotad_version', flags = {'no-writes'},
                        callback = function() return VERSION end}
redis.register_function('quotad_acquire', function(keys, args) return acquire(keys, args) end)
redis.register_function('quotad_wait', wait)
redis.register_function('quotad_release', release)
redis.register_function('quotad_renew', renew)
redis.register_function('quotad_report', report)
redis.register_function('quotad_reset', reset)
redis.register_function{function_name = 'quotad_peek', flags = {'no-writes'}, callback = peek}
redis.register_function{function_name = 'quotad_usage', flags = {'no-writes'}, callback = usage}
