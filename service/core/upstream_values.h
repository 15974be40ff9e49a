#ifndef QUOTAD_SERVICE_CORE_UPSTREAM_VALUES_H_
#define QUOTAD_SERVICE_CORE_UPSTREAM_VALUES_H_

// The grammar of one upstream header value, for ParseUpstream (upstream.h) and its body scan
// (upstream_body.h): counts, seconds, Unix epochs, HTTP-dates, Retry-After and API family
// tokens, each bounded by the sanity bounds of upstream.h. Every parser takes one value as
// received (surrounding spaces already trimmed), returns false and sets *why (the reason a
// warning gives) when the value is unusable, and otherwise sets *out. Internal to the core: not
// part of its interface. Pure functions; thread-safe.

#include <cstdint>
#include <string>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "service/core/upstream.h"

namespace quotad::upstream_internal {

// kMaxUpstreamHorizon in whole seconds.
inline const int64_t kMaxHorizonSeconds = absl::ToInt64Seconds(kMaxUpstreamHorizon);

// `s` without leading and trailing spaces and tabs (HTTP's optional whitespace).
absl::string_view TrimOws(absl::string_view s);

// Whether `s` is one or more ASCII digits.
bool AllDigits(absl::string_view s);

// A non-negative decimal integer in [0, max]: digits only, no sign, no spaces inside.
bool ParseCount(absl::string_view v, int64_t max, int64_t* out, std::string* why);

// Seconds as "86400" or "86400s", in [0, kMaxUpstreamHorizon].
bool ParseSeconds(absl::string_view v, int64_t* out, std::string* why);

// X-RateLimit-Reset: Unix epoch seconds, within [observed_at - kMaxUpstreamSkew,
// observed_at + kMaxUpstreamHorizon].
bool ParseEpoch(absl::string_view v, absl::Time observed_at, absl::Time* out, std::string* why);

// Retry-After: delta seconds or an HTTP-date (RFC 7231 section 7.1.1.1: IMF-fixdate, RFC 850 or
// asctime), within the same bounds as ParseEpoch. Never before observed_at: a date in the past
// (within the skew) is read as observed_at.
bool ParseRetryAfter(absl::string_view v, absl::Time observed_at, absl::Time* out,
                     std::string* why);

// X-RateLimit-For: a token of [A-Za-z0-9_.:-], at most 128 characters.
bool ParseFamily(absl::string_view v, std::string* out, std::string* why);

}  // namespace quotad::upstream_internal

#endif  // QUOTAD_SERVICE_CORE_UPSTREAM_VALUES_H_
