#include "service/core/policy.h"

#include <string>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "service/core/names.h"

namespace quotad {

absl::string_view LimitKindName(LimitKind kind) {
  switch (kind) {
    case LimitKind::kCalendar:
      return "calendar";
    case LimitKind::kRolling:
      return "rolling";
    case LimitKind::kSliding:
      return "sliding";
    case LimitKind::kTokenBucket:
      return "token_bucket";
    case LimitKind::kConcurrency:
      return "concurrency";
    case LimitKind::kUnlimited:
      return "unlimited";
  }
  return "unknown";
}

absl::string_view CalendarUnitName(CalendarUnit unit) {
  switch (unit) {
    case CalendarUnit::kNone:
      return "none";
    case CalendarUnit::kMinute:
      return "minute";
    case CalendarUnit::kHour:
      return "hour";
    case CalendarUnit::kDay:
      return "day";
    case CalendarUnit::kWeek:
      return "week";
    case CalendarUnit::kMonth:
      return "month";
  }
  return "unknown";
}

namespace {

// `where()` names the feature; it is called, and the message built, only for a bad value (a
// start-up validates a million credentials' limits).
template <typename Where>
absl::Status ValidateLimit(const Where& where, const LimitSpec& l) {
  if (!CheckLimitName(l.name).ok()) return CheckLimitName(l.name, absl::StrCat(where(), " limit"));
  auto bad = [&](absl::string_view field, auto value) {
    return absl::InvalidArgumentError(
        absl::StrCat(where(), " limit '", l.name, "': bad ", field, " ", value));
  };
  if (l.kind != LimitKind::kUnlimited && (l.capacity <= 0 || l.capacity > kMaxCapacity)) {
    return bad("capacity", absl::StrCat(l.capacity, " (must be 1..", kMaxCapacity, ")"));
  }
  if (l.guard < absl::ZeroDuration() || l.guard > kMaxGuard) {
    return bad("guard", absl::FormatDuration(l.guard));
  }
  switch (l.kind) {
    case LimitKind::kCalendar:
      if (l.unit == CalendarUnit::kNone) return bad("unit", "none (calendar needs a unit)");
      break;
    case LimitKind::kRolling:
    case LimitKind::kSliding:
      if (l.period <= absl::ZeroDuration() || l.period > kMaxPeriod) {
        return bad("period", absl::FormatDuration(l.period));
      }
      if (l.sub_buckets < 0 || l.sub_buckets > kMaxSubBuckets) {
        return bad("sub_buckets", l.sub_buckets);
      }
      if (l.sub_buckets > 0 && l.period < absl::Nanoseconds(l.sub_buckets)) {
        return bad("sub_buckets", l.sub_buckets);
      }
      break;
    case LimitKind::kTokenBucket:
      if (l.period <= absl::ZeroDuration() || l.period > kMaxPeriod) {
        return bad("period", absl::FormatDuration(l.period));
      }
      if (l.rate <= 0 || absl::ToInt64Nanoseconds(l.period) / l.rate <= 0) {
        return bad("rate", l.rate);
      }
      // The bucket's arithmetic adds burst * (period / rate) to a time: keep it far from int64.
      if (const int64_t emission = (absl::ToInt64Nanoseconds(l.period) + l.rate - 1) / l.rate;
          emission > absl::ToInt64Nanoseconds(kMaxRefillSpan) / l.capacity) {
        return bad("capacity", absl::StrCat(l.capacity, ": refilling a burst of ", l.capacity,
                                            " at ", l.rate, " per ", absl::FormatDuration(l.period),
                                            " takes longer than ",
                                            absl::FormatDuration(kMaxRefillSpan)));
      }
      break;
    case LimitKind::kConcurrency:
    case LimitKind::kUnlimited:
      break;
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidatePolicy(const Policy& policy) {
  // Names point into `policy`; the per-credential sets are reused (cleared, not freed), and
  // the messages built only for a bad value: no allocation per credential.
  absl::flat_hash_set<absl::string_view> credentials;
  credentials.reserve(policy.credentials.size());
  absl::flat_hash_set<absl::string_view> features;
  absl::flat_hash_set<absl::string_view> limits;
  for (const CredentialSpec& c : policy.credentials) {
    if (auto s = CheckCredentialName(c.name); !s.ok()) return s;
    if (!credentials.insert(c.name).second) {
      return absl::InvalidArgumentError(absl::StrCat("duplicate credential '", c.name, "'"));
    }
    if (c.features.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("credential '", c.name, "' has no features"));
    }
    features.clear();
    for (const FeatureSpec& f : c.features) {
      auto where = [&] { return absl::StrCat("credential '", c.name, "' feature '", f.name, "'"); };
      if (!CheckFeatureName(f.name).ok()) {
        return CheckFeatureName(f.name, absl::StrCat("credential '", c.name, "' feature"));
      }
      if (!features.insert(f.name).second) {
        return absl::InvalidArgumentError(absl::StrCat(where(), ": duplicate feature"));
      }
      limits.clear();
      for (const LimitSpec& l : f.limits) {
        if (auto s = ValidateLimit(where, l); !s.ok()) return s;
        if (!limits.insert(l.name).second) {
          return absl::InvalidArgumentError(
              absl::StrCat(where(), ": duplicate limit '", l.name, "'"));
        }
      }
      if (f.default_lease_ttl <= absl::ZeroDuration() || f.max_lease_ttl < f.default_lease_ttl ||
          f.max_lease_ttl > kMaxLeaseTtl) {
        return absl::InvalidArgumentError(absl::StrCat(
            where(), ": bad lease ttls default ", absl::FormatDuration(f.default_lease_ttl),
            " max ", absl::FormatDuration(f.max_lease_ttl)));
      }
      if (f.max_scopes <= 0) {
        return absl::InvalidArgumentError(absl::StrCat(where(), ": bad max_scopes ", f.max_scopes));
      }
    }
    for (const FeatureSpec& f : c.features) {
      for (const std::string& other : f.draws_on) {
        if (other == f.name || !features.contains(other)) {
          return absl::InvalidArgumentError(absl::StrCat("credential '", c.name, "' feature '",
                                                         f.name, "': bad draws_on '", other, "'"));
        }
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace quotad
