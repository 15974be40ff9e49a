#include "tests/sim/never_over_oracle.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/time/civil_time.h"
#include "absl/time/time.h"

namespace quotad::sim {
namespace {

int64_t Ns(absl::Duration d) { return absl::ToInt64Nanoseconds(d); }

std::string FeatureOf(const std::string& full_name) {
  return full_name.substr(0, full_name.find('.'));
}

std::string When(int64_t t) {
  return absl::FormatTime("%Y-%m-%dT%H:%M:%E3S", absl::FromUnixNanos(t), absl::UTCTimeZone());
}

}  // namespace

std::string DescribeLimit(const LimitSpec& l) {
  std::string kind;
  switch (l.kind) {
    case LimitKind::kCalendar: kind = "calendar"; break;
    case LimitKind::kRolling: kind = "rolling"; break;
    case LimitKind::kSliding: kind = "sliding"; break;
    case LimitKind::kTokenBucket: kind = "token_bucket"; break;
    case LimitKind::kConcurrency: kind = "concurrency"; break;
    case LimitKind::kUnlimited: kind = "unlimited"; break;
  }
  std::string out = absl::StrCat(kind, " cap=", l.capacity);
  if (l.kind == LimitKind::kTokenBucket) absl::StrAppend(&out, " rate=", l.rate);
  if (l.kind == LimitKind::kRolling || l.kind == LimitKind::kSliding ||
      l.kind == LimitKind::kTokenBucket) {
    absl::StrAppend(&out, " period=", absl::FormatDuration(l.period));
  }
  if (l.kind == LimitKind::kCalendar || l.kind == LimitKind::kUnlimited) {
    static const char* kUnits[] = {"none", "minute", "hour", "day", "week", "month"};
    absl::StrAppend(&out, " unit=", kUnits[static_cast<int>(l.unit)], " zone=", l.zone_name);
  }
  if (l.guard > absl::ZeroDuration()) absl::StrAppend(&out, " guard=", absl::FormatDuration(l.guard));
  if (l.sub_buckets > 0) absl::StrAppend(&out, " sub_buckets=", l.sub_buckets);
  if (l.scoped) absl::StrAppend(&out, " scoped");
  return out;
}

bool SameSpec(const LimitSpec& a, const LimitSpec& b) {
  return a.kind == b.kind && a.capacity == b.capacity && a.period == b.period && a.rate == b.rate &&
         a.unit == b.unit && a.zone_name == b.zone_name && a.sub_buckets == b.sub_buckets &&
         a.scoped == b.scoped && a.guard == b.guard;
}

void OracleCalendarWindow(CalendarUnit unit, const absl::TimeZone& zone, int64_t t,
                          int64_t* start, int64_t* end) {
  const absl::CivilSecond cs = zone.At(absl::FromUnixNanos(t)).cs;
  absl::Time s, e;
  switch (unit) {
    case CalendarUnit::kMinute:
      s = absl::FromCivil(absl::CivilMinute(cs), zone);
      e = absl::FromCivil(absl::CivilMinute(cs) + 1, zone);
      break;
    case CalendarUnit::kHour:
      s = absl::FromCivil(absl::CivilHour(cs), zone);
      e = absl::FromCivil(absl::CivilHour(cs) + 1, zone);
      break;
    case CalendarUnit::kDay:
      s = absl::FromCivil(absl::CivilDay(cs), zone);
      e = absl::FromCivil(absl::CivilDay(cs) + 1, zone);
      break;
    case CalendarUnit::kWeek: {
      // absl::Weekday counts from Monday = 0: ISO weeks.
      const absl::CivilDay day(cs);
      const absl::CivilDay monday = day - static_cast<int>(absl::GetWeekday(day));
      s = absl::FromCivil(monday, zone);
      e = absl::FromCivil(monday + 7, zone);
      break;
    }
    case CalendarUnit::kMonth:
      s = absl::FromCivil(absl::CivilMonth(cs), zone);
      e = absl::FromCivil(absl::CivilMonth(cs) + 1, zone);
      break;
    case CalendarUnit::kNone:
      *start = INT64_MIN;
      *end = INT64_MAX;
      return;
  }
  *start = absl::ToUnixNanos(s);
  *end = absl::ToUnixNanos(e);
}

const LimitSpec* FindLimit(const CredentialSpec& cred, const std::string& full_name) {
  for (const FeatureSpec& f : cred.features) {
    for (const LimitSpec& l : f.limits) {
      if (absl::StrCat(f.name, ".", l.name) == full_name) return &l;
    }
  }
  return nullptr;
}

std::vector<CounterRef> Touches(const CredentialSpec& cred, const std::string& feature,
                                const std::string& scope) {
  std::vector<CounterRef> out;
  for (const FeatureSpec& f : cred.features) {
    if (f.name != feature) continue;
    for (const LimitSpec& l : f.limits) {
      out.push_back({absl::StrCat(f.name, ".", l.name), l.scoped ? scope : ""});
    }
    for (const std::string& other : f.draws_on) {
      for (const FeatureSpec& g : cred.features) {
        if (g.name != other) continue;
        for (const LimitSpec& l : g.limits) {
          if (!l.scoped) out.push_back({absl::StrCat(g.name, ".", l.name), ""});
        }
      }
    }
  }
  return out;
}

// ---- ProviderLimit ----

void ProviderLimit::Advance(State& s, int64_t t) {
  switch (spec_.kind) {
    case LimitKind::kCalendar:
      // The wall clock may step back into a window already counted: it keeps its units.
      if (t >= s.end || t < s.start) {
        if (s.end != INT64_MIN) s.past[s.start] = s.sum;
        OracleCalendarWindow(spec_.unit, spec_.zone, t, &s.start, &s.end);
        auto it = s.past.find(s.start);
        s.sum = it == s.past.end() ? 0 : it->second;
      }
      break;
    case LimitKind::kRolling:
      if (t >= s.end) s.sum = 0;
      break;
    case LimitKind::kSliding: {
      const int64_t p = Ns(spec_.period);
      while (!s.log.empty() && s.log.front().first <= t - p) {
        s.sum -= s.log.front().second;
        s.log.pop_front();
      }
      break;
    }
    default:
      break;
  }
}

bool ProviderLimit::Fits(const std::string& scope, int64_t t, int64_t units) {
  State& s = states_[scope];
  Advance(s, t);
  switch (spec_.kind) {
    case LimitKind::kCalendar:
    case LimitKind::kRolling:
    case LimitKind::kSliding:
      return s.sum + units <= spec_.capacity;
    case LimitKind::kTokenBucket: {
      const __int128 p = Ns(spec_.period);
      const __int128 now = static_cast<__int128>(t) * spec_.rate;
      const __int128 base = s.has_tat ? std::max(s.tat, now) : now;
      const __int128 tat = base + units * p;
      return tat - spec_.capacity * p <= now;
    }
    default:
      return true;
  }
}

int64_t ProviderLimit::Add(const std::string& scope, int64_t t, int64_t units, bool* over,
                           bool skewed) {
  *over = false;
  State& s = states_[scope];
  Advance(s, t);
  switch (spec_.kind) {
    case LimitKind::kCalendar:
      s.sum += units;
      if (skewed) s.skewed.insert(s.start);
      *over = s.sum > spec_.capacity && s.skewed.count(s.start) == 0;
      return s.sum;
    case LimitKind::kRolling:
      // A request opens the window, whatever it is charged: "24 h from the first request".
      if (t >= s.end) {
        s.start = t;
        s.end = t + Ns(spec_.period);
        s.sum = 0;
      }
      s.sum += units;
      *over = s.sum > spec_.capacity;
      return s.sum;
    case LimitKind::kSliding:
      if (units > 0) s.log.emplace_back(t, units);
      s.sum += units;
      *over = s.sum > spec_.capacity;
      return s.sum;
    case LimitKind::kTokenBucket: {
      if (units == 0) return 0;
      const __int128 p = Ns(spec_.period);
      const __int128 now = static_cast<__int128>(t) * spec_.rate;
      const __int128 base = s.has_tat ? std::max(s.tat, now) : now;
      const __int128 tat = base + units * p;
      if (tat - spec_.capacity * p > now) {
        *over = true;  // the provider refuses it; its state does not move
      } else {
        s.tat = tat;
        s.has_tat = true;
      }
      const __int128 owed = (s.tat - now + p - 1) / p;
      return s.has_tat && s.tat > now ? static_cast<int64_t>(owed) : 0;
    }
    default:
      return 0;
  }
}

int64_t ProviderLimit::Used(const std::string& scope, int64_t t) {
  State& s = states_[scope];
  Advance(s, t);
  switch (spec_.kind) {
    case LimitKind::kRolling:
      return t < s.end ? s.sum : 0;
    case LimitKind::kCalendar:
    case LimitKind::kSliding:
      return s.sum;
    default:
      return 0;
  }
}

int64_t ProviderLimit::OpenSince(int64_t t) {
  int64_t since = t;
  for (auto& [scope, s] : states_) {
    Advance(s, t);
    if (t < s.end) since = std::min(since, s.start);
  }
  return since;
}

int64_t ProviderLimit::ResetNs(const std::string& scope, int64_t t) {
  State& s = states_[scope];
  Advance(s, t);
  switch (spec_.kind) {
    case LimitKind::kCalendar:
      return s.end;
    case LimitKind::kRolling:
      return t < s.end ? s.end : t + Ns(spec_.period);
    case LimitKind::kSliding:
      return t + Ns(spec_.period);  // when everything counted now has left
    default:
      return t;
  }
}

// ---- Oracle ----

bool Oracle::Counts(const std::string& name, const LimitSpec& spec, const Send& s,
                    std::string* scope) {
  const CounterRef* touch = nullptr;
  for (const CounterRef& c : s.touches) {
    if (c.limit == name) touch = &c;
  }
  if (touch == nullptr) return false;
  if (spec.scoped) {
    if (s.outside) return false;
    if (FeatureOf(name) != s.feature) return false;  // draws_on never reaches scoped limits
    *scope = s.scope;
  } else {
    *scope = "";
  }
  return true;
}

// The earliest call that a counter of `spec` still counts at `now`.
int64_t RememberedSince(const LimitSpec& spec, int64_t now) {
  const int64_t guard = absl::ToInt64Nanoseconds(spec.guard);
  const int64_t period = absl::ToInt64Nanoseconds(spec.period);
  switch (spec.kind) {
    case LimitKind::kCalendar:
    case LimitKind::kUnlimited: {
      if (spec.unit == CalendarUnit::kNone) return INT64_MIN;
      int64_t start, end;
      OracleCalendarWindow(spec.unit, spec.zone, now, &start, &end);
      return start - guard;  // a charge in the previous window's guard counts in this one
    }
    case LimitKind::kRolling:
    case LimitKind::kSliding:
      return now - period - guard;
    case LimitKind::kTokenBucket: {
      const int64_t emission = (period + spec.rate - 1) / spec.rate;
      return now - emission * spec.capacity;
    }
    case LimitKind::kConcurrency:
      break;
  }
  return now;
}

void Oracle::ApplyPolicy(const CredentialSpec& cred, int64_t now) {
  std::map<std::string, Version> next;
  for (const FeatureSpec& f : cred.features) {
    for (const LimitSpec& l : f.limits) {
      const std::string name = absl::StrCat(f.name, ".", l.name);
      auto it = current_.find(name);
      if (it != current_.end() && SameSpec(it->second.spec, l)) {
        next[name] = std::move(it->second);
        continue;
      }
      Version v;
      v.spec = l;
      v.from = now;
      v.model = std::make_unique<ProviderLimit>(l);
      v.known_since = current_.empty() ? INT64_MIN : now;  // a limit a reload adds starts empty
      if (it != current_.end()) {
        // The units used so far carry into the new configuration: replay the calls that the
        // old configuration still counted at the reload (what quotad can know of), as the
        // provider would have counted them under the new rule (a call it would refuse is
        // dropped). A brand-new limit starts empty: nobody counted for it.
        const LimitSpec& old = it->second.spec;
        if (old.kind == LimitKind::kConcurrency) {
          // Slots held at the reload count as units sent now.
          for (const auto& [id, lease] : leases_) {
            if (lease.released || lease.expiry <= now) continue;
            Send held;
            held.t = now;
            held.wall = now + wall_offset_;
            held.units = lease.cost;
            held.feature = lease.feature;
            held.scope = lease.scope;
            held.touches = lease.touches;
            Feed(v, name, held, /*check=*/false);
          }
        } else {
          // A rolling window's units count from its opening, which the calls before it decided.
          const int64_t remembered =
              old.kind == LimitKind::kRolling
                  ? it->second.model->OpenSince(now)
                  : TrueTime(old, RememberedSince(old, ModelTime(old, now)));
          v.known_since = std::max(remembered, it->second.known_since);
          // A calendar guard carries quotad's own late charges into the next window, not the
          // outside tool's calls: those count from the window's start.
          int64_t outside_since = v.known_since;
          if (old.kind == LimitKind::kCalendar || old.kind == LimitKind::kUnlimited) {
            outside_since = std::max(
                outside_since,
                TrueTime(old, RememberedSince(old, ModelTime(old, now)) +
                                  absl::ToInt64Nanoseconds(old.guard)));
          }
          for (const Send& s : history_) {
            if (s.t >= (s.outside ? outside_since : v.known_since)) {
              Feed(v, name, s, /*check=*/false);
            }
          }
        }
      }
      next[name] = std::move(v);
    }
  }
  current_ = std::move(next);
  cred_ = cred;
  // A waiter needs, and a lease holds, the counters of its request under the configuration
  // in force.
  for (auto& [arrival, w] : waiters_) w.touches = Touches(cred_, w.feature, w.scope);
  for (auto& [id, l] : leases_) l.touches = Touches(cred_, l.feature, l.scope);
}

void Oracle::Reset(int64_t now) {
  for (auto& [name, v] : current_) {
    if (v.spec.kind == LimitKind::kConcurrency) continue;  // slots are live leases (Held)
    v.model = std::make_unique<ProviderLimit>(v.spec);
    v.from = now;
    v.known_since = now;
  }
  // Dropped rather than cut by time: a call made at the reset's very instant, before it, must
  // not come back in a reload's replay.
  forgotten_ += static_cast<int64_t>(history_.size());
  history_.clear();
  cooled_until_.clear();
}

namespace {

bool OnWall(const LimitSpec& spec) {
  return (spec.kind == LimitKind::kCalendar || spec.kind == LimitKind::kUnlimited) &&
         spec.unit != CalendarUnit::kNone;
}

}  // namespace

int64_t Oracle::ModelTime(const LimitSpec& spec, int64_t t) const {
  return OnWall(spec) && t != INT64_MAX && t != INT64_MIN ? t + wall_offset_ : t;
}

int64_t Oracle::TrueTime(const LimitSpec& spec, int64_t model_t) const {
  return OnWall(spec) && model_t != INT64_MAX && model_t != INT64_MIN ? model_t - wall_offset_
                                                                      : model_t;
}

std::string Oracle::Feed(Version& v, const std::string& name, const Send& s, bool check) {
  std::string scope;
  if (!Counts(name, v.spec, s, &scope)) return "";
  const int64_t t = OnWall(v.spec) ? s.wall : s.t;
  if (!check && !v.model->Fits(scope, t, s.units)) return "";
  bool over = false;
  bool skewed = s.wall != s.t;
  if (OnWall(v.spec) && !skews_.empty()) {
    int64_t start, end;
    OracleCalendarWindow(v.spec.unit, v.spec.zone, t, &start, &end);
    for (const auto& [from, to] : skews_) skewed |= start < to && from < end;
  }
  const int64_t holds = v.model->Add(scope, t, s.units, &over, skewed);
  if (!check || !over) return "";
  if (v.spec.kind == LimitKind::kTokenBucket) {
    return absl::StrCat("provider limit ", name, scope.empty() ? "" : absl::StrCat("[", scope, "]"),
                        " (", DescribeLimit(v.spec), ", in force since ", When(v.from),
                        ") refuses ", s.units, " units at ", When(s.t),
                        ": the bucket owes ", holds, " units (burst ", v.spec.capacity, ")");
  }
  return absl::StrCat("provider limit ", name, scope.empty() ? "" : absl::StrCat("[", scope, "]"),
                      " (", DescribeLimit(v.spec), ", in force since ", When(v.from),
                      ") holds ", holds, " units > capacity ", v.spec.capacity, " after ", s.units,
                      " at ", When(s.t));
}

std::string Oracle::SendOurs(int64_t t, const std::string& feature, const std::string& scope,
                             int64_t units) {
  Send s;
  s.t = t;
  s.wall = t + wall_offset_;
  s.units = units;
  s.feature = feature;
  s.scope = scope;
  s.touches = Touches(cred_, feature, scope);
  history_.push_back(s);
  std::string violation;
  for (const CounterRef& c : s.touches) {
    auto it = current_.find(c.limit);
    if (it == current_.end()) continue;
    std::string v = Feed(it->second, c.limit, s, /*check=*/true);
    if (violation.empty()) violation = v;
  }
  return violation;
}

bool Oracle::SendOutside(int64_t t, const std::string& limit, int64_t units) {
  auto it = current_.find(limit);
  if (it == current_.end() || !it->second.model->Fits("", ModelTime(it->second.spec, t), units)) {
    return false;
  }
  Send s;
  s.t = t;
  s.wall = t + wall_offset_;
  s.units = units;
  s.touches = {{limit, ""}};
  s.outside = true;
  history_.push_back(s);
  Feed(it->second, limit, s, /*check=*/false);
  return true;
}

ProviderLimit* Oracle::Current(const std::string& limit) {
  auto it = current_.find(limit);
  return it == current_.end() ? nullptr : it->second.model.get();
}

std::string Oracle::Grant(uint64_t lease, int64_t t, const std::string& feature,
                          const std::string& scope, int64_t cost, int64_t expiry) {
  Lease& l = leases_[lease];
  l.touches = Touches(cred_, feature, scope);
  l.scope = scope;
  l.cost = cost;
  l.expiry = expiry;
  l.feature = feature;
  for (const CounterRef& c : l.touches) {
    const LimitSpec* spec = FindLimit(cred_, c.limit);
    if (spec == nullptr || spec->kind != LimitKind::kConcurrency) continue;
    const int64_t held = Held(c, t, false);
    if (held > spec->capacity) {
      return absl::StrCat("concurrency ", c.limit, c.scope.empty() ? "" : "[" + c.scope + "]",
                          " has ", held, " units held by live leases > capacity ",
                          spec->capacity, " at ", When(t));
    }
  }
  return "";
}

Oracle::Lease* Oracle::FindLease(uint64_t lease) {
  auto it = leases_.find(lease);
  return it == leases_.end() ? nullptr : &it->second;
}

int64_t Oracle::Held(const CounterRef& c, int64_t t, bool with_ghosts) const {
  int64_t held = 0;
  for (const auto& [id, l] : leases_) {
    if (l.expiry <= t) continue;
    if (l.released && !(with_ghosts && l.ghost)) continue;
    for (const CounterRef& x : l.touches) {
      if (x == c) held += l.cost;
    }
  }
  return held;
}

std::string Oracle::CheckNotPassing(uint64_t arrival, int priority,
                                    const std::vector<CounterRef>& touches, int64_t t,
                                    const std::string& what) {
  for (const auto& [a, w] : waiters_) {
    if (a >= arrival) break;
    if (w.priority < priority || t >= w.deadline) continue;
    auto cool = cooled_until_.find(w.feature);
    if (cool != cooled_until_.end() && t < cool->second) continue;
    for (const CounterRef& c : touches) {
      const LimitSpec* spec = FindLimit(cred_, c.limit);
      if (spec == nullptr || spec->kind == LimitKind::kUnlimited) continue;
      if (std::find(w.touches.begin(), w.touches.end(), c) == w.touches.end()) continue;
      return absl::StrCat(what, " (arrival #", arrival, ", priority ", priority,
                          ") was granted on ", c.limit, c.scope.empty() ? "" : "[" + c.scope + "]",
                          " while waiter #", a, " (", w.feature,
                          w.scope.empty() ? "" : "/" + w.scope, " cost ", w.cost, ", priority ",
                          w.priority, ", deadline ", When(w.deadline),
                          ") that needs it was still waiting, at ", When(t));
    }
  }
  return "";
}

}  // namespace quotad::sim
