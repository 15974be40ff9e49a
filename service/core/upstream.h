#ifndef QUOTAD_SERVICE_CORE_UPSTREAM_H_
#define QUOTAD_SERVICE_CORE_UPSTREAM_H_

// The parsing half of Report: what a worker saw from an upstream provider (HTTP status, headers,
// optional body, when it saw them) turned into validated, normalized facts. Pure functions of
// their arguments: no clock, no I/O, no logging. Every input is untrusted; no input is an error
// except a status code that is not one, and no input is undefined behaviour.
//
// Implemented in upstream.cc (the answer model: which headers, how repeats agree, the warnings),
// upstream_values.cc (the grammar of one value) and upstream_body.cc (what a body tells).

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "absl/types/span.h"

namespace quotad {

// Header (name, value) pairs as received. Names are case-insensitive and may repeat; surrounding
// spaces and tabs of names and values are ignored.
using UpstreamHeaders = std::vector<std::pair<std::string, std::string>>;

// Sanity bounds. A value beyond them is ignored with a warning.
inline constexpr int64_t kMaxUpstreamCount = 1'000'000'000'000;  // Limit, Remaining, Used
inline constexpr absl::Duration kMaxUpstreamHorizon =
    absl::Hours(24 * 400);                                          // ahead of observed_at
inline constexpr absl::Duration kMaxUpstreamSkew = absl::Hours(1);  // behind observed_at
inline constexpr size_t kMaxUpstreamBodyScan = 64 * 1024;           // bytes of a body looked at
inline constexpr size_t kMaxUpstreamWarnings = 32;                  // then one "N more" line

// What one upstream answer says about the key's quota. Every field is optional: the absence of a
// field means the answer said nothing (usable) about it. A plain value type.
struct UpstreamObservation {
  int http_status = 0;
  // The status is one of the profile's throttle codes (429; 420 for MediaSilo).
  bool throttled = false;

  // X-RateLimit-Limit / -Remaining / -Used, each in [0, kMaxUpstreamCount]. Remaining is dropped
  // when it exceeds Limit. Limit may also come from a MetaDefender 429 body ("Limit: 100
  // requests / day") when the header is absent.
  std::optional<int64_t> limit, remaining, used;

  // When the current window ends: X-RateLimit-Reset (Unix epoch seconds) or observed_at +
  // X-RateLimit-Reset-In ("86400s" or "86400"). When both are given and disagree, the later one.
  // Within [observed_at - kMaxUpstreamSkew, observed_at + kMaxUpstreamHorizon].
  std::optional<absl::Time> reset_at;

  // When the upstream allows the next try: Retry-After (delta seconds, or an HTTP-date in
  // IMF-fixdate, RFC 850 or asctime form) or the "retry_after" seconds of a JSON body; when both
  // are given, the later. Never before observed_at (a date up to kMaxUpstreamSkew in the past
  // means "now"; older dates are ignored with a warning). Reported whatever the status: whether a
  // Retry-After on a non-throttle answer means anything is the caller's decision.
  std::optional<absl::Time> retry_at;

  // X-RateLimit-Interval (seconds, optional "s"), or the period of a MetaDefender 429 body
  // ("/ day") when the header is absent. Positive, at most kMaxUpstreamHorizon.
  std::optional<absl::Duration> interval;

  // X-RateLimit-For: MetaDefender's API family, e.g. "reputation_api". Empty when absent.
  // Only [A-Za-z0-9_.:-], at most 128 characters; anything else is ignored with a warning.
  std::string family;

  // One line per ignored value, naming the header (canonical spelling, e.g.
  // "X-RateLimit-Remaining") or "body retry_after", the value as QuoteValue shows it (names.h:
  // C-escaped, quoted, truncated to 64 bytes and then followed by "... (N bytes)") and why.
  // At most kMaxUpstreamWarnings lines plus one "N more" line.
  std::vector<std::string> warnings;
};

// Parses one upstream answer. `throttle_codes` are the statuses the credential's profile treats
// as throttling ({429}, or {429, 420} for MediaSilo). `observed_at` is when the worker saw the
// answer: relative values (Reset-In, delta Retry-After) count from it and absolute ones are
// checked against it. Headers other than the ones above are ignored silently, and so is a body
// that is not JSON.
//
// kInvalidArgument only when `http_status` is outside 100..599. Malformed, out-of-range and
// repeated-but-conflicting header values (a repeat of the same value is fine; a header may also
// carry a comma-separated list of numbers) are ignored with a warning, never an error.
absl::StatusOr<UpstreamObservation> ParseUpstream(
    int http_status, const std::vector<std::pair<std::string, std::string>>& headers,
    absl::string_view body, absl::Time observed_at, absl::Span<const int> throttle_codes);

}  // namespace quotad

#endif  // QUOTAD_SERVICE_CORE_UPSTREAM_H_
