-- quotad's function library, what Report learns of use outside quotad (the embedded library is
-- quotad.lua, ..., quotad_queue.lua, this file, then quotad_functions.lua, as one source: see
-- embed_lua.cmake). quotad_report shrinks the estimates and counts the throttles; quotad_acquire
-- (and the batches and waiters that go through it) holds the estimated units back; quotad_usage
-- and the Decision's limits show them; quotad_reset forgets them.

---------------------------------------------------------------------------------------------
-- Outside estimates (OutsideEstimate, service/core/outside_estimate.cc), in field ~o of the
-- credential's hash: a cmsgpack map from an unscoped counter's name to {outside, at, consecutive,
-- recovery}: `outside` units as of `at` (Redis time, us), the throttles since the last clean
-- answer (for the doubling back-off), and the limit's recovery period (RecoveryNs, us) as of the
-- last Report (an Acquire decays the estimate with it; a reload that changed the period takes
-- effect at the next Report). Entry '[' .. feature (no limit's name holds a bracket) counts the
-- throttles attributed to the feature's scoped limits, which cool the feature down.
-- The cooldown OutsideEstimate also holds is the counter's own (cd).

local O = {}
O.DECREASE = 0.9            -- OutsideEstimate::kDecrease
O.RECOVERY_PER_PERIOD = 0.05 -- OutsideEstimate::kRecoveryPerPeriod

-- The estimates of a credential (field ~o's value, or nil); an empty table when none.
function O.decode(v)
  if not v then return {} end
  return cmsgpack.unpack(v)
end

-- Whether the estimate of counter `c` is kept at all (Estimable: unscoped, can deny, capacity
-- above one unit; a scoped counter's name is never an entry's).
local function estimable(c) return c.kind ~= 'unl' and c.cap > 1 and c.cap < INF end

-- OutsideEstimate::Units: the estimated outside units at `now`, in [0, cap - 1].
function O.units(e, cap, now)
  if not e or e[1] <= 0 or cap <= 1 or e[4] <= 0 then return 0 end
  local start = math.min(e[1], cap - 1)
  local recovered = cap * O.RECOVERY_PER_PERIOD * math.max(0, now - e[2]) / e[4]
  return math.max(0, math.min(start - recovered, cap - 1))
end

-- OutsideEstimate::HoldBack: the units of counter `c` held back from a grant of `cost` at
-- `now` (rounded to nearest, never more than cap - cost).
function O.hold(oe, c, cost, now)
  local e = oe[c.name]
  if not e or not estimable(c) then return 0 end
  local units = O.units(e, c.cap, now)
  if units <= 0 then return 0 end
  return math.max(0, math.min(math.floor(units + 0.5), math.max(0, c.cap - cost)))
end

-- OutsideEstimate::OnThrottle: the effective capacity shrinks by DECREASE (at least one unit),
-- never below one unit.
function O.shrink(e, cap, now)
  if cap <= 1 or cap >= INF then return end
  local effective = cap - O.units(e, cap, now)
  local nxt = math.max(1, math.min(effective * O.DECREASE, effective - 1))
  e[1], e[2] = cap - nxt, now
end

-- OutsideEstimate::GoneAt: when the estimate has decayed to nothing.
function O.gone_at(e, cap)
  if e[1] <= 0 or cap <= 1 or e[4] <= 0 then return e[2] end
  local per_us = cap * O.RECOVERY_PER_PERIOD / e[4]
  return e[2] + math.ceil(math.min(e[1], cap - 1) / per_us)
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

-- The value to write for field ~o after a Report that used counters `cs` (nil: delete it), and
-- how long the hash must keep it: an estimate until it has decayed, a throttle count for
-- `count_us` more (the feature's max_cooldown; embedded: until a clean answer; never for ever,
-- which would keep every drained scope of the credential with it). Entries of counters not in
-- `cs` are kept as they are.
function O.encode(oe, cs, now, count_us)
  local cap = {}
  for _, c in ipairs(cs) do
    if c.name then cap[c.name] = c.cap end -- (not the feature's cooldown, see report)
  end
  local keep, need, any = {}, -INF, false
  for name, e in pairs(oe) do
    local cp = cap[name]
    local live = e[3] > 0 or (cp == nil and e[1] > 0) or (cp ~= nil and O.units(e, cp, now) > 0)
    if live then
      keep[name], any = e, true
      if e[3] > 0 then
        need = math.max(need, now + count_us, cp ~= nil and O.gone_at(e, cp) or e[2] + 20 * e[4])
      elseif cp ~= nil then
        need = math.max(need, O.gone_at(e, cp))
      else
        need = math.max(need, e[2] + 20 * e[4]) -- 1 / RECOVERY_PER_PERIOD periods
      end
    end
  end
  if not any then return nil, -INF end
  return cmsgpack.pack(keep), need
end
