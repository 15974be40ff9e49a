// The limit kinds (limits.h), one at a time, through the Ledger on a FakeClock, at their
// boundaries: calendar windows (UTC midnight, month ends, DST in a named zone, ISO weeks, hours
// and minutes), rolling windows, exact and sub-bucket sliding windows, token buckets,
// concurrency leases with expiry and renewal, unlimited counters, and the guard that keeps late
// charges. The write-ahead reservations of a counter are in limits_reservation_test.

#include <memory>

#include "gtest/gtest.h"
#include "service/core/clock.h"
#include "service/core/ledger.h"
#include "tests/support/policy_builders.h"
#include "tests/support/status_matchers.h"

namespace quotad {
namespace {

using testing::Bucket;
using testing::Calendar;
using testing::Concurrency;
using testing::Feature;
using testing::OneCredential;
using testing::Rolling;
using testing::Sliding;
using testing::StatusIs;
using testing::Unlimited;
using testing::Utc;

class LimitsTest : public ::testing::Test {
 protected:
  void Use(LimitSpec limit) {
    auto ledger =
        Ledger::Create(OneCredential("cred", {Feature("f", {std::move(limit)})}), &clock_);
    ASSERT_OK(ledger);
    ledger_ = std::move(*ledger);
  }
  Decision Acquire(int64_t cost = 1) {
    AcquireRequest req;
    req.credential = "cred";
    req.feature = "f";
    req.cost = cost;
    auto d = ledger_->Acquire(req);
    EXPECT_OK(d);
    return d.ok() ? *d : Decision{};
  }
  // Grants until denied; returns how many were granted.
  int Exhaust() {
    int n = 0;
    while (Acquire().granted) ++n;
    return n;
  }

  FakeClock clock_;
  std::unique_ptr<Ledger> ledger_;
};

TEST_F(LimitsTest, DailyWindowReopensAtUtcMidnight) {
  Use(Calendar("per_day", 500, CalendarUnit::kDay));
  clock_.Set(Utc(2026, 3, 1, 23, 59, 0));
  EXPECT_EQ(Exhaust(), 500);
  const Decision denied = Acquire();
  EXPECT_FALSE(denied.granted);
  EXPECT_EQ(denied.retry_at, Utc(2026, 3, 2));
  EXPECT_EQ(denied.limited_by, "f.per_day");
  clock_.Advance(absl::Seconds(59));
  EXPECT_FALSE(Acquire().granted);
  clock_.Advance(absl::Seconds(1));
  EXPECT_TRUE(Acquire().granted);
}

TEST_F(LimitsTest, MonthlyWindowEndsOnEachMonthsLastDay) {
  Use(Calendar("per_month", 3, CalendarUnit::kMonth));
  // January (31 days), February 2026 (28), April (30), February 2028 (29).
  for (auto [y, m, last] : {std::tuple{2026, 1, 31}, {2026, 2, 28}, {2026, 4, 30}, {2028, 2, 29}}) {
    clock_.Set(Utc(y, m, last, 23, 59, 59));
    Exhaust();
    const Decision denied = Acquire();
    ASSERT_FALSE(denied.granted);
    EXPECT_EQ(denied.retry_at, Utc(y, m, last) + absl::Hours(24)) << y << "-" << m;
    clock_.Set(denied.retry_at - absl::Nanoseconds(1));
    EXPECT_FALSE(Acquire().granted);
    clock_.Set(denied.retry_at);
    EXPECT_EQ(Exhaust(), 3) << y << "-" << m;
  }
}

TEST_F(LimitsTest, DayWindowFollowsDstInNamedZone) {
  // Europe/Berlin springs forward on 2026-03-29: that day has 23 hours.
  Use(Calendar("per_day", 1, CalendarUnit::kDay, "Europe/Berlin"));
  absl::TimeZone berlin;
  ASSERT_TRUE(absl::LoadTimeZone("Europe/Berlin", &berlin));
  clock_.Set(absl::FromCivil(absl::CivilSecond(2026, 3, 29, 0, 30, 0), berlin));
  EXPECT_TRUE(Acquire().granted);
  const Decision denied = Acquire();
  ASSERT_FALSE(denied.granted);
  EXPECT_EQ(denied.retry_at, absl::FromCivil(absl::CivilDay(2026, 3, 30), berlin));
  EXPECT_EQ(denied.retry_at - absl::FromCivil(absl::CivilDay(2026, 3, 29), berlin),
            absl::Hours(23));
  // And falls back on 2026-10-25: 25 hours.
  clock_.Set(absl::FromCivil(absl::CivilSecond(2026, 10, 25, 12, 0, 0), berlin));
  EXPECT_TRUE(Acquire().granted);
  const Decision long_day = Acquire();
  ASSERT_FALSE(long_day.granted);
  EXPECT_EQ(long_day.retry_at - absl::FromCivil(absl::CivilDay(2026, 10, 25), berlin),
            absl::Hours(25));
}

TEST_F(LimitsTest, IsoWeekStartsOnMonday) {
  Use(Calendar("per_week", 1, CalendarUnit::kWeek));
  clock_.Set(Utc(2026, 11, 22, 18));  // a Sunday
  EXPECT_TRUE(Acquire().granted);
  EXPECT_EQ(Acquire().retry_at, Utc(2026, 11, 23));  // Monday
  clock_.Set(Utc(2026, 11, 23));
  EXPECT_TRUE(Acquire().granted);
  EXPECT_EQ(Acquire().retry_at, Utc(2026, 11, 30));
}

TEST_F(LimitsTest, HourAndMinuteWindowsResetOnTheBoundary) {
  Use(Calendar("per_hour", 2, CalendarUnit::kHour));
  clock_.Set(Utc(2026, 5, 5, 10, 59, 59));
  EXPECT_EQ(Exhaust(), 2);
  clock_.Set(Utc(2026, 5, 5, 11));
  EXPECT_EQ(Exhaust(), 2);
  Use(Calendar("per_minute", 1, CalendarUnit::kMinute));
  clock_.Set(Utc(2026, 5, 5, 11, 0, 30));
  EXPECT_EQ(Exhaust(), 1);
  EXPECT_EQ(Acquire().retry_at, Utc(2026, 5, 5, 11, 1));
}

TEST_F(LimitsTest, RollingWindowOpensAtFirstUseAndReopensAfterPeriod) {
  Use(Rolling("per_24h", 3, absl::Hours(24)));
  clock_.Set(Utc(2026, 6, 1, 11));
  EXPECT_TRUE(Acquire().granted);  // opens the window at 11:00
  clock_.Set(Utc(2026, 6, 1, 22));
  EXPECT_EQ(Exhaust(), 2);
  const Decision denied = Acquire();
  EXPECT_EQ(denied.retry_at, Utc(2026, 6, 2, 11));
  clock_.Set(Utc(2026, 6, 2, 10, 59, 59));
  EXPECT_FALSE(Acquire().granted);
  // Idle past the end: the next window opens at the next first use, not at 11:00.
  clock_.Set(Utc(2026, 6, 3, 9, 15));
  EXPECT_TRUE(Acquire().granted);
  EXPECT_EQ(Exhaust(), 2);
  EXPECT_EQ(Acquire().retry_at, Utc(2026, 6, 4, 9, 15));
}

TEST_F(LimitsTest, ExactSlidingWindowNeverHoldsMoreThanCapacityInAnyPeriod) {
  Use(Sliding("per_minute", 4, absl::Minutes(1)));
  clock_.Set(Utc(2026, 1, 1));
  EXPECT_TRUE(Acquire().granted);  // t=0
  clock_.Advance(absl::Seconds(20));
  EXPECT_TRUE(Acquire(3).granted);  // t=20, 4 in window
  const Decision d = Acquire();
  EXPECT_FALSE(d.granted);
  EXPECT_EQ(d.retry_at, Utc(2026, 1, 1, 0, 1, 0));  // the t=0 charge leaves
  clock_.Set(d.retry_at - absl::Nanoseconds(1));
  EXPECT_FALSE(Acquire().granted);
  clock_.Set(d.retry_at);
  EXPECT_TRUE(Acquire().granted);
  EXPECT_FALSE(Acquire().granted);
  EXPECT_EQ(Acquire().retry_at, Utc(2026, 1, 1, 0, 1, 20));
}

TEST_F(LimitsTest, SlidingRetryAtCoversTheWholeCost) {
  Use(Sliding("per_minute", 4, absl::Minutes(1)));
  clock_.Set(Utc(2026, 1, 1));
  for (int i = 0; i < 4; ++i) {
    EXPECT_TRUE(Acquire().granted);
    clock_.Advance(absl::Seconds(10));
  }
  // Charges at 0, 10, 20, 30; now 40. Three units need the first three to leave: t=80.
  EXPECT_EQ(Acquire(3).retry_at, Utc(2026, 1, 1, 0, 1, 20));
}

TEST_F(LimitsTest, SubBucketSlidingWindowUnderGrantsByAtMostOneBucket) {
  // 60 units per 60 s kept in 6 buckets of 10 s.
  Use(Sliding("per_minute", 60, absl::Minutes(1), 6));
  clock_.Set(Utc(2026, 1, 1, 0, 0, 5));  // mid-bucket
  EXPECT_EQ(Exhaust(), 60);
  const Decision d = Acquire();
  // Charged in bucket [0, 10): counted until 10 + 60 = 70 s, i.e. 65 s after the charge.
  EXPECT_EQ(d.retry_at, Utc(2026, 1, 1, 0, 1, 10));
  clock_.Set(Utc(2026, 1, 1, 0, 1, 9));
  EXPECT_FALSE(Acquire().granted);
  clock_.Set(Utc(2026, 1, 1, 0, 1, 10));
  EXPECT_EQ(Exhaust(), 60);
}

TEST_F(LimitsTest, SubBucketSlidingWindowNeverOverGrantsAtAnyOffset) {
  // Grant greedily at 1.7 s steps for 10 minutes; check every 60 s interval ending at a grant.
  Use(Sliding("per_minute", 10, absl::Minutes(1), 4));
  clock_.Set(Utc(2026, 1, 1));
  std::vector<absl::Time> grants;
  for (int step = 0; step < 360; ++step) {
    while (Acquire().granted) grants.push_back(clock_.Now());
    clock_.Advance(absl::Milliseconds(1700));
  }
  ASSERT_GT(grants.size(), 80u);
  size_t lo = 0;
  for (size_t hi = 0; hi < grants.size(); ++hi) {
    while (grants[hi] - grants[lo] >= absl::Minutes(1)) ++lo;
    ASSERT_LE(hi - lo + 1, 10u) << "at " << grants[hi];
  }
  // Under-grant bound: at most one bucket (15 s) late per window, so >= 10 per 75 s.
  EXPECT_GE(grants.size(), 10u * 600 / 75);
}

TEST_F(LimitsTest, TokenBucketWithBurstOneEnforcesMinimumSpacing) {
  Use(Bucket("floor", 4, absl::Minutes(1), 1));  // VirusTotal's 15-second floor
  clock_.Set(Utc(2026, 1, 1));
  EXPECT_TRUE(Acquire().granted);
  Decision d = Acquire();
  EXPECT_FALSE(d.granted);
  EXPECT_EQ(d.retry_at, Utc(2026, 1, 1, 0, 0, 15));
  clock_.Advance(absl::Seconds(14));
  EXPECT_FALSE(Acquire().granted);
  clock_.Advance(absl::Seconds(1));
  EXPECT_TRUE(Acquire().granted);
  // A long idle does not bank more than the burst.
  clock_.Advance(absl::Hours(1));
  EXPECT_EQ(Exhaust(), 1);
}

TEST_F(LimitsTest, TokenBucketRefillsAtRateUpToBurst) {
  Use(Bucket("rate", 10, absl::Seconds(1), 5));  // 10/s, burst 5
  clock_.Set(Utc(2026, 1, 1));
  EXPECT_EQ(Exhaust(), 5);
  clock_.Advance(absl::Milliseconds(300));
  EXPECT_EQ(Exhaust(), 3);
  const Decision d = Acquire(2);
  EXPECT_EQ(d.retry_at, clock_.Now() + absl::Milliseconds(200));
}

TEST_F(LimitsTest, ConcurrencyLeaseHoldsSlotUntilReleased) {
  Use(Concurrency("jobs", 2));
  clock_.Set(Utc(2026, 1, 1));
  const Decision a = Acquire();
  const Decision b = Acquire();
  ASSERT_TRUE(a.granted && b.granted);
  const Decision c = Acquire();
  EXPECT_FALSE(c.granted);
  EXPECT_EQ(c.retry_at, a.lease_expiry);  // the first lease's TTL runs out first
  auto r = ledger_->Release(a.lease_id, std::nullopt);
  ASSERT_OK(r);
  EXPECT_EQ(r->freed, 1);
  EXPECT_TRUE(Acquire().granted);
}

TEST_F(LimitsTest, ConcurrencyLeaseExpiresAfterTtlAndRenewKeepsIt) {
  Use(Concurrency("jobs", 1));
  clock_.Set(Utc(2026, 1, 1));
  AcquireRequest req;
  req.credential = "cred";
  req.feature = "f";
  req.lease_ttl = absl::Seconds(30);
  auto held = ledger_->Acquire(req);
  ASSERT_OK(held);
  ASSERT_TRUE(held->granted);
  clock_.Advance(absl::Seconds(20));
  auto renewed = ledger_->Renew(held->lease_id, absl::Seconds(30));
  ASSERT_OK(renewed);
  EXPECT_EQ(*renewed, clock_.Now() + absl::Seconds(30));
  clock_.Advance(absl::Seconds(29));
  EXPECT_FALSE(Acquire().granted);  // renewed: still held at t=49
  clock_.Advance(absl::Seconds(1));
  EXPECT_TRUE(Acquire().granted);  // expired at t=50
  EXPECT_THAT(ledger_->Renew(held->lease_id, absl::Seconds(30)),
              StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(ledger_->Release(held->lease_id, std::nullopt),
              StatusIs(absl::StatusCode::kNotFound));
}

TEST_F(LimitsTest, UnlimitedCountsAndNeverDenies) {
  Use(Unlimited("daily", CalendarUnit::kDay));
  clock_.Set(Utc(2026, 1, 1, 12));
  for (int i = 0; i < 1000; ++i) ASSERT_TRUE(Acquire(1000).granted);
  auto usage = ledger_->Usage("cred");
  ASSERT_OK(usage);
  ASSERT_EQ(usage->size(), 1u);
  EXPECT_EQ((*usage)[0].used, 1000 * 1000);
  EXPECT_EQ((*usage)[0].reset, Utc(2026, 1, 2));
}

TEST_F(LimitsTest, GuardKeepsSlidingChargesLongerThanThePeriod) {
  LimitSpec l = Sliding("per_minute", 2, absl::Minutes(1));
  l.guard = absl::Seconds(2);
  Use(l);
  clock_.Set(Utc(2026, 1, 1));
  EXPECT_EQ(Exhaust(), 2);
  EXPECT_EQ(Acquire().retry_at, Utc(2026, 1, 1, 0, 1, 2));
  clock_.Set(Utc(2026, 1, 1, 0, 1, 1));
  EXPECT_FALSE(Acquire().granted);
  clock_.Set(Utc(2026, 1, 1, 0, 1, 2));
  EXPECT_EQ(Exhaust(), 2);
}

TEST_F(LimitsTest, GuardWithSubBucketsRetryAtMatchesWhenTheBucketLeaves) {
  LimitSpec l = Sliding("per_minute", 6, absl::Minutes(1), 6);  // 10 s buckets
  l.guard = absl::Seconds(3);
  Use(l);
  clock_.Set(Utc(2026, 1, 1, 0, 0, 5));
  EXPECT_EQ(Exhaust(), 6);
  const Decision d = Acquire();
  // Bucket [0, 10) must count until at least 10 + 60 + 3 = 73 s; whole buckets: 80 s.
  EXPECT_EQ(d.retry_at, Utc(2026, 1, 1, 0, 1, 20));
  clock_.Set(d.retry_at - absl::Nanoseconds(1));
  EXPECT_FALSE(Acquire().granted);
  clock_.Set(d.retry_at);
  EXPECT_TRUE(Acquire().granted);
}

TEST_F(LimitsTest, GuardExtendsARollingWindow) {
  LimitSpec l = Rolling("per_24h", 1, absl::Hours(24));
  l.guard = absl::Seconds(5);
  Use(l);
  clock_.Set(Utc(2026, 6, 1, 11));
  EXPECT_TRUE(Acquire().granted);
  EXPECT_EQ(Acquire().retry_at, Utc(2026, 6, 2, 11, 0, 5));
}

TEST_F(LimitsTest, GuardCountsLateCalendarChargesInTheNextWindowToo) {
  LimitSpec l = Calendar("per_day", 3, CalendarUnit::kDay);
  l.guard = absl::Seconds(1);
  Use(l);
  clock_.Set(Utc(2026, 3, 1, 12));
  EXPECT_TRUE(Acquire().granted);
  clock_.Set(Utc(2026, 3, 1, 23, 59, 59) + absl::Milliseconds(500));
  EXPECT_TRUE(Acquire().granted);  // may reach the upstream after midnight
  clock_.Set(Utc(2026, 3, 2));
  EXPECT_EQ(Exhaust(), 2);  // the new day already holds that one
}

}  // namespace
}  // namespace quotad
