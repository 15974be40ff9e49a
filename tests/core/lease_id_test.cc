// LeaseId: its text form and the generator.

#include "service/core/lease_id.h"

#include <string>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/support/status_matchers.h"

namespace quotad {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using testing::IsOk;
using testing::StatusIs;

TEST(LeaseIdTest, PrintsAs32LowercaseHexDigitsAndParsesBack) {
  const LeaseId id{0x0123456789abcdefULL, 0xfedcba9876543210ULL};
  EXPECT_EQ(id.ToString(), "0123456789abcdeffedcba9876543210");
  absl::StatusOr<LeaseId> back = LeaseId::Parse(id.ToString());
  ASSERT_OK(back);
  EXPECT_EQ(*back, id);
}

TEST(LeaseIdTest, ParseAcceptsUppercase) {
  absl::StatusOr<LeaseId> id = LeaseId::Parse("0123456789ABCDEFFEDCBA9876543210");
  ASSERT_OK(id);
  EXPECT_EQ(id->hi, 0x0123456789abcdefULL);
  EXPECT_EQ(id->lo, 0xfedcba9876543210ULL);
}

TEST(LeaseIdTest, ParseRejectsWrongLengthOrNonHexNamingTheText) {
  for (const std::string text :
       {"", "0123", "0123456789abcdeffedcba98765432100", "0123456789abcdefgedcba9876543210"}) {
    absl::StatusOr<LeaseId> id = LeaseId::Parse(text);
    EXPECT_THAT(id, StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("'" + text + "'")))
        << text;
  }
}

TEST(LeaseIdTest, NewLeaseIdsDoNotRepeatAcrossPoolRefills) {
  absl::flat_hash_set<LeaseId> seen;
  for (int i = 0; i < 2000; ++i) {  // several refills of the 256-id pool
    EXPECT_TRUE(seen.insert(NewLeaseId()).second);
  }
}

TEST(LeaseIdTest, RoundTripsThroughTextAndRejectsGarbage) {
  const LeaseId id{0x0123456789abcdefULL, 0xfedcba9876543210ULL};
  EXPECT_EQ(id.ToString(), "0123456789abcdeffedcba9876543210");
  auto parsed = LeaseId::Parse(id.ToString());
  ASSERT_OK(parsed);
  EXPECT_EQ(*parsed, id);
  auto bad = LeaseId::Parse("xyz");
  EXPECT_THAT(bad, StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("'xyz'")));
  EXPECT_THAT(LeaseId::Parse("0123456789abcdeffedcba987654321g"), Not(IsOk()));
}

}  // namespace
}  // namespace quotad
