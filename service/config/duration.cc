#include "service/config/duration.h"

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace quotad {
namespace {

constexpr int64_t kMaxWhole = 1'000'000'000;

absl::Status BadDuration(absl::string_view text, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat("bad duration \"", text, "\": ", why,
                                                 " (expected e.g. \"90s\", \"15m\", \"24h\", "
                                                 "\"1d\", \"1h30m\")"));
}

}  // namespace

absl::StatusOr<absl::Duration> ParseConfigDuration(absl::string_view text) {
  if (text.empty()) return BadDuration(text, "empty");
  absl::Duration total = absl::ZeroDuration();
  size_t i = 0;
  while (i < text.size()) {
    if (!absl::ascii_isdigit(text[i])) {
      return BadDuration(text, text[i] == '-' ? "negative" : "a number must come first");
    }
    int64_t whole = 0;
    while (i < text.size() && absl::ascii_isdigit(text[i])) {
      whole = whole * 10 + (text[i] - '0');
      if (whole > kMaxWhole) return BadDuration(text, "too long");
      ++i;
    }
    double fraction = 0;
    if (i < text.size() && text[i] == '.') {
      ++i;
      double scale = 0.1;
      if (i >= text.size() || !absl::ascii_isdigit(text[i])) {
        return BadDuration(text, "digits must follow '.'");
      }
      while (i < text.size() && absl::ascii_isdigit(text[i])) {
        fraction += scale * (text[i] - '0');
        scale /= 10;
        ++i;
      }
    }
    absl::Duration unit;
    if (text.substr(i, 2) == "ms") {
      unit = absl::Milliseconds(1);
      i += 2;
    } else if (i < text.size() && text[i] == 's') {
      unit = absl::Seconds(1);
      ++i;
    } else if (i < text.size() && text[i] == 'm') {
      unit = absl::Minutes(1);
      ++i;
    } else if (i < text.size() && text[i] == 'h') {
      unit = absl::Hours(1);
      ++i;
    } else if (i < text.size() && text[i] == 'd') {
      unit = absl::Hours(24);
      ++i;
    } else {
      return BadDuration(text, "a unit (ms, s, m, h, d) must follow each number");
    }
    total += unit * whole + unit * fraction;
    if (total > absl::Hours(24 * 366 * 100)) return BadDuration(text, "too long");
  }
  return total;
}

}  // namespace quotad
