// LeaseId: its text form and the generator.

#include "service/core/lease_id.h"

#include <string>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "gtest/gtest.h"

namespace quotad {
namespace {

TEST(LeaseIdTest, PrintsAs32LowercaseHexDigitsAndParsesBack) {
  const LeaseId id{0x0123456789abcdefULL, 0xfedcba9876543210ULL};
  EXPECT_EQ(id.ToString(), "0123456789abcdeffedcba9876543210");
  absl::StatusOr<LeaseId> back = LeaseId::Parse(id.ToString());
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(*back, id);
}

TEST(LeaseIdTest, ParseAcceptsUppercase) {
  absl::StatusOr<LeaseId> id = LeaseId::Parse("0123456789ABCDEFFEDCBA9876543210");
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_EQ(id->hi, 0x0123456789abcdefULL);
  EXPECT_EQ(id->lo, 0xfedcba9876543210ULL);
}

TEST(LeaseIdTest, ParseRejectsWrongLengthOrNonHexNamingTheText) {
  for (const std::string text :
       {"", "0123", "0123456789abcdeffedcba98765432100", "0123456789abcdefgedcba9876543210"}) {
    absl::StatusOr<LeaseId> id = LeaseId::Parse(text);
    EXPECT_EQ(id.status().code(), absl::StatusCode::kInvalidArgument) << text;
    EXPECT_NE(id.status().message().find("'" + text + "'"), std::string::npos) << id.status();
  }
}

TEST(LeaseIdTest, NewLeaseIdsDoNotRepeatAcrossPoolRefills) {
  absl::flat_hash_set<LeaseId> seen;
  for (int i = 0; i < 2000; ++i) {  // several refills of the 256-id pool
    EXPECT_TRUE(seen.insert(NewLeaseId()).second);
  }
}

}  // namespace
}  // namespace quotad
