#ifndef QUOTAD_SERVICE_CORE_BOUNDS_H_
#define QUOTAD_SERVICE_CORE_BOUNDS_H_

// The bounds of names, limits and leases, each named once. The config loader refuses a value
// beyond them with the file and line; ValidatePolicy refuses it in a policy built by hand; the
// ledger and the wire validation refuse it in a request.

#include <cstddef>
#include <cstdint>

#include "absl/time/time.h"

namespace quotad {

// Longest name accepted for credentials, features, limits, identities, and longest scope or
// holder (names.h).
inline constexpr size_t kMaxNameLength = 256;

// Bounds that keep every product and sum of the ledger's int64 nanosecond arithmetic in range:
// capacities (and so costs and counts) up to 10^12 units, periods up to 366 days, a token
// bucket's full refill (burst * period / rate) up to 10 years, lease TTLs up to 366 days.
inline constexpr int64_t kMaxCapacity = 1'000'000'000'000;
inline constexpr absl::Duration kMaxRefillSpan = absl::Hours(24 * 3653);
inline constexpr absl::Duration kMaxLeaseTtl = absl::Hours(24 * 366);

// The longest window (rolling, sliding) or refill period (token bucket): 366 days.
inline constexpr absl::Duration kMaxPeriod = absl::Hours(24 * 366);

// The most sub-buckets a sliding limit may keep, and the narrowest one the config loader accepts
// (narrower ones buy nothing and cost memory).
inline constexpr int32_t kMaxSubBuckets = 100000;
inline constexpr absl::Duration kMinSubBucketWidth = absl::Milliseconds(1);

// An exact sliding log keeps one timestamp per unit (per scope); the config loader asks for
// sub_buckets above this capacity. (ValidatePolicy does not: a hand-built policy may be exact.)
inline constexpr int64_t kMaxExactSlidingCapacity = 100000;

// The longest guard: how much later than quotad's grant a request may reach the upstream.
inline constexpr absl::Duration kMaxGuard = absl::Hours(1);

}  // namespace quotad

#endif  // QUOTAD_SERVICE_CORE_BOUNDS_H_
