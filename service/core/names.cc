#include "service/core/names.h"

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"

namespace quotad {
namespace {

constexpr bool IsAsciiAlnum(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

// What a kind of name may hold beyond letters and digits, and each byte's verdict (every
// Acquire checks its names: one table load per byte instead of a search of the punctuation).
struct NameRule {
  constexpr NameRule(absl::string_view punctuation_in, absl::string_view why_not_in)
      : punctuation(punctuation_in), why_not(why_not_in), allowed() {
    for (int c = 0; c < 256; ++c) allowed[c] = IsAsciiAlnum(static_cast<char>(c));
    for (char c : punctuation) allowed[static_cast<unsigned char>(c)] = true;
  }
  bool Allows(char c) const { return allowed[static_cast<unsigned char>(c)]; }

  absl::string_view punctuation;  // allowed punctuation, in kNamePunctuation's order
  absl::string_view why_not;      // why the missing punctuation is excluded, or empty
  bool allowed[256];
};

constexpr NameRule kAnyName = {"._~:/@+-", ""};
constexpr NameRule kPartName = {"_~:/@+-", " (no '.': a limit is reported as feature.limit)"};
constexpr NameRule kIdentity = {"._~:@+-", " (no '/': a holder is stored as identity/holder)"};

std::string DescribeChar(char c) {
  return absl::StrCat("'", absl::CHexEscape(absl::string_view(&c, 1)), "'");
}

absl::Status TooLong(absl::string_view field, absl::string_view shown, size_t size,
                     size_t max_length = kMaxNameLength) {
  return absl::InvalidArgumentError(absl::StrCat(field, " ", shown, " is ", size,
                                                 " bytes long; at most ", max_length,
                                                 " are allowed"));
}

absl::Status CheckName(absl::string_view field, absl::string_view name, const NameRule& rule) {
  if (name.empty()) return absl::InvalidArgumentError(absl::StrCat(field, " is required"));
  if (name.size() > kMaxNameLength) return TooLong(field, QuoteValue(name), name.size());
  for (size_t i = 0; i < name.size(); ++i) {
    const char c = name[i];
    if (rule.Allows(c)) continue;
    return absl::InvalidArgumentError(absl::StrCat(
        field, " ", QuoteValue(name), " has the character ", DescribeChar(c), " at offset ", i,
        "; allowed are letters, digits and ", rule.punctuation, rule.why_not));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status CheckText(absl::string_view text, size_t max_length, absl::string_view field) {
  if (text.size() > max_length) return TooLong(field, QuoteValue(text), text.size(), max_length);
  for (size_t i = 0; i < text.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(text[i]);
    if (c < 0x20 || c == 0x7f) {
      return absl::InvalidArgumentError(absl::StrCat(field, " ", QuoteValue(text),
                                                     " has the control character ",
                                                     DescribeChar(text[i]), " at offset ", i));
    }
  }
  return absl::OkStatus();
}

std::string QuoteValue(absl::string_view value, size_t max_bytes) {
  if (value.size() <= max_bytes) return absl::StrCat("\"", absl::CHexEscape(value), "\"");
  return absl::StrCat("\"", absl::CHexEscape(value.substr(0, max_bytes)), "\"... (", value.size(),
                      " bytes)");
}

absl::Status CheckCredentialName(absl::string_view name, absl::string_view field) {
  return CheckName(field, name, kAnyName);
}

absl::Status CheckProfileName(absl::string_view name, absl::string_view field) {
  return CheckName(field, name, kAnyName);
}

absl::Status CheckFeatureName(absl::string_view name, absl::string_view field) {
  return CheckName(field, name, kPartName);
}

absl::Status CheckLimitName(absl::string_view name, absl::string_view field) {
  return CheckName(field, name, kPartName);
}

absl::Status CheckIdentityName(absl::string_view name) {
  size_t bad = name.size();
  for (size_t i = 0; i < name.size() && bad == name.size(); ++i) {
    if (!kIdentity.Allows(name[i])) {
      bad = i;
    }
  }
  if (!name.empty() && name.size() <= kMaxNameLength && bad == name.size()) {
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "an identity is 1 to ", kMaxNameLength, " letters, digits and ",
      kIdentity.punctuation, kIdentity.why_not, "; got ", name.size(), " bytes",
      bad < name.size() ? absl::StrCat(", not allowed at offset ", bad) : "",
      " (the value is not shown: it may be a token)"));
}

absl::Status CheckScope(absl::string_view scope, absl::string_view field) {
  return CheckText(scope, kMaxNameLength, field);
}

absl::Status CheckHolder(absl::string_view holder, absl::string_view field) {
  return CheckText(holder, kMaxNameLength, field);
}

}  // namespace quotad
