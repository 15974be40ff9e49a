#include "service/core/upstream.h"

#include <algorithm>
#include <array>
#include <cstddef>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/civil_time.h"

namespace quotad {
namespace {

constexpr size_t kMaxQuotedValue = 64;       // bytes of a value shown in a warning
constexpr size_t kMaxQuotedEscaped = 96;     // bytes of its escaped text
constexpr size_t kMaxConflictShown = 4;      // values listed in a conflict warning
constexpr size_t kMaxFamilyLength = 128;     // X-RateLimit-For
constexpr size_t kMaxLimitMessageTail = 64;  // bytes after "Limit:" in a body message
const int64_t kMaxHorizonSeconds = absl::ToInt64Seconds(kMaxUpstreamHorizon);
constexpr int64_t kMaxEpochSeconds = 253402300799;  // 9999-12-31T23:59:59Z

// ---------------------------------------------------------------------------------------------
// Warnings

// At most kMaxQuotedValue bytes of the value, C-escaped, and at most kMaxQuotedEscaped bytes of
// escaped text, so that a warning line (up to kMaxConflictShown values) stays under 512 bytes
// whatever the bytes were.
std::string Quote(absl::string_view v) {
  bool truncated = v.size() > kMaxQuotedValue;
  std::string escaped = absl::CHexEscape(v.substr(0, kMaxQuotedValue));
  if (escaped.size() > kMaxQuotedEscaped) {
    size_t cut = kMaxQuotedEscaped;
    // Never end inside an escape such as \x1b: back up to its backslash.
    const size_t backslash = escaped.rfind('\\', cut - 1);
    if (backslash != std::string::npos && cut - backslash < 4) cut = backslash;
    escaped.resize(cut);
    truncated = true;
  }
  return absl::StrCat("\"", escaped, "\"", truncated ? "..." : "");
}

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
    AddShown(name, Quote(value), why);
  }
  void Finish() {
    if (dropped_ > 0) out_->push_back(absl::StrCat(dropped_, " more warnings not shown"));
  }

 private:
  std::vector<std::string>* out_;
  size_t dropped_ = 0;
};

// ---------------------------------------------------------------------------------------------
// Scalars. Each parser returns false and sets *why when the value is unusable.

bool IsOws(char c) { return c == ' ' || c == '\t'; }

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

// A non-negative decimal integer in [0, max]: digits only, no sign, no spaces inside.
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

// Seconds as "86400" or "86400s", in [0, kMaxUpstreamHorizon].
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

// X-RateLimit-Reset: Unix epoch seconds.
bool ParseEpoch(absl::string_view v, absl::Time observed_at, absl::Time* out, std::string* why) {
  int64_t secs = 0;
  if (!ParseCount(v, kMaxEpochSeconds, &secs, why)) return false;
  const absl::Time t = absl::FromUnixSeconds(secs);
  if (!WithinHorizon(t, observed_at, why)) return false;
  *out = t;
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

// Retry-After: delta seconds or an HTTP-date. Never before observed_at.
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

// X-RateLimit-For: a short token.
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
  std::string shown;
  for (size_t i = 0; i < good.size() && i < kMaxConflictShown; ++i) {
    absl::StrAppend(&shown, i == 0 ? "" : ", ", Quote(good[i]));
  }
  if (good.size() > kMaxConflictShown) absl::StrAppend(&shown, ", ...");
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

// ---------------------------------------------------------------------------------------------
// Body: a tolerant, linear, non-recursive scan of JSON-looking text. It looks at string tokens
// only: a key "retry_after" and its value, and "Limit: N requests / day" inside string values.

struct LimitMessage {
  int64_t count = 0;
  std::optional<absl::Duration> period;
  bool operator==(const LimitMessage& o) const { return count == o.count && period == o.period; }
};

bool IsJsonDelimiter(char c) {
  return c == ',' || c == '}' || c == ']' || c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

// The raw value after a key's ':' at body[pos]: a quoted string's contents, or a bare token.
absl::string_view ValueAt(absl::string_view body, size_t pos) {
  while (pos < body.size() && absl::ascii_isspace(static_cast<unsigned char>(body[pos]))) ++pos;
  if (pos >= body.size()) return {};
  if (body[pos] == '"') {
    const size_t end = body.find('"', pos + 1);
    if (end == absl::string_view::npos) return {};
    return body.substr(pos + 1, end - pos - 1);
  }
  size_t end = pos;
  while (end < body.size() && !IsJsonDelimiter(body[end])) ++end;
  return body.substr(pos, end - pos);
}

// JSON seconds: "12", "12.0", "12.5" (rounded up), in [0, 400 days].
bool ParseJsonSeconds(absl::string_view v, int64_t* out, std::string* why) {
  absl::string_view whole = v, frac;
  const size_t dot = v.find('.');
  if (dot != absl::string_view::npos) {
    whole = v.substr(0, dot);
    frac = v.substr(dot + 1);
    if (!AllDigits(frac)) {
      *why = "not a non-negative number of seconds";
      return false;
    }
  }
  if (!ParseSeconds(whole, out, why)) return false;
  if (absl::EndsWith(whole, "s")) {  // "12s" is not JSON
    *why = "not a non-negative number of seconds";
    return false;
  }
  const bool round_up = frac.find_first_not_of('0') != absl::string_view::npos;
  if (round_up) {
    if (*out >= kMaxHorizonSeconds) {
      *why = "more than 400 days";
      return false;
    }
    ++*out;
  }
  return true;
}

size_t FindIgnoreCase(absl::string_view hay, absl::string_view needle) {
  if (needle.size() > hay.size()) return absl::string_view::npos;
  for (size_t i = 0; i + needle.size() <= hay.size(); ++i) {
    if (absl::EqualsIgnoreCase(hay.substr(i, needle.size()), needle)) return i;
  }
  return absl::string_view::npos;
}

absl::string_view SkipSpaces(absl::string_view s) {
  while (!s.empty() && s.front() == ' ') s.remove_prefix(1);
  return s;
}

absl::string_view TakeLetters(absl::string_view* s) {
  size_t n = 0;
  while (n < s->size() && absl::ascii_isalpha(static_cast<unsigned char>((*s)[n]))) ++n;
  absl::string_view word = s->substr(0, n);
  s->remove_prefix(n);
  return word;
}

std::optional<absl::Duration> PeriodNamed(absl::string_view unit) {
  struct Unit {
    absl::string_view name;
    absl::Duration d;
  };
  static const Unit kUnits[] = {
      {"second", absl::Seconds(1)}, {"seconds", absl::Seconds(1)}, {"sec", absl::Seconds(1)},
      {"s", absl::Seconds(1)},      {"minute", absl::Minutes(1)},  {"minutes", absl::Minutes(1)},
      {"min", absl::Minutes(1)},    {"hour", absl::Hours(1)},      {"hours", absl::Hours(1)},
      {"h", absl::Hours(1)},        {"day", absl::Hours(24)},      {"days", absl::Hours(24)},
      {"d", absl::Hours(24)},       {"week", absl::Hours(24 * 7)}, {"weeks", absl::Hours(24 * 7)},
  };
  for (const Unit& u : kUnits) {
    if (absl::EqualsIgnoreCase(unit, u.name)) return u.d;
  }
  return std::nullopt;  // "month" and friends have no fixed length
}

// The text after "Limit:" in a message: "100 requests / day", "100 per hour", "100". The count
// must be there; the period only when it names a fixed length.
bool ParseLimitMessage(absl::string_view s, LimitMessage* out, std::string* why) {
  s = SkipSpaces(s);
  size_t n = 0;
  while (n < s.size() && absl::ascii_isdigit(static_cast<unsigned char>(s[n]))) ++n;
  if (!ParseCount(s.substr(0, n), kMaxUpstreamCount, &out->count, why)) return false;
  s = SkipSpaces(s.substr(n));
  absl::string_view word = TakeLetters(&s);  // "requests", or "per"
  s = SkipSpaces(s);
  bool per = absl::EqualsIgnoreCase(word, "per");
  if (!per && !s.empty() && s.front() == '/') {
    per = true;
    s.remove_prefix(1);
  } else if (!per) {
    absl::string_view next = TakeLetters(&s);
    per = absl::EqualsIgnoreCase(next, "per");
  }
  if (per) {
    s = SkipSpaces(s);
    if (!s.empty() && s.front() == '1' && (s.size() == 1 || s[1] == ' '))
      s = SkipSpaces(s.substr(1));
    out->period = PeriodNamed(TakeLetters(&s));
  }
  return true;
}

struct BodyFacts {
  std::vector<absl::string_view> retry_after;     // raw values of every "retry_after" key
  std::vector<absl::string_view> limit_messages;  // text after "Limit:" in string values
};

BodyFacts ScanBody(absl::string_view body) {
  BodyFacts facts;
  body = body.substr(0, kMaxUpstreamBodyScan);
  size_t first = 0;
  while (first < body.size() && absl::ascii_isspace(static_cast<unsigned char>(body[first]))) {
    ++first;
  }
  // JSON, or the seed's fragment that starts at a key ("error": {...}). Anything else: ignored.
  if (first >= body.size() || (body[first] != '{' && body[first] != '"')) return facts;

  size_t i = first;
  while (i < body.size()) {
    if (body[i] != '"') {
      ++i;
      continue;
    }
    size_t j = i + 1;
    while (j < body.size() && body[j] != '"') j += body[j] == '\\' ? 2 : 1;
    if (j >= body.size()) break;  // unterminated string: stop
    const absl::string_view token = body.substr(i + 1, j - i - 1);
    size_t k = j + 1;
    while (k < body.size() && absl::ascii_isspace(static_cast<unsigned char>(body[k]))) ++k;
    const bool is_key = k < body.size() && body[k] == ':';
    if (is_key) {
      if (absl::EqualsIgnoreCase(token, "retry_after") ||
          absl::EqualsIgnoreCase(token, "retryAfter")) {
        const absl::string_view value = ValueAt(body, k + 1);
        if (value != "null") facts.retry_after.push_back(value);
      }
    } else {
      const size_t at = FindIgnoreCase(token, "limit:");
      if (at != absl::string_view::npos) {
        facts.limit_messages.push_back(token.substr(at + 6, kMaxLimitMessageTail));
      }
    }
    i = j + 1;
  }
  return facts;
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
