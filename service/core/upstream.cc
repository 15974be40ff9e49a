// ParseUpstream: one upstream answer turned into an UpstreamObservation (upstream.h). This file
// holds the answer model: which headers are read and how repeats of one (or a proxy's
// comma-joined list) must agree, how the body's findings combine with the headers, the final
// consistency checks, and the warnings. How each single value is written is in
// upstream_values.cc; what is read from a body, in upstream_body.cc.

#include "service/core/upstream.h"

#include <algorithm>
#include <array>
#include <cstddef>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "service/core/names.h"
#include "service/core/upstream_body.h"
#include "service/core/upstream_values.h"

namespace quotad {
namespace {

using upstream_internal::AllDigits;
using upstream_internal::BodyFacts;
using upstream_internal::LimitMessage;
using upstream_internal::ParseCount;
using upstream_internal::ParseEpoch;
using upstream_internal::ParseFamily;
using upstream_internal::ParseJsonSeconds;
using upstream_internal::ParseLimitMessage;
using upstream_internal::ParseRetryAfter;
using upstream_internal::ParseSeconds;
using upstream_internal::ScanBody;
using upstream_internal::TrimOws;

// A conflict warning lists at most this many values, in at most this many bytes, so that a
// warning line stays under 512 bytes whatever the bytes were (tests/fuzz/upstream_fuzzer.cc).
constexpr size_t kMaxConflictShown = 4;
constexpr size_t kMaxConflictShownBytes = 320;

// ---------------------------------------------------------------------------------------------
// Warnings. A value is shown through QuoteValue (names.h): C-escaped, quoted, at most
// kMaxQuotedBytes of it.

// Collects warning lines, at most kMaxUpstreamWarnings, then counts the rest.
class Warnings {
 public:
  explicit Warnings(std::vector<std::string>* out) : out_(out) {}

  // `shown` is already quoted.
  void AddShown(absl::string_view name, absl::string_view shown, absl::string_view why) {
    if (out_->size() >= kMaxUpstreamWarnings) {
      ++dropped_;
      return;
    }
    out_->push_back(absl::StrCat(name, ": ignored ", shown, ": ", why));
  }
  void Add(absl::string_view name, absl::string_view value, absl::string_view why) {
    AddShown(name, QuoteValue(value), why);
  }
  void Finish() {
    if (dropped_ > 0) out_->push_back(absl::StrCat(dropped_, " more warnings not shown"));
  }

 private:
  std::vector<std::string>* out_;
  size_t dropped_ = 0;
};

// ---------------------------------------------------------------------------------------------
// Repeated values: every usable copy must agree.

// Parses every value; unusable ones are warned about and dropped. Returns the common value of
// the rest, or nullopt (with a warning) when they disagree.
template <typename T, typename Parse>
std::optional<T> Resolve(absl::string_view name, const std::vector<absl::string_view>& values,
                         Parse parse, Warnings& warnings) {
  std::optional<T> agreed;
  bool conflict = false;
  std::vector<absl::string_view> good;
  for (absl::string_view v : values) {
    T t{};
    std::string why;
    if (!parse(v, &t, &why)) {
      warnings.Add(name, v, why);
      continue;
    }
    good.push_back(v);
    if (!agreed) {
      agreed = std::move(t);
    } else if (!(*agreed == t)) {
      conflict = true;
    }
  }
  if (!conflict) return agreed;
  // At most kMaxConflictShown values and kMaxConflictShownBytes of them (a value's escaped text
  // may be four times its length); the first always fits.
  std::string shown;
  size_t listed = 0;
  for (; listed < good.size() && listed < kMaxConflictShown; ++listed) {
    const std::string quoted = QuoteValue(good[listed]);
    if (listed > 0 && shown.size() + 2 + quoted.size() > kMaxConflictShownBytes) break;
    absl::StrAppend(&shown, listed == 0 ? "" : ", ", quoted);
  }
  if (listed < good.size()) absl::StrAppend(&shown, ", ...");
  warnings.AddShown(name, shown, "repeated with conflicting values");
  return std::nullopt;
}

// ---------------------------------------------------------------------------------------------
// Headers

enum Field { kLimit, kRemaining, kUsed, kReset, kResetIn, kInterval, kFor, kRetryAfter, kFields };

struct FieldInfo {
  absl::string_view name;  // canonical spelling; matched case-insensitively
  bool list;               // a comma-separated list of numbers is the same as repeats
};

constexpr std::array<FieldInfo, kFields> kFieldInfo = {{
    {"X-RateLimit-Limit", true},
    {"X-RateLimit-Remaining", true},
    {"X-RateLimit-Used", true},
    {"X-RateLimit-Reset", true},
    {"X-RateLimit-Reset-In", true},
    {"X-RateLimit-Interval", true},
    {"X-RateLimit-For", false},
    {"Retry-After", false},  // an HTTP-date holds a comma
}};

// "12, 12" or "86400s,86400": what a proxy makes of a repeated header. Anything else with a
// comma stays one value, so that its warning quotes it whole.
bool IsNumberList(absl::string_view v) {
  if (v.find(',') == absl::string_view::npos) return false;
  for (absl::string_view part : absl::StrSplit(v, ',')) {
    part = TrimOws(part);
    if (!part.empty() && part.back() == 's') part.remove_suffix(1);
    if (!part.empty() && !AllDigits(part)) return false;
  }
  return true;
}

}  // namespace

absl::StatusOr<UpstreamObservation> ParseUpstream(
    int http_status, const std::vector<std::pair<std::string, std::string>>& headers,
    absl::string_view body, absl::Time observed_at, absl::Span<const int> throttle_codes) {
  if (http_status < 100 || http_status > 599) {
    return absl::InvalidArgumentError(
        absl::StrCat("http_status ", http_status, " is not an HTTP status code (100..599)"));
  }
  if (observed_at == absl::InfinitePast() || observed_at == absl::InfiniteFuture()) {
    return absl::InvalidArgumentError("observed_at must be a finite time");
  }

  UpstreamObservation obs;
  obs.http_status = http_status;
  obs.throttled =
      std::find(throttle_codes.begin(), throttle_codes.end(), http_status) != throttle_codes.end();
  Warnings warnings(&obs.warnings);

  // Gather the values of every header we understand, by field.
  std::array<std::vector<absl::string_view>, kFields> values;
  for (const auto& [raw_name, raw_value] : headers) {
    const absl::string_view name = TrimOws(raw_name);
    for (size_t f = 0; f < kFields; ++f) {
      if (!absl::EqualsIgnoreCase(name, kFieldInfo[f].name)) continue;
      const absl::string_view value = TrimOws(raw_value);
      if (kFieldInfo[f].list && IsNumberList(value)) {
        for (absl::string_view part : absl::StrSplit(value, ',')) {
          part = TrimOws(part);
          if (!part.empty()) values[f].push_back(part);  // RFC 9110: empty elements are ignored
        }
      } else {
        values[f].push_back(value);
      }
      break;
    }
  }

  auto count = [](absl::string_view v, int64_t* out, std::string* why) {
    return ParseCount(v, kMaxUpstreamCount, out, why);
  };
  obs.limit = Resolve<int64_t>(kFieldInfo[kLimit].name, values[kLimit], count, warnings);
  obs.remaining =
      Resolve<int64_t>(kFieldInfo[kRemaining].name, values[kRemaining], count, warnings);
  obs.used = Resolve<int64_t>(kFieldInfo[kUsed].name, values[kUsed], count, warnings);

  const std::optional<absl::Time> reset = Resolve<absl::Time>(
      kFieldInfo[kReset].name, values[kReset],
      [&](absl::string_view v, absl::Time* out, std::string* why) {
        return ParseEpoch(v, observed_at, out, why);
      },
      warnings);
  const std::optional<absl::Time> reset_in = Resolve<absl::Time>(
      kFieldInfo[kResetIn].name, values[kResetIn],
      [&](absl::string_view v, absl::Time* out, std::string* why) {
        int64_t secs = 0;
        if (!ParseSeconds(v, &secs, why)) return false;
        *out = observed_at + absl::Seconds(secs);
        return true;
      },
      warnings);
  if (reset && reset_in) {
    obs.reset_at = std::max(*reset, *reset_in);
  } else if (reset) {
    obs.reset_at = reset;
  } else {
    obs.reset_at = reset_in;
  }

  obs.interval = Resolve<absl::Duration>(
      kFieldInfo[kInterval].name, values[kInterval],
      [](absl::string_view v, absl::Duration* out, std::string* why) {
        int64_t secs = 0;
        if (!ParseSeconds(v, &secs, why)) return false;
        if (secs == 0) {
          *why = "zero";
          return false;
        }
        *out = absl::Seconds(secs);
        return true;
      },
      warnings);

  if (std::optional<std::string> family =
          Resolve<std::string>(kFieldInfo[kFor].name, values[kFor], ParseFamily, warnings)) {
    obs.family = std::move(*family);
  }

  obs.retry_at = Resolve<absl::Time>(
      kFieldInfo[kRetryAfter].name, values[kRetryAfter],
      [&](absl::string_view v, absl::Time* out, std::string* why) {
        return ParseRetryAfter(v, observed_at, out, why);
      },
      warnings);

  // The body: only what is reliably there.
  const BodyFacts facts = ScanBody(body);
  const std::optional<absl::Time> body_retry = Resolve<absl::Time>(
      "body retry_after", facts.retry_after,
      [&](absl::string_view v, absl::Time* out, std::string* why) {
        int64_t secs = 0;
        if (!ParseJsonSeconds(v, &secs, why)) return false;
        *out = observed_at + absl::Seconds(secs);
        return true;
      },
      warnings);
  if (body_retry && (!obs.retry_at || *body_retry > *obs.retry_at)) obs.retry_at = body_retry;

  // Messages that do not parse are prose, not data: dropped silently.
  std::vector<absl::string_view> limit_messages;
  for (absl::string_view m : facts.limit_messages) {
    LimitMessage parsed;
    std::string why;
    if (ParseLimitMessage(m, &parsed, &why)) limit_messages.push_back(m);
  }
  if (const std::optional<LimitMessage> message =
          Resolve<LimitMessage>("body limit", limit_messages, ParseLimitMessage, warnings)) {
    if (!obs.limit) {
      obs.limit = message->count;
      if (!obs.interval) obs.interval = message->period;
    } else if (*obs.limit != message->count) {
      warnings.Add("body limit", TrimOws(limit_messages.front()),
                   absl::StrCat("differs from X-RateLimit-Limit ", *obs.limit));
    } else if (!obs.interval) {
      obs.interval = message->period;
    }
  }

  if (obs.remaining && obs.limit && *obs.remaining > *obs.limit) {
    warnings.Add(kFieldInfo[kRemaining].name, absl::StrCat(*obs.remaining),
                 absl::StrCat("above X-RateLimit-Limit ", *obs.limit));
    obs.remaining.reset();
  }
  warnings.Finish();
  return obs;
}

}  // namespace quotad
