// libFuzzer target: request validation (service/server/validation.h), the checks every
// AcquireRequest, ReleaseRequest and RenewRequest field goes through before it reaches the ledger,
// and the name grammar's one owner (service/core/names.h), which must agree with it.
// Each function is compared with an independent statement of its contract, and every error must
// name the field and stay printable and short.

#include <fuzzer/FuzzedDataProvider.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "google/protobuf/duration.pb.h"
#include "service/core/names.h"
#include "service/core/policy.h"
#include "service/server/validation.h"

namespace {

void Check(bool ok, const char* what, absl::string_view detail = "") {
  if (!ok) {
    std::fprintf(stderr, "validation_fuzzer: property violated: %s %.*s\n", what,
                 static_cast<int>(detail.size()), detail.data());
    std::abort();
  }
}

bool Printable(absl::string_view s) {
  for (char c : s) {
    const unsigned char u = static_cast<unsigned char>(c);
    if (u < 0x20 || u >= 0x7f) return false;
  }
  return true;
}

// An error: kInvalidArgument, starting with the field, printable (the bad value is escaped), and
// bounded whatever the value's size.
void CheckError(const absl::Status& s, absl::string_view field) {
  Check(s.code() == absl::StatusCode::kInvalidArgument, "error is kInvalidArgument",
        s.ToString());
  Check(absl::StartsWith(s.message(), field), "error starts with the field name", s.message());
  Check(Printable(s.message()), "error message is printable ASCII", s.message());
  Check(s.message().size() <= 512, "error message is bounded", s.message());
}

bool NameChar(char c) {
  return absl::ascii_isalnum(static_cast<unsigned char>(c)) ||
         absl::string_view("._~:/@+-").find(c) != absl::string_view::npos;
}

void FuzzName(FuzzedDataProvider& in) {
  const std::string value = in.ConsumeRandomLengthString(600);
  bool want = !value.empty() && value.size() <= quotad::kMaxNameLength;
  for (char c : value) want &= NameChar(c);
  const absl::Status s = quotad::ValidateName("credential", value);
  Check(s.ok() == want, "ValidateName accepts exactly 1..256 of [A-Za-z0-9._~:/@+-]", value);
  if (!s.ok()) CheckError(s, "credential");

  // service/core/names.h, the grammar's one owner, agrees with the wire's check: the same
  // alphabet, less '.' for feature and limit names and '/' for identities.
  const absl::Status credential = quotad::CheckCredentialName(value);
  Check(credential.ok() == want, "CheckCredentialName accepts what ValidateName accepts", value);
  if (!credential.ok()) CheckError(credential, "credential");
  const bool has_dot = value.find('.') != std::string::npos;
  const absl::Status feature = quotad::CheckFeatureName(value);
  Check(feature.ok() == (want && !has_dot), "CheckFeatureName: the alphabet less '.'", value);
  if (!feature.ok()) CheckError(feature, "feature");
  Check(quotad::CheckLimitName(value).ok() == feature.ok(), "limit and feature names agree", value);
  Check(quotad::CheckProfileName(value).ok() == want, "profile names are credential names", value);
  const absl::Status identity = quotad::CheckIdentityName(value);
  Check(identity.ok() == (want && value.find('/') == std::string::npos),
        "CheckIdentityName: the alphabet less '/'", value);
  if (!identity.ok()) {
    Check(identity.code() == absl::StatusCode::kInvalidArgument,
          "identity error is kInvalidArgument");
    Check(Printable(identity.message()) && identity.message().size() <= 512,
          "identity error is printable and bounded", identity.message());
  }
}

void FuzzText(FuzzedDataProvider& in) {
  const size_t max = in.ConsumeBool() ? quotad::kMaxNameLength : quotad::kMaxRequestIdLength;
  const std::string value = in.ConsumeRandomLengthString(600);
  bool want = value.size() <= max;
  for (char c : value) want &= static_cast<unsigned char>(c) >= 0x20 && c != 0x7f;
  const absl::Status s = quotad::ValidateText("scope", value, max);
  Check(s.ok() == want, "ValidateText accepts exactly short text without control characters",
        value);
  if (!s.ok()) CheckError(s, "scope");
  if (max == quotad::kMaxNameLength) {
    const absl::Status scope = quotad::CheckScope(value);
    Check(scope.ok() == want, "CheckScope (names.h) accepts what ValidateText accepts", value);
    if (!scope.ok()) CheckError(scope, "scope");
  }
}

void FuzzDuration(FuzzedDataProvider& in) {
  google::protobuf::Duration d;
  if (in.ConsumeBool()) {
    d.set_seconds(in.ConsumeIntegral<int64_t>());
    d.set_nanos(in.ConsumeIntegral<int32_t>());
  } else {  // near the interesting edges
    d.set_seconds(in.ConsumeIntegralInRange<int64_t>(-2, 366 * 86400 + 2));
    d.set_nanos(in.ConsumeIntegralInRange<int32_t>(-1'000'000'001, 1'000'000'001));
  }
  // The maxima the server uses, and others up to 100 years.
  absl::Duration max;
  switch (in.ConsumeIntegralInRange(0, 2)) {
    case 0: max = quotad::kMaxWait; break;
    case 1: max = quotad::kMaxTtl; break;
    default: max = absl::Seconds(in.ConsumeIntegralInRange<int64_t>(0, 100LL * 366 * 86400));
  }
  const int64_t s = d.seconds();
  const int32_t n = d.nanos();
  absl::StatusOr<absl::Duration> got = quotad::ParseDuration("lease_ttl", d, max);
  const bool well_formed = n > -1'000'000'000 && n < 1'000'000'000 && !(s > 0 && n < 0) &&
                           !(s < 0 && n > 0);
  if (!well_formed || s < 0 || n < 0 || s > absl::ToInt64Seconds(max) + 1) {
    Check(!got.ok(), "ParseDuration refuses malformed, negative and far too long durations");
  }
  if (got.ok()) {
    Check(*got >= absl::ZeroDuration() && *got <= max, "ParseDuration result in [0, max]");
    Check(*got == absl::Seconds(s) + absl::Nanoseconds(n), "ParseDuration keeps the value");
  } else {
    CheckError(got.status(), "lease_ttl");
    if (well_formed && s >= 0 && n >= 0) {
      Check(absl::Seconds(s) + absl::Nanoseconds(n) > max, "ParseDuration refuses only > max");
    }
  }
}

void FuzzLeaseId(FuzzedDataProvider& in) {
  const std::string value = in.ConsumeRandomLengthString(80);
  bool want = value.size() == 32;
  for (char c : value) want &= absl::ascii_isxdigit(static_cast<unsigned char>(c));
  absl::StatusOr<quotad::LeaseId> got = quotad::ParseLeaseId("lease_id", value);
  Check(got.ok() == want, "ParseLeaseId accepts exactly 32 hex digits", value);
  if (got.ok()) {
    Check(got->ToString() == absl::AsciiStrToLower(value), "lease id round-trips", value);
  } else {
    CheckError(got.status(), "lease_id");
  }
}

void FuzzQuote(FuzzedDataProvider& in) {
  const std::string value = in.ConsumeRandomLengthString(4096);
  const std::string q = quotad::QuoteForError(value);
  Check(Printable(q), "QuoteForError output is printable ASCII", q);
  Check(q.size() <= 2 + 4 * 64 + 32, "QuoteForError output is bounded", q);
  const std::string v = quotad::QuoteValue(value);
  Check(v == q, "QuoteValue (names.h) quotes as QuoteForError does", v);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider in(data, size);
  while (in.remaining_bytes() > 0) {
    switch (in.ConsumeIntegralInRange(0, 4)) {
      case 0: FuzzName(in); break;
      case 1: FuzzText(in); break;
      case 2: FuzzDuration(in); break;
      case 3: FuzzLeaseId(in); break;
      default: FuzzQuote(in); break;
    }
  }
  return 0;
}
