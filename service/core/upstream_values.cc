// The value grammar of upstream headers (see upstream_values.h): counts, seconds, epochs,
// HTTP-dates, Retry-After and family tokens.

#include "service/core/upstream_values.h"

#include <algorithm>
#include <array>
#include <cstddef>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/civil_time.h"

namespace quotad::upstream_internal {
namespace {

constexpr size_t kMaxFamilyLength = 128;            // X-RateLimit-For
constexpr int64_t kMaxEpochSeconds = 253402300799;  // 9999-12-31T23:59:59Z

bool IsOws(char c) { return c == ' ' || c == '\t'; }

// Whether `t` lies within [observed_at - skew, observed_at + horizon]; sets *why if not.
bool WithinHorizon(absl::Time t, absl::Time observed_at, std::string* why) {
  const absl::Duration ahead = t - observed_at;
  if (ahead > kMaxUpstreamHorizon) {
    *why = absl::StrCat("more than 400 days after observed_at (",
                        absl::FormatTime(absl::RFC3339_sec, t, absl::UTCTimeZone()), ")");
    return false;
  }
  if (ahead < -kMaxUpstreamSkew) {
    *why = absl::StrCat("more than 1h before observed_at (",
                        absl::FormatTime(absl::RFC3339_sec, t, absl::UTCTimeZone()), ")");
    return false;
  }
  return true;
}

// ---------------------------------------------------------------------------------------------
// HTTP-date (RFC 7231 section 7.1.1.1): IMF-fixdate, obsolete RFC 850 and asctime forms.

constexpr std::array<absl::string_view, 7> kDayShort = {"Mon", "Tue", "Wed", "Thu",
                                                        "Fri", "Sat", "Sun"};
constexpr std::array<absl::string_view, 7> kDayLong = {
    "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"};
constexpr std::array<absl::string_view, 12> kMonths = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                                       "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};

template <size_t N>
bool OneOf(absl::string_view s, const std::array<absl::string_view, N>& names) {
  for (absl::string_view n : names) {
    if (absl::EqualsIgnoreCase(s, n)) return true;
  }
  return false;
}

// Month 1..12, or 0.
int MonthNumber(absl::string_view s) {
  for (size_t i = 0; i < kMonths.size(); ++i) {
    if (absl::EqualsIgnoreCase(s, kMonths[i])) return static_cast<int>(i) + 1;
  }
  return 0;
}

// Exactly s.size() digits (1..4).
bool FixedDigits(absl::string_view s, int* out) {
  if (s.empty() || s.size() > 4 || !AllDigits(s)) return false;
  int n = 0;
  for (char c : s) n = n * 10 + (c - '0');
  *out = n;
  return true;
}

// "HH:MM:SS".
bool ParseClock(absl::string_view s, int* h, int* m, int* sec) {
  return s.size() == 8 && s[2] == ':' && s[5] == ':' && FixedDigits(s.substr(0, 2), h) &&
         FixedDigits(s.substr(3, 2), m) && FixedDigits(s.substr(6, 2), sec);
}

// A real UTC instant from fields, rejecting out-of-range ones (no normalization of Feb 30).
bool MakeTime(int64_t year, int month, int day, int h, int m, int sec, absl::Time* out) {
  if (month < 1 || month > 12 || day < 1 || h > 23 || m > 59 || sec > 60) return false;
  const absl::CivilDay d(year, month, day);
  if (d.month() != month || d.day() != day) return false;
  // A leap second (":60") is read as the first second of the next minute.
  absl::CivilSecond cs(year, month, day, h, m, std::min(sec, 59));
  if (sec == 60) cs += 1;
  *out = absl::FromCivil(cs, absl::UTCTimeZone());
  return true;
}

bool IsGmt(absl::string_view s) {
  return absl::EqualsIgnoreCase(s, "GMT") || absl::EqualsIgnoreCase(s, "UTC");
}

bool ParseHttpDate(absl::string_view s, absl::Time observed_at, absl::Time* out) {
  int day = 0, year = 0, h = 0, m = 0, sec = 0;
  // IMF-fixdate: "Sun, 06 Nov 1994 08:49:37 GMT"
  if (s.size() == 29 && s[3] == ',' && s[4] == ' ' && s[7] == ' ' && s[11] == ' ' && s[16] == ' ' &&
      s[25] == ' ') {
    const int month = MonthNumber(s.substr(8, 3));
    return OneOf(s.substr(0, 3), kDayShort) && FixedDigits(s.substr(5, 2), &day) && month != 0 &&
           FixedDigits(s.substr(12, 4), &year) && ParseClock(s.substr(17, 8), &h, &m, &sec) &&
           IsGmt(s.substr(26, 3)) && MakeTime(year, month, day, h, m, sec, out);
  }
  // asctime: "Sun Nov  6 08:49:37 1994" (day space-padded)
  if (s.size() == 24 && s[3] == ' ' && s[7] == ' ' && s[10] == ' ' && s[19] == ' ') {
    absl::string_view dd = s.substr(8, 2);
    if (dd[0] == ' ') dd.remove_prefix(1);
    const int month = MonthNumber(s.substr(4, 3));
    return OneOf(s.substr(0, 3), kDayShort) && month != 0 && FixedDigits(dd, &day) &&
           ParseClock(s.substr(11, 8), &h, &m, &sec) && FixedDigits(s.substr(20, 4), &year) &&
           MakeTime(year, month, day, h, m, sec, out);
  }
  // RFC 850: "Sunday, 06-Nov-94 08:49:37 GMT"
  const size_t comma = s.find(", ");
  if (comma == absl::string_view::npos || !OneOf(s.substr(0, comma), kDayLong)) return false;
  const absl::string_view rest = s.substr(comma + 2);
  if (rest.size() != 22 || rest[2] != '-' || rest[6] != '-' || rest[9] != ' ' || rest[18] != ' ') {
    return false;
  }
  int yy = 0;
  const int month = MonthNumber(rest.substr(3, 3));
  if (!FixedDigits(rest.substr(0, 2), &day) || month == 0 || !FixedDigits(rest.substr(7, 2), &yy) ||
      !ParseClock(rest.substr(10, 8), &h, &m, &sec) || !IsGmt(rest.substr(19, 3))) {
    return false;
  }
  // RFC 7231: a two-digit year more than 50 years in the future is in the previous century.
  const int64_t now_year = absl::ToCivilYear(observed_at, absl::UTCTimeZone()).year();
  int64_t full_year = now_year - now_year % 100 + yy;
  if (full_year > now_year + 50) full_year -= 100;
  return MakeTime(full_year, month, day, h, m, sec, out);
}

}  // namespace

absl::string_view TrimOws(absl::string_view s) {
  while (!s.empty() && IsOws(s.front())) s.remove_prefix(1);
  while (!s.empty() && IsOws(s.back())) s.remove_suffix(1);
  return s;
}

bool AllDigits(absl::string_view s) {
  if (s.empty()) return false;
  for (char c : s) {
    if (!absl::ascii_isdigit(static_cast<unsigned char>(c))) return false;
  }
  return true;
}

bool ParseCount(absl::string_view v, int64_t max, int64_t* out, std::string* why) {
  if (v.empty()) {
    *why = "empty";
    return false;
  }
  if (v.front() == '-' && AllDigits(v.substr(1))) {
    *why = "negative";
    return false;
  }
  if (!AllDigits(v)) {
    *why = "not a non-negative integer";
    return false;
  }
  while (v.size() > 1 && v.front() == '0') v.remove_prefix(1);
  int64_t n = 0;
  // 18 digits always fit in int64; anything longer is beyond every bound used here.
  if (v.size() > 18 || !absl::SimpleAtoi(v, &n) || n > max) {
    *why = absl::StrCat("above the sane bound ", max);
    return false;
  }
  *out = n;
  return true;
}

bool ParseSeconds(absl::string_view v, int64_t* out, std::string* why) {
  absl::string_view digits = v;
  if (digits.size() >= 2 && digits.back() == 's' &&
      absl::ascii_isdigit(static_cast<unsigned char>(digits[digits.size() - 2]))) {
    digits.remove_suffix(1);
  }
  if (!ParseCount(digits, kMaxHorizonSeconds, out, why)) {
    if (absl::StartsWith(*why, "above")) *why = "more than 400 days";
    return false;
  }
  return true;
}

bool ParseEpoch(absl::string_view v, absl::Time observed_at, absl::Time* out, std::string* why) {
  int64_t secs = 0;
  if (!ParseCount(v, kMaxEpochSeconds, &secs, why)) return false;
  const absl::Time t = absl::FromUnixSeconds(secs);
  if (!WithinHorizon(t, observed_at, why)) return false;
  *out = t;
  return true;
}

bool ParseRetryAfter(absl::string_view v, absl::Time observed_at, absl::Time* out,
                     std::string* why) {
  if (v.empty() || AllDigits(v) || (v.front() == '-' && AllDigits(v.substr(1)))) {
    int64_t secs = 0;
    if (!ParseCount(v, kMaxHorizonSeconds, &secs, why)) {
      if (absl::StartsWith(*why, "above")) *why = "more than 400 days";
      return false;
    }
    *out = observed_at + absl::Seconds(secs);
    return true;
  }
  absl::Time t;
  if (!ParseHttpDate(v, observed_at, &t)) {
    *why = "neither delta-seconds nor an HTTP-date";
    return false;
  }
  if (!WithinHorizon(t, observed_at, why)) return false;
  *out = std::max(t, observed_at);
  return true;
}

bool ParseFamily(absl::string_view v, std::string* out, std::string* why) {
  if (v.empty()) {
    *why = "empty";
    return false;
  }
  if (v.size() > kMaxFamilyLength) {
    *why = absl::StrCat("longer than ", kMaxFamilyLength, " characters");
    return false;
  }
  for (char c : v) {
    const auto u = static_cast<unsigned char>(c);
    if (!absl::ascii_isalnum(u) && c != '_' && c != '-' && c != '.' && c != ':') {
      *why = "not a token of [A-Za-z0-9_.:-]";
      return false;
    }
  }
  *out = std::string(v);
  return true;
}

}  // namespace quotad::upstream_internal
