#ifndef QUOTAD_SERVICE_SERVER_VALIDATION_H_
#define QUOTAD_SERVICE_SERVER_VALIDATION_H_

// Checks of wire input by the error model of SPEC section 4. Every error is kInvalidArgument and
// names the field and the (escaped, truncated) value. Pure functions; thread-safe.

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "google/protobuf/duration.pb.h"
#include "service/core/bounds.h"
#include "service/core/ledger.h"

namespace quotad {

inline constexpr size_t kMaxRequestIdLength = 128;
inline constexpr int32_t kMaxPriority = 1000;
inline constexpr absl::Duration kMaxWait = absl::Hours(1);
// Longer than any lease a feature may allow; anything above is a unit mistake.
inline constexpr absl::Duration kMaxTtl = kMaxLeaseTtl;

// Report: caps on what a worker passes on from an upstream answer.
inline constexpr int kMaxReportHeaders = 64;
inline constexpr size_t kMaxHeaderNameLength = 256;
inline constexpr size_t kMaxHeaderValueLength = 8192;
inline constexpr size_t kMaxReportHeaderBytes = 64 * 1024;  // names and values together
inline constexpr size_t kMaxReportBodyBytes = 64 * 1024;
// How far observed_at may lie behind / ahead of the server's clock.
inline constexpr absl::Duration kMaxReportAge = absl::Hours(1);
inline constexpr absl::Duration kMaxReportLead = absl::Minutes(1);

// The wire's names for the rules of service/core/names.h, which owns them (the grammar, the
// quoting); kept so that call sites read as checks of wire fields.
// The value as it appears in an error message: QuoteValue.
std::string QuoteForError(absl::string_view value);

// A configured identifier (credential, feature, page token): the alphabet every kind of name
// shares (names.h); what a kind excludes beyond it (no '.' in a feature) is the ledger's check.
absl::Status ValidateName(absl::string_view field, absl::string_view value);

// Free text (scope, holder, request id): at most `max_length` bytes, no control characters.
// Empty is allowed (names.h CheckText).
absl::Status ValidateText(absl::string_view field, absl::string_view value, size_t max_length);

// A google.protobuf.Duration that is well formed, not negative and at most `max`.
absl::StatusOr<absl::Duration> ParseDuration(absl::string_view field,
                                             const google::protobuf::Duration& value,
                                             absl::Duration max);

// A lease id: 32 hex digits.
absl::StatusOr<LeaseId> ParseLeaseId(absl::string_view field, absl::string_view value);

}  // namespace quotad

#endif  // QUOTAD_SERVICE_SERVER_VALIDATION_H_
