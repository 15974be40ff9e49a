#include "service/core/compiled_policy.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

namespace quotad {

absl::Duration LongestWindow(const Rule& rule) {
  switch (rule.spec.kind) {
    case LimitKind::kCalendar:
    case LimitKind::kUnlimited:
      switch (rule.spec.unit) {
        case CalendarUnit::kMinute:
          return absl::Minutes(1) + rule.spec.guard;
        case CalendarUnit::kHour:
          return absl::Hours(1) + rule.spec.guard;
        case CalendarUnit::kDay:
          return absl::Hours(25) + rule.spec.guard;  // a day with a DST change
        case CalendarUnit::kWeek:
          return absl::Hours(24 * 7 + 1) + rule.spec.guard;
        case CalendarUnit::kMonth:
        case CalendarUnit::kNone:
          return absl::Hours(24 * 31 + 1) + rule.spec.guard;
      }
      break;
    case LimitKind::kRolling:
    case LimitKind::kSliding:
      return absl::Nanoseconds(rule.span_ns);
    case LimitKind::kTokenBucket:
      return absl::Nanoseconds(rule.emission_ns) * rule.spec.capacity;
    case LimitKind::kConcurrency:
      break;
  }
  return absl::ZeroDuration();
}

int64_t RecoveryNs(const Rule& rule) {
  // Slots held from outside free as their calls end: a short period.
  if (rule.spec.kind == LimitKind::kConcurrency) return absl::ToInt64Nanoseconds(absl::Seconds(10));
  return std::max<int64_t>(1, absl::ToInt64Nanoseconds(LongestWindow(rule) - rule.spec.guard));
}

bool Estimable(const Rule& rule) {
  return !rule.spec.scoped && rule.spec.kind != LimitKind::kUnlimited && rule.Capacity() > 1;
}

CompiledCredential::CompiledCredential(const std::vector<FeatureSpec>& features_in)
    : spec_features(features_in) {
  for (const FeatureSpec& f : spec_features) {
    feature_index[f.name] = static_cast<int>(features.size());
    CompiledFeature cf;
    cf.name = f.name;
    cf.default_lease_ttl = f.default_lease_ttl;
    cf.max_lease_ttl = f.max_lease_ttl;
    cf.max_scopes = f.max_scopes;
    cf.throttle = f.throttle;
    for (const LimitSpec& l : f.limits) {
      const int index = static_cast<int>(rules.size());
      rules.emplace_back(l, absl::StrCat(f.name, ".", l.name));
      rule_index[rules.back().full_name] = index;
      cf.rules.push_back(index);
    }
    features.push_back(std::move(cf));
  }
  for (size_t fi = 0; fi < spec_features.size(); ++fi) {
    CompiledFeature& cf = features[fi];
    for (const std::string& other : spec_features[fi].draws_on) {
      for (int r : features[feature_index.at(other)].rules) {
        if (rules[r].spec.scoped || r < 0) continue;
        // Only the other feature's own limits, not what it draws on in turn.
        if (rules[r].full_name.rfind(absl::StrCat(other, "."), 0) != 0) continue;
        cf.rules.push_back(r);
      }
    }
    cf.max_cooldown = std::max(cf.throttle.max_backoff, cf.max_lease_ttl);
    for (int r : cf.rules) {
      const Rule& rule = rules[r];
      cf.max_cooldown = std::max(cf.max_cooldown, LongestWindow(rule));
      if (rule.spec.scoped && cf.first_scoped_rule < 0) cf.first_scoped_rule = r;
      if (rule.spec.kind == LimitKind::kConcurrency) cf.has_concurrency = true;
      if (rule.spec.kind != LimitKind::kUnlimited && rule.spec.capacity < cf.min_capacity) {
        cf.min_capacity = rule.spec.capacity;
        cf.min_capacity_rule = r;
      }
    }
  }
}

std::string Fingerprint(const std::vector<FeatureSpec>& features) {
  std::string out;
  for (const FeatureSpec& f : features) {
    absl::StrAppend(&out, f.name, "{", absl::StrJoin(f.draws_on, ","), ";",
                    absl::ToInt64Nanoseconds(f.default_lease_ttl), ";",
                    absl::ToInt64Nanoseconds(f.max_lease_ttl), ";", f.max_scopes, ";",
                    absl::StrJoin(f.throttle.status_codes, ","), ";",
                    absl::ToInt64Nanoseconds(f.throttle.initial_backoff), ";",
                    f.throttle.multiplier, ";", absl::FormatDuration(f.throttle.max_backoff), ";",
                    f.throttle.jitter_min, ";", f.throttle.jitter_max, ";");
    for (const LimitSpec& l : f.limits) {
      absl::StrAppend(&out, "[", l.name, ";", static_cast<int>(l.kind), ";", l.capacity, ";",
                      absl::ToInt64Nanoseconds(l.period), ";", l.rate, ";",
                      static_cast<int>(l.unit), ";", l.zone_name, ";", l.sub_buckets, ";", l.scoped,
                      ";", absl::ToInt64Nanoseconds(l.guard), "]");
    }
    out += "}";
  }
  return out;
}

int CurrentRule(const CompiledCredential& then, const CompiledCredential& now, int r) {
  if (&then == &now) return r;
  auto it = now.rule_index.find(then.rules[r].full_name);
  return it == now.rule_index.end() ? -1 : it->second;
}

bool ShareCounter(const CompiledCredential& cc, int fa, absl::string_view sa, int fb,
                  absl::string_view sb) {
  for (int ra : cc.features[fa].rules) {
    if (cc.rules[ra].spec.kind == LimitKind::kUnlimited) continue;
    for (int rb : cc.features[fb].rules) {
      if (ra == rb && (!cc.rules[ra].spec.scoped || sa == sb)) return true;
    }
  }
  return false;
}

}  // namespace quotad
