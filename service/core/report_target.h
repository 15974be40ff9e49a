#ifndef QUOTAD_SERVICE_CORE_REPORT_TARGET_H_
#define QUOTAD_SERVICE_CORE_REPORT_TARGET_H_

// The decisions of Report that depend only on a parsed answer and the policy, shared by the
// embedded ledger (ledger_report.cc) and shared mode (service/store/redis/redis_backend.cc,
// which applies them on Redis's clock; quotad_functions.lua mirrors the time checks): which of a
// feature's limits the X-RateLimit-* counts describe, the count they give it, whether their
// reset is of the window in force, and the back-off a throttle without a time gets. Pure
// functions of their arguments; no state, thread-safe.

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "service/core/compiled_policy.h"
#include "service/core/upstream.h"

namespace quotad {

// The feature's limit the counts describe (an index into cc.rules): among its unscoped
// calendar, rolling and sliding limits, the first whose capacity is X-RateLimit-Limit, else the
// only one. -1 when none matches; then a warning naming the candidates is appended. Call only
// when the answer has a limit, remaining or used count.
int ReportTarget(const CompiledCredential& cc, const CompiledFeature& feature,
                 const UpstreamObservation& obs, std::vector<std::string>* warnings);

// The upstream's used count for `rule`: X-RateLimit-Used, else Limit (or the rule's capacity)
// minus Remaining, at least 0. nullopt when the answer gives neither. Not capped.
std::optional<int64_t> UpstreamUsed(const Rule& rule, const UpstreamObservation& obs);

// Whether a count whose window resets at `reset_ns` describes the window in force at `now_ns`
// (both in one time base; reset_ns 0: unknown).
enum class UpstreamReset {
  kInForce,
  // The reset passed a second or more ago (X-RateLimit-Reset is in whole seconds): the counts
  // describe an earlier window and are not adopted. Only with a count, never for sliding limits
  // (their reset only says the oldest unit left; the count still holds).
  kPassed,
  // Later than any window of the limit ends (more than one window, plus up to an hour, ahead):
  // the counts apply to the window in force, the reset is ignored.
  kTooFar,
};
UpstreamReset CheckUpstreamReset(const Rule& rule, bool has_count, int64_t reset_ns,
                                 int64_t now_ns);
// The warnings for kPassed and kTooFar.
std::string ResetPassedWarning(const Rule& rule, absl::Time reset_at, absl::Time now);
std::string ResetTooFarWarning(const Rule& rule, absl::Time reset_at);

// Sliding: until when adopted units count. Those the upstream counted when the answer was seen
// (`observed_ns`) were charged before then, so they leave one period later at the latest; an
// upstream reset before that (and after now) is kept.
int64_t SlidingAdoptedUntil(const Rule& rule, int64_t reset_ns, int64_t now_ns,
                            int64_t observed_ns);

// A throttle with no time from the upstream: the back-off after `consecutive` throttles in a row
// (1: the first), initial_backoff * multiplier^(consecutive - 1), at most max_backoff.
absl::Duration ThrottleBackoff(const ThrottleSpec& throttle, int consecutive);
// How long `rule` takes to release units, which bounds that back-off: a sliding or rolling
// period, a bucket's emission interval, the initial back-off for slots, a scoped calendar's
// longest window. nullopt for an unscoped calendar or unlimited limit: the rest of its window
// (which the caller's counter knows).
std::optional<absl::Duration> ThrottleRelease(const Rule& rule, const ThrottleSpec& throttle);

}  // namespace quotad

#endif  // QUOTAD_SERVICE_CORE_REPORT_TARGET_H_
