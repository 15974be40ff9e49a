// libFuzzer target: the upstream answer parser (quotad::ParseUpstream).
// Input, like an HTTP response as a worker saw it:
//   line 1: "<status> [<observed_at epoch seconds>] [m]"  (m: MediaSilo's throttle codes 429, 420)
//   then "Name: value" header lines up to an empty line; the rest is the body.
// Properties: only a status outside 100..599 is an error; every documented bound of
// UpstreamObservation holds.

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "service/core/upstream.h"

namespace {

void Check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "upstream_fuzzer: property violated: %s\n", what);
    std::abort();
  }
}

bool FamilyChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
         c == '.' || c == ':' || c == '-';
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size > 256 * 1024) return -1;
  absl::string_view in(reinterpret_cast<const char*>(data), size);

  auto next_line = [&in]() {
    const size_t nl = in.find('\n');
    absl::string_view line = in.substr(0, nl);
    in = nl == absl::string_view::npos ? absl::string_view() : in.substr(nl + 1);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    return line;
  };

  int status = 0;
  int64_t observed = 1718947248;  // CyberVault's example answer
  std::vector<int> codes = {429};
  std::vector<absl::string_view> first = absl::StrSplit(next_line(), ' ', absl::SkipEmpty());
  if (!first.empty() && !absl::SimpleAtoi(first[0], &status)) status = 0;
  if (first.size() > 1) {
    int64_t t;
    if (absl::SimpleAtoi(first[1], &t) && t > -100'000'000'000 && t < 100'000'000'000) {
      observed = t;
    }
  }
  if (first.size() > 2 && first[2] == "m") codes = {429, 420};

  quotad::UpstreamHeaders headers;
  while (!in.empty()) {
    absl::string_view line = next_line();
    if (line.empty()) break;
    const size_t colon = line.find(':');
    if (colon == absl::string_view::npos) {
      headers.emplace_back(std::string(line), "");
    } else {
      headers.emplace_back(std::string(line.substr(0, colon)), std::string(line.substr(colon + 1)));
    }
  }
  const absl::string_view body = in;
  const absl::Time seen = absl::FromUnixSeconds(observed);

  absl::StatusOr<quotad::UpstreamObservation> got =
      quotad::ParseUpstream(status, headers, body, seen, codes);
  const bool status_valid = status >= 100 && status <= 599;
  Check(got.ok() == status_valid, "error exactly when the status is outside 100..599");
  if (!got.ok()) return 0;
  const quotad::UpstreamObservation& o = *got;

  Check(o.http_status == status, "http_status echoed");
  bool is_throttle = false;
  for (int c : codes) is_throttle |= c == status;
  Check(o.throttled == is_throttle, "throttled iff the status is a throttle code");
  for (const auto& v : {o.limit, o.remaining, o.used}) {
    if (v) Check(*v >= 0 && *v <= quotad::kMaxUpstreamCount, "count in [0, kMaxUpstreamCount]");
  }
  if (o.limit && o.remaining) Check(*o.remaining <= *o.limit, "remaining <= limit");
  if (o.reset_at) {
    Check(*o.reset_at >= seen - quotad::kMaxUpstreamSkew &&
              *o.reset_at <= seen + quotad::kMaxUpstreamHorizon,
          "reset_at within [observed_at - skew, observed_at + horizon]");
  }
  if (o.retry_at) Check(*o.retry_at >= seen, "retry_at never before observed_at");
  if (o.interval) {
    Check(*o.interval > absl::ZeroDuration() && *o.interval <= quotad::kMaxUpstreamHorizon,
          "interval positive and at most the horizon");
  }
  Check(o.family.size() <= 128, "family at most 128 characters");
  for (char c : o.family) Check(FamilyChar(c), "family only [A-Za-z0-9_.:-]");
  Check(o.warnings.size() <= quotad::kMaxUpstreamWarnings + 1, "warnings bounded");
  for (const std::string& w : o.warnings) {
    Check(w.size() <= 512, "a warning line is short (values truncated to 64 bytes)");
    for (char c : w) Check(c != '\n' && c != '\0', "a warning line has no newline or NUL");
  }
  return 0;
}
