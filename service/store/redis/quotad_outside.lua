-- quotad's function library, what Report learns of use outside quotad (the embedded library is
-- quotad.lua, ..., quotad_queue.lua, this file, then quotad_functions.lua, as one source: see
-- embed_lua.cmake). quotad_report shrinks the estimates and counts the throttles; quotad_acquire
-- (and the batches and waiters that go through it) holds the estimated units back; quotad_usage
-- and the Decision's limits show them; quotad_reset forgets them.

---------------------------------------------------------------------------------------------
-- Outside estimates (OutsideEstimate, service/core/outside_estimate.cc), in field ~o of the
-- credential's hash: a cmsgpack map from a limit's name to {outside, at, consecutive, recovery,
-- cooldown}: `outside` units as of `at` (Redis time, us), the throttles since the last clean
-- answer (for the doubling back-off), the limit's recovery period when last written (only to
-- know how long to keep an entry whose limit a later Report does not bring), and until when the
-- limit cools down (also in its counter's state, cd; kept here by the limit's name, it holds
-- every scope of a scoped limit and outlives a reload that changes the limit's scoping). Every
-- decision decays the estimate over the recovery period of the limit in force (O.recovery, as
-- RecoveryNs), so a reload that changed the period takes effect at once. A scoped limit's entry
-- counts its throttles and holds its cooldown; its estimate stays 0, as embedded.

local O = {}
O.DECREASE = 0.9            -- OutsideEstimate::kDecrease
O.RECOVERY_PER_PERIOD = 0.05 -- OutsideEstimate::kRecoveryPerPeriod
O.COUNT_KEPT_US = 24 * 3600000000 -- a throttle count keeps the hash at most this long

-- The estimates of a credential (field ~o's value, or nil); an empty table when none.
function O.decode(v)
  if not v then return {} end
  return cmsgpack.unpack(v)
end

-- Whether the estimate of counter `c` is kept at all (Estimable: unscoped, can deny, capacity
-- above one unit; a scoped counter's name, limit[scope], is never an entry's).
local function estimable(c) return c.kind ~= 'unl' and c.cap > 1 and c.cap < INF end

-- The longest calendar window of each unit, in us (LongestWindow without the guard).
local HOUR_US = 3600000000
local UNIT_US = {minute = 60000000, hour = HOUR_US, day = 25 * HOUR_US,
                 week = (24 * 7 + 1) * HOUR_US, month = (24 * 31 + 1) * HOUR_US}

-- RecoveryNs of counter `c` (from what defines it, in us): what it takes to release units
-- (LongestWindow - guard); 10 s for concurrency (slots free as calls end).
function O.recovery(c)
  local k = c.kind
  if k == 'cal' or k == 'unl' then
    local unit = c.sx and string.match(c.sx, '^[^:]+')
    return UNIT_US[unit] or UNIT_US.month
  end
  if k == 'roll' then return c.a end         -- the period (span = period + guard)
  if k == 'slide' or k == 'sb' then return c.b end
  if k == 'tb' then return c.a * c.cap end   -- emission interval * burst
  return 10000000
end

-- OutsideEstimate::Units: the estimated outside units at `now`, in [0, cap - 1], decaying over
-- `rec` us.
function O.units(e, cap, rec, now)
  if not e or e[1] <= 0 or cap <= 1 or rec <= 0 then return 0 end
  local start = math.min(e[1], cap - 1)
  local recovered = cap * O.RECOVERY_PER_PERIOD * math.max(0, now - e[2]) / rec
  return math.max(0, math.min(start - recovered, cap - 1))
end

-- OutsideEstimate::HoldBack: the units of counter `c` held back from a grant of `cost` at
-- `now` (rounded to nearest, never more than cap - cost).
function O.hold(oe, c, cost, now)
  local e = oe[c.name]
  if not e or not estimable(c) then return 0 end
  local units = O.units(e, c.cap, O.recovery(c), now)
  if units <= 0 then return 0 end
  return math.max(0, math.min(math.floor(units + 0.5), math.max(0, c.cap - cost)))
end

-- OutsideEstimate::OnThrottle: the effective capacity shrinks by DECREASE (at least one unit),
-- never below one unit.
function O.shrink(e, cap, rec, now)
  if cap <= 1 or cap >= INF then return end
  local effective = cap - O.units(e, cap, rec, now)
  local nxt = math.max(1, math.min(effective * O.DECREASE, effective - 1))
  e[1], e[2] = cap - nxt, now
end

-- When the estimate is gone whatever the capacity (OutsideEstimate::GoneAt is at most this):
-- its units decay by RECOVERY_PER_PERIOD of the capacity per period, and never number more than
-- the capacity.
local function gone_at(e)
  if e[1] <= 0 or e[4] <= 0 then return e[2] end
  return e[2] + math.ceil(e[4] / O.RECOVERY_PER_PERIOD)
end

-- ThrottleBackoff: `initial` doubled (times `mult`) per throttle after the first, at most `max`.
function O.backoff(initial, mult, max, consecutive)
  local bo = initial
  if mult > 1 then
    for _ = 2, consecutive do
      if bo >= max then break end
      bo = bo * mult
    end
  end
  return math.min(bo, max)
end

-- The value to write for field ~o after a Report (nil: delete it), and how long the hash must
-- keep it: an estimate until it has decayed, a cooldown until it ends, a throttle count for
-- `count_us` more (the feature's max_cooldown, at most a day; embedded: until a clean answer;
-- never for ever, which would keep every drained scope of the credential with it).
-- (Kept until gone whatever the capacity: a reload that raises a capacity of 1 finds the
-- estimate learnt before, as the embedded ledger does.)
function O.encode(oe, now, count_us)
  local keep, need, any = {}, -INF, false
  for name, e in pairs(oe) do
    local gone = math.max(gone_at(e), e[5] or 0)
    if e[3] > 0 or gone > now then
      keep[name], any = e, true
      need = math.max(need, gone)
      if e[3] > 0 then need = math.max(need, now + math.min(count_us, O.COUNT_KEPT_US)) end
    end
  end
  if not any then return nil, -INF end
  return cmsgpack.pack(keep), need
end
