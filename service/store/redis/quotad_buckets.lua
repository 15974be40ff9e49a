-- quotad's function library, second part (after quotad.lua, whose helpers it uses: pk, INF;
-- see embed_lua.cmake): sliding windows with sub-buckets (counter kind 'sb').

---------------------------------------------------------------------------------------------
-- Sliding with sub-buckets (Counter::AdvanceBuckets and the Buckets branches of limits.cc):
-- bucket i covers [i * a, (i + 1) * a); the buckets (newest - n, newest] count, a charge goes
-- to the newest. State: 'B' then newest u adat cd k, then k (index, units) pairs of the buckets
-- holding units, oldest first (sparse: at most n pairs, usually far fewer). The leading 'B'
-- keeps its size off the other kinds' (quotad_reset tells states apart by size).

local B = {}

function B.load(c, v)
  c.idx, c.cnt = {}, {}
  if v and string.sub(v, 1, 1) == 'B' then
    local k, pos
    c.newest, c.u, c.adat, c.cd, k, pos = struct.unpack('ddddd', v, 2)
    for j = 1, k do
      c.idx[j], c.cnt[j], pos = struct.unpack('dd', v, pos)
    end
  else
    c.newest, c.u, c.adat, c.cd = -INF, 0, -INF, 0
  end
end

function B.pack(c)
  local parts, k = {}, 0
  for j = 1, #c.idx do
    if c.cnt[j] ~= 0 then
      k = k + 1
      parts[k + 1] = pk('dd', c.idx[j], c.cnt[j])
    end
  end
  parts[1] = 'B' .. pk('ddddd', c.newest, c.u, c.adat, c.cd, k)
  return table.concat(parts)
end

-- Adds `units` to bucket `i`, keeping the pairs in index order (usually the last one).
local function bucket_add(c, i, units)
  local j = #c.idx
  while j > 0 and c.idx[j] > i do j = j - 1 end
  if j > 0 and c.idx[j] == i then
    c.cnt[j] = c.cnt[j] + units
  else
    table.insert(c.idx, j + 1, i)
    table.insert(c.cnt, j + 1, units)
  end
end

-- Counter::AdvanceBuckets: the bucket holding now becomes the newest (a clock that steps back
-- keeps charging the newest); buckets older than the n newest leave with their units.
function B.roll(c, now)
  local cur = math.floor(now / c.a)
  if c.newest == -INF or cur - c.newest >= c.n then
    -- A state never written stays unwritten (a Release or Renew after the hash expired would
    -- recreate a scope behind max_scopes' count); an empty one is recomputed alike next time.
    if (c.newest ~= cur and c.newest ~= -INF) or #c.idx > 0 then c.dirty = true end
    c.idx, c.cnt, c.u, c.newest = {}, {}, 0, cur
    return true
  end
  if cur > c.newest then
    c.newest = cur
    c.dirty = true
  end
  local oldest, drop = c.newest - c.n + 1, 0
  while drop < #c.idx and c.idx[drop + 1] < oldest do
    drop = drop + 1
    c.u = c.u - c.cnt[drop]
  end
  if drop > 0 then
    local idx, cnt = {}, {}
    for j = drop + 1, #c.idx do
      idx[#idx + 1], cnt[#cnt + 1] = c.idx[j], c.cnt[j]
    end
    c.idx, c.cnt, c.dirty = idx, cnt, true
  end
  return true
end

-- When enough of the oldest buckets have left: bucket i leaves at (i + n) * a.
function B.fits(c, now, cost)
  if c.u + cost <= c.cap then return true end
  if cost > c.cap then return false, INF end
  local need, freed = c.u + cost - c.cap, 0
  for j = 1, #c.idx do
    freed = freed + c.cnt[j]
    if freed >= need then return false, (c.idx[j] + c.n) * c.a end
  end
  return false, INF
end

function B.charge(c, now, cost)
  bucket_add(c, c.newest, cost)
  c.u = c.u + cost
  c.dirty = true
  return c.newest, 0 -- the token is the bucket's index
end

function B.drained(c)
  if c.u > 0 then return math.max((c.newest + c.n) * c.a, c.cd) end
  return c.cd
end

-- Only from the charge's own bucket while it counts, never a bucket that may hold charges from
-- before an adoption.
function B.refund(c, now, token, aux, charged, units)
  if token > c.newest or token <= c.newest - c.n or token * c.a <= c.adat then return 0 end
  for j = 1, #c.idx do
    if c.idx[j] == token then
      local take = math.min(units, c.cnt[j])
      if take <= 0 then return 0 end
      c.cnt[j] = c.cnt[j] - take
      c.u = c.u - take
      c.dirty = true
      return take
    end
  end
  return 0
end

-- Counter::Adopt for sub-buckets: compares with the buckets that start after one period before
-- `sent` (dropped buckets are not compared with); the difference goes to the bucket of now, or
-- of reset - period when the upstream resets sooner (at least the oldest bucket kept).
function B.adopt(c, now, used, reset, key, sent)
  local from = math.min(sent, now) - c.b
  local ours = 0
  for j = 1, #c.idx do
    if c.idx[j] * c.a > from then ours = ours + c.cnt[j] end
  end
  if used <= ours then return ours, 0 end
  local extra = used - ours
  local at = now
  if reset > now and reset - c.b < now then at = reset - c.b end
  bucket_add(c, math.max(math.floor(at / c.a), c.newest - c.n + 1), extra)
  c.u = c.u + extra
  c.adat = now
  c.dirty = true
  return ours, extra
end

-- Counter::View: the units counted now and when the oldest bucket holding some leaves.
function B.view(c)
  for j = 1, #c.idx do
    if c.cnt[j] > 0 then return c.u, (c.idx[j] + c.n) * c.a end
  end
  return c.u, INF
end

-- Both sliding kinds (Report treats them alike, as ledger_report.cc does kSliding).
local function sliding(c) return c.kind == 'slide' or c.kind == 'sb' end
