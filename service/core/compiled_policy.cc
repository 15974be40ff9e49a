#include "service/core/compiled_policy.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"

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

namespace {

bool SameLimit(const LimitSpec& a, const LimitSpec& b) {
  return a.name == b.name && a.kind == b.kind && a.capacity == b.capacity &&
         a.period == b.period && a.rate == b.rate && a.unit == b.unit &&
         a.zone_name == b.zone_name && a.zone == b.zone && a.sub_buckets == b.sub_buckets &&
         a.scoped == b.scoped && a.guard == b.guard;
}

bool SameThrottle(const ThrottleSpec& a, const ThrottleSpec& b) {
  return a.status_codes == b.status_codes && a.initial_backoff == b.initial_backoff &&
         a.multiplier == b.multiplier && a.max_backoff == b.max_backoff &&
         a.jitter_min == b.jitter_min && a.jitter_max == b.jitter_max;
}

bool SameFeature(const FeatureSpec& a, const FeatureSpec& b) {
  return a.name == b.name && a.draws_on == b.draws_on &&
         a.default_lease_ttl == b.default_lease_ttl && a.max_lease_ttl == b.max_lease_ttl &&
         a.max_scopes == b.max_scopes && SameThrottle(a.throttle, b.throttle) &&
         std::equal(a.limits.begin(), a.limits.end(), b.limits.begin(), b.limits.end(),
                    SameLimit);
}

}  // namespace

bool SameFeatures(const std::vector<FeatureSpec>& a, const std::vector<FeatureSpec>& b) {
  return &a == &b || std::equal(a.begin(), a.end(), b.begin(), b.end(), SameFeature);
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
