#ifndef QUOTAD_SERVICE_CORE_UPSTREAM_BODY_H_
#define QUOTAD_SERVICE_CORE_UPSTREAM_BODY_H_

// What ParseUpstream (upstream.h) reads from an answer's body: a tolerant, linear,
// non-recursive scan of JSON-looking text (the first kMaxUpstreamBodyScan bytes) that looks at
// string tokens only: a key "retry_after" (or "retryAfter") and its value, and "Limit: N requests
// / day" inside string values, as some providers write their limits only in an error message.
// Internal to the core: not part of its interface. Pure functions; thread-safe.

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace quotad::upstream_internal {

// A limit stated in a message: "100 requests / day" is {100, 24h}; a period without a fixed
// length ("month") or none at all leaves `period` empty.
struct LimitMessage {
  int64_t count = 0;
  std::optional<absl::Duration> period;
  bool operator==(const LimitMessage& o) const { return count == o.count && period == o.period; }
};

// The raw findings of a body, as views into it; nothing is parsed or checked yet.
struct BodyFacts {
  std::vector<absl::string_view> retry_after;     // raw values of every "retry_after" key
  std::vector<absl::string_view> limit_messages;  // text after "Limit:" in string values
};

// Scans the first kMaxUpstreamBodyScan bytes of `body` if it looks like JSON (starts, after
// spaces, with '{' or with a quoted key); anything else yields no facts. The views point into
// `body`, which must outlive them.
BodyFacts ScanBody(absl::string_view body);

// A body's retry_after: JSON seconds "12", "12.0", "12.5" (a fraction rounds up), in
// [0, kMaxUpstreamHorizon]. Returns false and sets *why when unusable.
bool ParseJsonSeconds(absl::string_view v, int64_t* out, std::string* why);

// The text after "Limit:" in a message: "100 requests / day", "100 per hour", "100". The count
// must be there (else false, with *why); the period only when it names a fixed length.
bool ParseLimitMessage(absl::string_view s, LimitMessage* out, std::string* why);

}  // namespace quotad::upstream_internal

#endif  // QUOTAD_SERVICE_CORE_UPSTREAM_BODY_H_
