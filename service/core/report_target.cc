#include "service/core/report_target.h"

#include <algorithm>
#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace quotad {
namespace {

int64_t SatAdd(int64_t a, int64_t b) {
  int64_t out;
  if (__builtin_add_overflow(a, b, &out)) {
    return b > 0 ? std::numeric_limits<int64_t>::max() : std::numeric_limits<int64_t>::min();
  }
  return out;
}

}  // namespace

int ReportTarget(const CompiledCredential& cc, const CompiledFeature& feature,
                 const UpstreamObservation& obs, std::vector<std::string>* warnings) {
  std::vector<int> candidates;
  for (int r : feature.rules) {
    const LimitKind k = cc.rules[r].spec.kind;
    if (!cc.rules[r].spec.scoped &&
        (k == LimitKind::kCalendar || k == LimitKind::kRolling || k == LimitKind::kSliding)) {
      candidates.push_back(r);
    }
  }
  if (obs.limit) {
    for (int r : candidates) {
      if (cc.rules[r].spec.capacity == *obs.limit) return r;
    }
  }
  if (candidates.size() == 1) return candidates[0];
  std::vector<std::string> names;
  for (int r : candidates) names.push_back(cc.rules[r].full_name);
  warnings->push_back(
      absl::StrCat("X-RateLimit-Limit ", obs.limit ? absl::StrCat(*obs.limit) : "(none)",
                   " matches none of ", absl::StrJoin(names, ", "), "; counts not adopted"));
  return -1;
}

std::optional<int64_t> UpstreamUsed(const Rule& rule, const UpstreamObservation& obs) {
  if (obs.used) return obs.used;
  if (!obs.remaining) return std::nullopt;
  return std::max<int64_t>(0, (obs.limit ? *obs.limit : rule.spec.capacity) - *obs.remaining);
}

UpstreamReset CheckUpstreamReset(const Rule& rule, bool has_count, int64_t reset_ns,
                                 int64_t now_ns) {
  if (reset_ns == 0) return UpstreamReset::kInForce;
  if (has_count && rule.spec.kind != LimitKind::kSliding &&
      SatAdd(reset_ns, absl::ToInt64Nanoseconds(absl::Seconds(1))) <= now_ns) {
    return UpstreamReset::kPassed;
  }
  const int64_t longest = absl::ToInt64Nanoseconds(LongestWindow(rule));
  if (reset_ns > SatAdd(SatAdd(now_ns, longest),
                        std::min(longest, absl::ToInt64Nanoseconds(absl::Hours(1))))) {
    return UpstreamReset::kTooFar;
  }
  return UpstreamReset::kInForce;
}

std::string ResetPassedWarning(const Rule& rule, absl::Time reset_at, absl::Time now) {
  return absl::StrCat("X-RateLimit-Reset ", absl::FormatTime(reset_at), " of ", rule.full_name,
                      " has passed (now ", absl::FormatTime(now),
                      "): the counts describe an earlier window; not adopted");
}

std::string ResetTooFarWarning(const Rule& rule, absl::Time reset_at) {
  return absl::StrCat("X-RateLimit-Reset ", absl::FormatTime(reset_at), " of ", rule.full_name,
                      " is more than one window (", absl::FormatDuration(LongestWindow(rule)),
                      ") ahead: the reset is ignored, the counts apply to the window in force");
}

int64_t SlidingAdoptedUntil(const Rule& rule, int64_t reset_ns, int64_t now_ns,
                            int64_t observed_ns) {
  const int64_t release = SatAdd(std::min(now_ns, observed_ns), rule.period_ns);
  return reset_ns <= now_ns || reset_ns > release ? release : reset_ns;
}

absl::Duration ThrottleBackoff(const ThrottleSpec& t, int consecutive) {
  absl::Duration backoff = t.initial_backoff;
  for (int i = 1; i < consecutive && backoff < t.max_backoff; ++i) backoff *= t.multiplier;
  return std::min(backoff, t.max_backoff);
}

std::optional<absl::Duration> ThrottleRelease(const Rule& rule, const ThrottleSpec& t) {
  switch (rule.spec.kind) {
    case LimitKind::kSliding:
    case LimitKind::kRolling:
      return absl::Nanoseconds(rule.period_ns);
    case LimitKind::kTokenBucket:
      return absl::Nanoseconds(rule.emission_ns);
    case LimitKind::kConcurrency:
      return t.initial_backoff;
    default:
      if (rule.spec.scoped) return LongestWindow(rule);
      return std::nullopt;
  }
}

}  // namespace quotad
