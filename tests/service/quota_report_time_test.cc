// QuotaService::Report's timestamps (observed_at, sent_at; service/server/quota_service.cc
// ReportTime) called directly over a real ledger on a fake clock (service_fixture.h): what is
// accepted, and that every refusal names the field and the bad value.

#include <cstdint>
#include <limits>
#include <string>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "service/server/quota_service.h"
#include "tests/service/service_fixture.h"

namespace quotad {
namespace {

using ::quotad::testing::IsOk;
using ::quotad::testing::StatusIs;
using ::testing::AllOf;
using ::testing::HasSubstr;

class ReportTimeTest : public testing::ServiceFixture {
 protected:
  // A throttle answer for bob's key.
  v1::ReportRequest Throttle() {
    v1::ReportRequest r;
    r.set_credential("team-b/key");
    r.set_feature("requests");
    r.set_http_status(429);
    v1::Header* retry = r.add_headers();
    retry->set_name("Retry-After");
    retry->set_value("30");
    return r;
  }
  static void Set(google::protobuf::Timestamp* p, absl::Time t) {
    const int64_t ns = absl::ToUnixNanos(t);
    p->set_seconds(ns / 1000000000 - (ns % 1000000000 < 0 ? 1 : 0));
    p->set_nanos(static_cast<int32_t>(((ns % 1000000000) + 1000000000) % 1000000000));
  }
  absl::StatusOr<v1::ReportResponse> Send(const v1::ReportRequest& r) {
    return quota_->Report(MustCaller("bob-token"), r);
  }
};

TEST_F(ReportTimeTest, SentAtAbsentEqualOrBeforeObservedAtIsAccepted) {
  Build();
  const absl::Time now = clock_.Now();
  v1::ReportRequest r = Throttle();
  EXPECT_THAT(Send(r), IsOk());
  Set(r.mutable_observed_at(), now - absl::Seconds(10));
  Set(r.mutable_sent_at(), now - absl::Seconds(10));
  EXPECT_THAT(Send(r), IsOk());
  Set(r.mutable_sent_at(), now - absl::Minutes(59));
  EXPECT_THAT(Send(r), IsOk());
  r.clear_observed_at();
  Set(r.mutable_sent_at(), now);  // observed_at absent: the server's clock, equal
  EXPECT_THAT(Send(r), IsOk());
}

TEST_F(ReportTimeTest, SentAtAfterObservedAtNamesBoth) {
  Build();
  const absl::Time now = clock_.Now();
  v1::ReportRequest r = Throttle();
  Set(r.mutable_observed_at(), now - absl::Seconds(10));
  Set(r.mutable_sent_at(), now - absl::Seconds(9));
  EXPECT_THAT(Send(r), StatusIs(absl::StatusCode::kInvalidArgument,
                                AllOf(HasSubstr("sent_at"), HasSubstr("is after observed_at"),
                                      HasSubstr(absl::FormatTime(absl::RFC3339_full,
                                                                 now - absl::Seconds(9),
                                                                 absl::UTCTimeZone())),
                                      HasSubstr(absl::FormatTime(absl::RFC3339_full,
                                                                 now - absl::Seconds(10),
                                                                 absl::UTCTimeZone())))));
}

TEST_F(ReportTimeTest, SentAtOutOfRangeNamesTheFieldAndTheValue) {
  Build();
  const absl::Time now = clock_.Now();
  v1::ReportRequest r = Throttle();
  Set(r.mutable_sent_at(), now - absl::Hours(1) - absl::Seconds(1));
  EXPECT_THAT(Send(r), StatusIs(absl::StatusCode::kInvalidArgument,
                                AllOf(HasSubstr("sent_at "),
                                      HasSubstr(absl::FormatTime(
                                          absl::RFC3339_full, now - absl::Hours(1) - absl::Seconds(1),
                                          absl::UTCTimeZone())),
                                      HasSubstr("1h"))));
  r.mutable_sent_at()->set_seconds(absl::ToUnixSeconds(now));
  r.mutable_sent_at()->set_nanos(-1);
  EXPECT_THAT(Send(r), StatusIs(absl::StatusCode::kInvalidArgument,
                                AllOf(HasSubstr("sent_at {seconds: "), HasSubstr("nanos: -1}"))));
  r.mutable_sent_at()->set_nanos(1000000000);
  EXPECT_THAT(Send(r), StatusIs(absl::StatusCode::kInvalidArgument,
                                HasSubstr("nanos: 1000000000}")));
  // The int64 bounds: refused, not overflowed.
  for (const int64_t seconds :
       {std::numeric_limits<int64_t>::max(), std::numeric_limits<int64_t>::min()}) {
    r.mutable_sent_at()->set_seconds(seconds);
    r.mutable_sent_at()->set_nanos(999999999);
    EXPECT_THAT(Send(r), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("sent_at ")))
        << seconds;
  }
  // A bad observed_at is named as such, before sent_at is looked at.
  r.mutable_sent_at()->set_seconds(absl::ToUnixSeconds(now));
  r.mutable_sent_at()->set_nanos(0);
  Set(r.mutable_observed_at(), now + absl::Minutes(2));
  EXPECT_THAT(Send(r), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("observed_at ")));
  // Nothing was applied: no cooldown from any refused report.
  EXPECT_TRUE(throttles_.Recent().empty());
}

// Without observed_at the server's clock stands for it, while sent_at is read on the worker's:
// a worker whose clock is 3 ms ahead of the server's, reporting a 429 of a short call, keeps its
// report (sent_at is taken as observed_at) and the feature cools down. Refused before the fix
// ("sent_at ... is after observed_at ...").
TEST_F(ReportTimeTest, AWorkerClockAheadOfTheServerDoesNotLoseTheThrottle) {
  Build();
  v1::ReportRequest r = Throttle();
  Set(r.mutable_sent_at(), clock_.Now() + absl::Milliseconds(3));
  absl::StatusOr<v1::ReportResponse> resp = Send(r);
  ASSERT_THAT(resp, IsOk());
  EXPECT_TRUE(resp->has_cooldown_until());
}

}  // namespace
}  // namespace quotad
