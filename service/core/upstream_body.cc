// The body scan of upstream answers (see upstream_body.h).

#include "service/core/upstream_body.h"

#include <cstddef>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "service/core/upstream.h"
#include "service/core/upstream_values.h"

namespace quotad::upstream_internal {
namespace {

constexpr size_t kMaxLimitMessageTail = 64;  // bytes after "Limit:" in a body message

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

// The first position of `needle` in `hay`, ignoring ASCII case, or npos.
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

// The fixed length a unit names ("day", "h", ...), or nullopt.
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

}  // namespace

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

}  // namespace quotad::upstream_internal
