// Wire input checks (service/server/validation.h): every error names the field and the value.

#include "service/server/validation.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace quotad {
namespace {

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
  EXPECT_TRUE(ValidateName("credential", "team-a/key_1.x~y:z@w+v").ok());
}

TEST(ValidateNameTest, RefusesEmptyLongAndForeignCharactersNamingThem) {
  absl::Status empty = ValidateName("credential", "");
  EXPECT_EQ(empty.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(empty.message(), "credential is required");

  absl::Status space = ValidateName("feature", "a b");
  EXPECT_EQ(space.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(space.message(), AllOf(HasSubstr("feature \"a b\""), HasSubstr("' '"),
                                     HasSubstr("at offset 1")));

  absl::Status long_name = ValidateName("credential", std::string(kMaxNameLength + 1, 'a'));
  EXPECT_EQ(long_name.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(long_name.message(),
              HasSubstr(absl::StrCat(kMaxNameLength + 1, " bytes long; at most ", kMaxNameLength)));
}

TEST(ValidateTextTest, AllowsEmptyAndRefusesControlCharactersAndLength) {
  EXPECT_TRUE(ValidateText("scope", "", 10).ok());
  EXPECT_TRUE(ValidateText("scope", "any text, even ünïcode", 64).ok());
  absl::Status control = ValidateText("holder", "a\x01", 10);
  EXPECT_EQ(control.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(control.message(),
              AllOf(HasSubstr("holder"), HasSubstr("control character"), HasSubstr("offset 1")));
  EXPECT_EQ(ValidateText("request_id", "a\x7f", 10).code(), absl::StatusCode::kInvalidArgument);
  absl::Status too_long = ValidateText("request_id", "abcdef", 5);
  EXPECT_THAT(too_long.message(), HasSubstr("6 bytes long; at most 5"));
}

TEST(ParseDurationTest, AcceptsWithinBounds) {
  absl::StatusOr<absl::Duration> d = ParseDuration("ttl", Proto(1, 500000000), absl::Minutes(1));
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(*d, absl::Milliseconds(1500));
  EXPECT_EQ(*ParseDuration("ttl", Proto(60), absl::Minutes(1)), absl::Minutes(1));
}

TEST(ParseDurationTest, RefusesNegativeMalformedAndTooLongNamingTheValue) {
  absl::Status negative = ParseDuration("max_wait", Proto(-2), absl::Hours(1)).status();
  EXPECT_EQ(negative.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(negative.message(), HasSubstr("max_wait must not be negative, got -2s"));

  absl::Status mixed = ParseDuration("ttl", Proto(1, -5), absl::Hours(1)).status();
  EXPECT_THAT(mixed.message(), AllOf(HasSubstr("ttl {seconds: 1, nanos: -5}"),
                                     HasSubstr("not a valid duration")));

  absl::Status huge = ParseDuration("ttl", Proto(int64_t{1} << 60), kMaxTtl).status();
  EXPECT_EQ(huge.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(huge.message(), HasSubstr("is more than the allowed"));

  absl::Status over = ParseDuration("max_wait", Proto(3600, 1), kMaxWait).status();
  EXPECT_THAT(over.message(), HasSubstr("max_wait 1h0.000000001s is more than the allowed 1h"));
}

TEST(ParseLeaseIdTest, AcceptsEitherCaseAndNamesABadValue) {
  absl::StatusOr<LeaseId> lower = ParseLeaseId("lease_id", "0123456789abcdef0123456789abcdef");
  absl::StatusOr<LeaseId> upper = ParseLeaseId("lease_id", "0123456789ABCDEF0123456789ABCDEF");
  ASSERT_TRUE(lower.ok()) << lower.status();
  ASSERT_TRUE(upper.ok()) << upper.status();
  EXPECT_EQ(*lower, *upper);
  EXPECT_EQ(ParseLeaseId("lease_id", "").status().message(), "lease_id is required");
  absl::Status bad = ParseLeaseId("lease_id", "xyz").status();
  EXPECT_EQ(bad.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.message(), HasSubstr("lease_id \"xyz\" is not a lease id"));
}

}  // namespace
}  // namespace quotad
