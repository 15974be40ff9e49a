#ifndef QUOTAD_SERVICE_CORE_POLICY_H_
#define QUOTAD_SERVICE_CORE_POLICY_H_

// The validated, in-memory form of the configuration: what the ledger enforces.
// Plain values; service/config builds them from YAML, tests build them directly.
//
// A field added to LimitSpec, ThrottleSpec or FeatureSpec goes into SameFeatures and its hash
// (compiled_policy.{h,cc}) too: credentials whose features compare the same share one compiled
// policy, and a reload keeps the compiled policy of a credential whose features compare the same.

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "service/core/bounds.h"

namespace quotad {

enum class LimitKind {
  kCalendar,     // resets at calendar boundaries (unit + zone)
  kRolling,      // opens at the first charge after the previous window closed, lasts `period`
  kSliding,      // at most `capacity` units in any interval of length `period`
  kTokenBucket,  // GCRA: `rate` units per `period`, burst `capacity`
  kConcurrency,  // at most `capacity` units held by live leases at once
  kUnlimited,    // counted (per `unit` if set, else since start) and never denies
};

enum class CalendarUnit { kNone, kMinute, kHour, kDay, kWeek, kMonth };

absl::string_view LimitKindName(LimitKind kind);
absl::string_view CalendarUnitName(CalendarUnit unit);

// One rule. Names are unique within a feature; the ledger reports them as "feature.name".
struct LimitSpec {
  std::string name;
  LimitKind kind = LimitKind::kSliding;
  // Window/sliding: units per window. Token bucket: burst. Concurrency: slots. Unlimited: unused.
  int64_t capacity = 0;
  // Rolling and sliding: the window length. Token bucket: the time in which `rate` units refill.
  absl::Duration period = absl::ZeroDuration();
  // Token bucket only: units added per `period`.
  int64_t rate = 0;
  // Calendar (and optionally unlimited): the boundary unit and the zone the calendar is read in.
  CalendarUnit unit = CalendarUnit::kNone;
  absl::TimeZone zone = absl::UTCTimeZone();
  std::string zone_name = "UTC";
  // Sliding only: 0 keeps an exact log of charges (memory grows with capacity); N > 0 keeps N
  // sub-buckets of period/N each, which may under-grant by at most period/N, never over-grant.
  int sub_buckets = 0;
  // Each scope value of the feature gets its own counter for this limit.
  bool scoped = false;
  // How much later than quotad's grant a request may reach the upstream, with varying delay.
  // Sliding: a charge counts for period + guard. Rolling: a window lasts period + guard.
  // Calendar: a charge made within `guard` before the window ends counts in the next window
  // too. Costs at most `guard` worth of grants per window; never over-grants.
  absl::Duration guard = absl::ZeroDuration();
};

// What the upstream's throttle answers mean (from the profile): which statuses throttle, and how
// long the feature cools down when the answer carries no Retry-After: initial, initial *
// multiplier, ... capped at max_backoff, each plus a random fraction in [jitter_min, jitter_max].
struct ThrottleSpec {
  std::vector<int> status_codes = {429};
  absl::Duration initial_backoff = absl::Seconds(1);
  double multiplier = 2.0;
  absl::Duration max_backoff = absl::Minutes(5);
  double jitter_min = 0;
  double jitter_max = 0;
};

// A separately counted family of calls on a credential.
struct FeatureSpec {
  std::string name;
  std::vector<LimitSpec> limits;
  // Other features of the same credential whose unscoped limits every charge also counts against
  // (CyberVault's threats_scan also counts against `requests`). One level: not transitive.
  std::vector<std::string> draws_on;
  // TTL of a lease when Acquire does not ask for one, and the longest TTL a caller may ask for.
  absl::Duration default_lease_ttl = absl::Minutes(1);
  absl::Duration max_lease_ttl = absl::Hours(24);
  // At most this many distinct scope values per feature; beyond, Acquire with a new scope fails.
  int64_t max_scopes = 10000;
  ThrottleSpec throttle;
};

struct CredentialSpec {
  std::string name;     // e.g. "virustotal/prod"
  std::string profile;  // e.g. "virustotal-public", informational
  std::vector<FeatureSpec> features;
  // The profile's fail_open: shared mode grants locally while Redis is unreachable.
  bool fail_open = false;
};

struct Policy {
  std::vector<CredentialSpec> credentials;
};

// Checks names, capacities, periods and references; the error names the credential, feature,
// limit and the bad value. The ledger refuses a policy that fails this.
absl::Status ValidatePolicy(const Policy& policy);

}  // namespace quotad

#endif  // QUOTAD_SERVICE_CORE_POLICY_H_
