#include "service/server/validation.h"

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "service/core/policy.h"

namespace quotad {
namespace {

constexpr size_t kMaxQuotedLength = 64;

bool IsNameChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
         c == '_' || c == '~' || c == ':' || c == '/' || c == '@' || c == '+' || c == '-';
}

std::string DescribeChar(char c) {
  return absl::StrCat("'", absl::CHexEscape(absl::string_view(&c, 1)), "'");
}

}  // namespace

std::string QuoteForError(absl::string_view value) {
  if (value.size() <= kMaxQuotedLength) return absl::StrCat("\"", absl::CHexEscape(value), "\"");
  return absl::StrCat("\"", absl::CHexEscape(value.substr(0, kMaxQuotedLength)), "\"... (",
                      value.size(), " bytes)");
}

absl::Status ValidateName(absl::string_view field, absl::string_view value) {
  if (value.empty()) return absl::InvalidArgumentError(absl::StrCat(field, " is required"));
  if (value.size() > kMaxNameLength) {
    return absl::InvalidArgumentError(absl::StrCat(field, " ", QuoteForError(value), " is ",
                                                   value.size(), " bytes long; at most ",
                                                   kMaxNameLength, " are allowed"));
  }
  for (size_t i = 0; i < value.size(); ++i) {
    if (!IsNameChar(value[i])) {
      return absl::InvalidArgumentError(absl::StrCat(
          field, " ", QuoteForError(value), " has the character ", DescribeChar(value[i]),
          " at offset ", i, "; allowed are letters, digits and ._~:/@+-"));
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateText(absl::string_view field, absl::string_view value, size_t max_length) {
  if (value.size() > max_length) {
    return absl::InvalidArgumentError(absl::StrCat(field, " ", QuoteForError(value), " is ",
                                                   value.size(), " bytes long; at most ",
                                                   max_length, " are allowed"));
  }
  for (size_t i = 0; i < value.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(value[i]);
    if (c < 0x20 || c == 0x7f) {
      return absl::InvalidArgumentError(absl::StrCat(field, " ", QuoteForError(value),
                                                     " has the control character ",
                                                     DescribeChar(value[i]), " at offset ", i));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<absl::Duration> ParseDuration(absl::string_view field,
                                             const google::protobuf::Duration& value,
                                             absl::Duration max) {
  const int64_t s = value.seconds();
  const int32_t n = value.nanos();
  const std::string shown = absl::StrFormat("{seconds: %d, nanos: %d}", s, n);
  if (n <= -1000000000 || n >= 1000000000 || (s > 0 && n < 0) || (s < 0 && n > 0)) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, " ", shown,
                     " is not a valid duration (nanos out of range or of "
                     "another sign than seconds)"));
  }
  if (s < 0 || n < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, " must not be negative, got ",
                     absl::FormatDuration(absl::Seconds(s) + absl::Nanoseconds(n))));
  }
  if (s > absl::ToInt64Seconds(max) + 1) {  // before converting: avoids overflow
    return absl::InvalidArgumentError(
        absl::StrCat(field, " ", s, "s is more than the allowed ", absl::FormatDuration(max)));
  }
  const absl::Duration d = absl::Seconds(s) + absl::Nanoseconds(n);
  if (d > max) {
    return absl::InvalidArgumentError(absl::StrCat(field, " ", absl::FormatDuration(d),
                                                   " is more than the allowed ",
                                                   absl::FormatDuration(max)));
  }
  return d;
}

absl::StatusOr<LeaseId> ParseLeaseId(absl::string_view field, absl::string_view value) {
  if (value.empty()) return absl::InvalidArgumentError(absl::StrCat(field, " is required"));
  absl::StatusOr<LeaseId> id = LeaseId::Parse(value);
  if (!id.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, " ", QuoteForError(value), " is not a lease id (32 hex digits)"));
  }
  return id;
}

}  // namespace quotad
