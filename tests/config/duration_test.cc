#include "service/config/duration.h"

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/support/status_matchers.h"

namespace quotad {
namespace {

using ::quotad::testing::IsOk;
using ::quotad::testing::StatusIs;
using ::testing::Not;

TEST(DurationTest, AcceptsSecondsMinutesHoursDays) {
  EXPECT_EQ(*ParseConfigDuration("90s"), absl::Seconds(90));
  EXPECT_EQ(*ParseConfigDuration("15m"), absl::Minutes(15));
  EXPECT_EQ(*ParseConfigDuration("24h"), absl::Hours(24));
  EXPECT_EQ(*ParseConfigDuration("1d"), absl::Hours(24));
  EXPECT_EQ(*ParseConfigDuration("250ms"), absl::Milliseconds(250));
}

TEST(DurationTest, AcceptsCompoundAndFractionalTerms) {
  EXPECT_EQ(*ParseConfigDuration("1h30m"), absl::Minutes(90));
  EXPECT_EQ(*ParseConfigDuration("1.5h"), absl::Minutes(90));
  EXPECT_EQ(*ParseConfigDuration("0s"), absl::ZeroDuration());
}

TEST(DurationTest, RejectsNegativeGarbageAndMissingUnits) {
  for (const char* bad : {"", "-5s", "60", "abc", "5x", "s", "1.h", "5 s", "+5s", "inf"}) {
    absl::StatusOr<absl::Duration> d = ParseConfigDuration(bad);
    EXPECT_THAT(d, Not(IsOk())) << bad;
    if (!d.ok()) {
      EXPECT_THAT(d, StatusIs(absl::StatusCode::kInvalidArgument));
      EXPECT_NE(d.status().message().find(absl::StrCat("\"", bad, "\"")), absl::string_view::npos)
          << d.status();
    }
  }
}

TEST(DurationTest, RejectsAbsurdlyLongDurations) {
  EXPECT_THAT(ParseConfigDuration("99999999999s"), Not(IsOk()));
  EXPECT_THAT(ParseConfigDuration("40000d"), Not(IsOk()));
}

}  // namespace
}  // namespace quotad
