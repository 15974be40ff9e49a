// Wire input checks (service/server/validation.h): every error names the field and the value.

#include "service/server/validation.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/support/status_matchers.h"

namespace quotad {
namespace {

using ::quotad::testing::IsOkAndHolds;
using ::quotad::testing::StatusIs;
using ::testing::_;
using ::testing::AllOf;
using ::testing::HasSubstr;

google::protobuf::Duration Proto(int64_t seconds, int32_t nanos = 0) {
  google::protobuf::Duration d;
  d.set_seconds(seconds);
  d.set_nanos(nanos);
  return d;
}

TEST(QuoteForErrorTest, QuotesEscapesAndTruncates) {
  EXPECT_EQ(QuoteForError("abc"), "\"abc\"");
  EXPECT_EQ(QuoteForError("a\nb\"c"), "\"a\\nb\\\"c\"");
  const std::string quoted = QuoteForError(std::string(100, 'x'));
  EXPECT_THAT(quoted, HasSubstr("\"... (100 bytes)"));
  EXPECT_THAT(quoted, HasSubstr(std::string(64, 'x')));
  EXPECT_THAT(quoted, ::testing::Not(HasSubstr(std::string(65, 'x'))));
}

TEST(ValidateNameTest, AcceptsTheNameAlphabet) {
  EXPECT_OK(ValidateName("credential", "team-a/key_1.x~y:z@w+v"));
}

TEST(ValidateNameTest, RefusesEmptyLongAndForeignCharactersNamingThem) {
  EXPECT_THAT(ValidateName("credential", ""),
              StatusIs(absl::StatusCode::kInvalidArgument, "credential is required"));
  EXPECT_THAT(
      ValidateName("feature", "a b"),
      StatusIs(absl::StatusCode::kInvalidArgument,
               AllOf(HasSubstr("feature \"a b\""), HasSubstr("' '"), HasSubstr("at offset 1"))));
  EXPECT_THAT(ValidateName("credential", std::string(kMaxNameLength + 1, 'a')),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr(absl::StrCat(kMaxNameLength + 1, " bytes long; at most ",
                                              kMaxNameLength))));
}

TEST(ValidateTextTest, AllowsEmptyAndRefusesControlCharactersAndLength) {
  EXPECT_OK(ValidateText("scope", "", 10));
  EXPECT_OK(ValidateText("scope", "any text, even ünïcode", 64));
  EXPECT_THAT(
      ValidateText("holder", "a\x01", 10),
      StatusIs(absl::StatusCode::kInvalidArgument,
               AllOf(HasSubstr("holder"), HasSubstr("control character"), HasSubstr("offset 1"))));
  EXPECT_THAT(ValidateText("request_id", "a\x7f", 10),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(ValidateText("request_id", "abcdef", 5),
              StatusIs(_, HasSubstr("6 bytes long; at most 5")));
}

TEST(ParseDurationTest, AcceptsWithinBounds) {
  EXPECT_THAT(ParseDuration("ttl", Proto(1, 500000000), absl::Minutes(1)),
              IsOkAndHolds(absl::Milliseconds(1500)));
  EXPECT_THAT(ParseDuration("ttl", Proto(60), absl::Minutes(1)), IsOkAndHolds(absl::Minutes(1)));
}

TEST(ParseDurationTest, RefusesNegativeMalformedAndTooLongNamingTheValue) {
  EXPECT_THAT(ParseDuration("max_wait", Proto(-2), absl::Hours(1)),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("max_wait must not be negative, got -2s")));
  EXPECT_THAT(ParseDuration("ttl", Proto(1, -5), absl::Hours(1)),
              StatusIs(_, AllOf(HasSubstr("ttl {seconds: 1, nanos: -5}"),
                                HasSubstr("not a valid duration"))));
  EXPECT_THAT(ParseDuration("ttl", Proto(int64_t{1} << 60), kMaxTtl),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("is more than the allowed")));
  EXPECT_THAT(ParseDuration("max_wait", Proto(3600, 1), kMaxWait),
              StatusIs(_, HasSubstr("max_wait 1h0.000000001s is more than the allowed 1h")));
}

TEST(ParseLeaseIdTest, AcceptsEitherCaseAndNamesABadValue) {
  absl::StatusOr<LeaseId> lower = ParseLeaseId("lease_id", "0123456789abcdef0123456789abcdef");
  absl::StatusOr<LeaseId> upper = ParseLeaseId("lease_id", "0123456789ABCDEF0123456789ABCDEF");
  ASSERT_OK(lower);
  ASSERT_OK(upper);
  EXPECT_EQ(*lower, *upper);
  EXPECT_THAT(ParseLeaseId("lease_id", ""), StatusIs(_, "lease_id is required"));
  EXPECT_THAT(ParseLeaseId("lease_id", "xyz"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("lease_id \"xyz\" is not a lease id")));
}

}  // namespace
}  // namespace quotad
