// The limit bounds of service/core/bounds.h as the config loader applies them: a value at the
// bound loads, one past it is refused at its line, with the bound in the message.

#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "service/config/config.h"
#include "service/core/bounds.h"
#include "tests/support/status_matchers.h"

namespace quotad {
namespace {

using ::quotad::testing::IsOk;
using ::quotad::testing::StatusIs;
using ::testing::AllOf;
using ::testing::HasSubstr;

constexpr absl::StatusCode kInvalid = absl::StatusCode::kInvalidArgument;

absl::StatusOr<Policy> LoadLimit(const std::string& limit) {
  return LoadPolicyFromString(
      absl::StrCat("credentials:\n  - name: a\n    features:\n      - name: f\n        limits:\n"
                   "          - ",
                   limit, "\n"),
      "b.yaml");
}

TEST(LimitChecksTest, PeriodUpToKMaxPeriod) {
  const int64_t days = absl::ToInt64Hours(kMaxPeriod) / 24;
  EXPECT_THAT(LoadLimit(absl::StrCat("{name: w, kind: rolling, capacity: 5, period: ", days,
                                     "d}")),
              IsOk());
  EXPECT_THAT(LoadLimit(absl::StrCat("{name: w, kind: rolling, capacity: 5, period: ", days + 1,
                                     "d}")),
              StatusIs(kInvalid, AllOf(HasSubstr("b.yaml:6:"), HasSubstr("limits[0].period"),
                                       HasSubstr(absl::StrCat("at most ", days, "d")))));
}

TEST(LimitChecksTest, GuardUpToKMaxGuard) {
  EXPECT_THAT(LoadLimit("{name: s, kind: sliding, capacity: 5, period: 60s, guard: 1h}"), IsOk());
  EXPECT_THAT(LoadLimit("{name: s, kind: sliding, capacity: 5, period: 60s, guard: 61m}"),
              StatusIs(kInvalid, AllOf(HasSubstr("limits[0].guard"),
                                       HasSubstr(absl::StrCat(
                                           "at most ", absl::FormatDuration(kMaxGuard))))));
}

TEST(LimitChecksTest, SubBucketsUpToKMaxSubBuckets) {
  EXPECT_THAT(LoadLimit(absl::StrCat("{name: s, kind: sliding, capacity: 5, period: 366d, "
                                     "sub_buckets: ", kMaxSubBuckets, "}")),
              IsOk());
  EXPECT_THAT(LoadLimit(absl::StrCat("{name: s, kind: sliding, capacity: 5, period: 366d, "
                                     "sub_buckets: ", kMaxSubBuckets + 1, "}")),
              StatusIs(kInvalid, AllOf(HasSubstr("limits[0].sub_buckets"),
                                       HasSubstr(absl::StrCat("[0, ", kMaxSubBuckets, "]")))));
  EXPECT_THAT(LoadLimit("{name: s, kind: sliding, capacity: 5, period: 10s, sub_buckets: 20000}"),
              StatusIs(kInvalid, HasSubstr("narrower than 1ms")));
}

TEST(LimitChecksTest, ExactSlidingLogUpToKMaxExactSlidingCapacity) {
  EXPECT_THAT(LoadLimit(absl::StrCat("{name: s, kind: sliding, period: 1h, capacity: ",
                                     kMaxExactSlidingCapacity, "}")),
              IsOk());
  EXPECT_THAT(LoadLimit(absl::StrCat("{name: s, kind: sliding, period: 1h, capacity: ",
                                     kMaxExactSlidingCapacity + 1, "}")),
              StatusIs(kInvalid, HasSubstr("set sub_buckets")));
}

}  // namespace
}  // namespace quotad
