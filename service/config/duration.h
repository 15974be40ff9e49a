#ifndef QUOTAD_SERVICE_CONFIG_DURATION_H_
#define QUOTAD_SERVICE_CONFIG_DURATION_H_

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace quotad {

// Parses a configuration duration: one or more <number><unit> terms with units "ms", "s", "m",
// "h" and "d" (24 h), e.g. "90s", "15m", "24h", "1d", "1h30m", "1.5h". No sign, no spaces; "0s"
// parses (callers decide whether zero is allowed). At most 100 years.
// kInvalidArgument naming the text otherwise.
absl::StatusOr<absl::Duration> ParseConfigDuration(absl::string_view text);

}  // namespace quotad

#endif  // QUOTAD_SERVICE_CONFIG_DURATION_H_
