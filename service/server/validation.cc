#include "service/server/validation.h"

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "service/core/names.h"

namespace quotad {
std::string QuoteForError(absl::string_view value) { return QuoteValue(value); }

absl::Status ValidateName(absl::string_view field, absl::string_view value) {
  return CheckCredentialName(value, field);  // the alphabet every kind of name shares
}

absl::Status ValidateText(absl::string_view field, absl::string_view value, size_t max_length) {
  return CheckText(value, max_length, field);
}

absl::StatusOr<absl::Duration> ParseDuration(absl::string_view field,
                                             const google::protobuf::Duration& value,
                                             absl::Duration max) {
  const int64_t s = value.seconds();
  const int32_t n = value.nanos();
  if (s == 0 && n == 0) return absl::ZeroDuration();  // absent: the common case
  if (n <= -1000000000 || n >= 1000000000 || (s > 0 && n < 0) || (s < 0 && n > 0)) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, " ", absl::StrFormat("{seconds: %d, nanos: %d}", s, n),
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
