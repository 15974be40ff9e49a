// Adversarial tests (attack3): wall-clock steps around leases, windows, buckets, cooldowns,
// waiters and Report headers; outside estimates across restart and reload; refunds after
// adoption. Each test asserts quotad's promise, so a failing test is a hole.
//
// Time model of these tests: the FakeClock's monotonic reading is the true time (the upstream
// lives on it); StepWall() moves only quotad's wall clock.

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "service/core/clock.h"
#include "service/core/ledger.h"
#include "tests/core/memory_journal.h"
#include "tests/core/test_util.h"

namespace quotad {
namespace {

using testing::Bucket;
using testing::Calendar;
using testing::Concurrency;
using testing::Feature;
using testing::MemoryJournal;
using testing::OneCredential;
using testing::Rolling;
using testing::Sliding;
using testing::Utc;

class Attack3Test : public ::testing::Test {
 protected:
  void Use(std::vector<FeatureSpec> features, Journal* journal = nullptr,
           std::function<void(absl::Time)> wake = nullptr) {
    policy_ = OneCredential("key", std::move(features));
    LedgerOptions o;
    o.journal = journal;
    o.jitter_seed = 7;
    o.wake = std::move(wake);
    auto ledger = Ledger::Create(policy_, &clock_, o);
    ASSERT_TRUE(ledger.ok()) << ledger.status();
    ledger_ = std::move(*ledger);
    if (journal != nullptr) {
      ASSERT_TRUE(ledger_->Restore().ok());
    }
  }
  ReportResult Report(int status, UpstreamHeaders headers,
                      absl::Time observed_at = absl::InfinitePast()) {
    UpstreamAnswer a;
    a.credential = "key";
    a.feature = "f";
    a.http_status = status;
    a.headers = std::move(headers);
    a.observed_at = observed_at;
    auto r = ledger_->Report(a);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : ReportResult{};
  }
  Decision Acquire(int64_t cost = 1, absl::Duration ttl = absl::ZeroDuration()) {
    AcquireRequest req;
    req.credential = "key";
    req.feature = "f";
    req.cost = cost;
    req.lease_ttl = ttl;
    auto d = ledger_->Acquire(req);
    EXPECT_TRUE(d.ok()) << d.status();
    return d.ok() ? *d : Decision{};
  }
  // Grants of cost 1 until the first denial (at most `limit`).
  int64_t Drain(int64_t limit = 100000) {
    int64_t n = 0;
    while (n < limit && Acquire().granted) ++n;
    return n;
  }
  // True time, in epoch seconds (what the upstream puts in its headers).
  int64_t TrueEpoch() const { return absl::ToInt64Seconds(clock_.Monotonic()); }

  FakeClock clock_{Utc(2026, 6, 21, 10)};
  Policy policy_;
  std::unique_ptr<Ledger> ledger_;
};

// 1. Calendar/rolling: a lease charged BEFORE an adoption, refunded AFTER a restart (adopted_at_
// is not journaled).
TEST_F(Attack3Test, CalendarRefundOfPreAdoptionLeaseAfterRestart) {
  MemoryJournal journal;
  auto spec = [] { return std::vector<FeatureSpec>{Feature("f", {Calendar("day", 100, CalendarUnit::kDay)})}; };
  Use(spec(), &journal);
  Decision lease = Acquire(10, absl::Hours(1));  // L: the upstream will charge none of it
  ASSERT_TRUE(lease.granted);
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(Acquire(10).granted);  // 40 real
  Report(200, {{"X-RateLimit-Limit", "100"}, {"X-RateLimit-Remaining", "40"}});  // upstream 60
  int64_t upstream = 60;
  ledger_.reset();
  clock_.Advance(absl::Seconds(1));
  Use(spec(), &journal);  // restart
  for (int i = 0; i < 4; ++i) {
    if (Acquire(10).granted) upstream += 10;
  }
  auto rel = ledger_->Release(lease.lease_id, 0);
  ASSERT_TRUE(rel.ok()) << rel.status();
  const int64_t more = Drain();
  upstream += more;
  EXPECT_LE(upstream, 100) << "refunded " << rel->refunded << " then granted " << more;
}

TEST_F(Attack3Test, RollingRefundOfPreAdoptionLeaseAfterRestart) {
  MemoryJournal journal;
  auto spec = [] { return std::vector<FeatureSpec>{Feature("f", {Rolling("win", 100, absl::Hours(24))})}; };
  Use(spec(), &journal);
  Decision lease = Acquire(10, absl::Hours(1));
  ASSERT_TRUE(lease.granted);
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(Acquire(10).granted);
  Report(200, {{"X-RateLimit-Limit", "100"}, {"X-RateLimit-Remaining", "40"}});
  int64_t upstream = 60;
  ledger_.reset();
  clock_.Advance(absl::Seconds(1));
  Use(spec(), &journal);
  for (int i = 0; i < 4; ++i) {
    if (Acquire(10).granted) upstream += 10;
  }
  auto rel = ledger_->Release(lease.lease_id, 0);
  ASSERT_TRUE(rel.ok()) << rel.status();
  const int64_t more = Drain();
  upstream += more;
  EXPECT_LE(upstream, 100) << "refunded " << rel->refunded << " then granted " << more;
}

// 2. Calendar: a lease's charge time is converted to wall time at RELEASE with the offset then in
// force; adopted_at_ was converted at adoption. A same-day wall step forward in between makes a
// pre-adoption charge look post-adoption.
TEST_F(Attack3Test, CalendarPreAdoptionChargeLooksLaterAfterWallStepForward) {
  Use({Feature("f", {Calendar("day", 100, CalendarUnit::kDay)})});
  Decision lease = Acquire(10, absl::Hours(1));
  ASSERT_TRUE(lease.granted);
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(Acquire(10).granted);
  clock_.Advance(absl::Seconds(5));
  Report(200, {{"X-RateLimit-Limit", "100"}, {"X-RateLimit-Remaining", "40"}});  // upstream 60
  int64_t upstream = 60;
  for (int i = 0; i < 4; ++i) {
    ASSERT_TRUE(Acquire(10).granted);
    upstream += 10;
  }
  clock_.StepWall(absl::Seconds(30));  // NTP: 10:00:05 -> 10:00:35, same day
  auto rel = ledger_->Release(lease.lease_id, 0);
  ASSERT_TRUE(rel.ok()) << rel.status();
  const int64_t more = Drain();
  upstream += more;
  EXPECT_LE(upstream, 100) << "refunded " << rel->refunded << " then granted " << more;
}

// 3. Ledger time is re-anchored to the wall at each start: journaled ledger times (sliding
// charges, cooldowns) move by any wall step taken while the old process ran.
// FINDING, kept disabled: a restart anchors ledger time to the wall clock again, so a wall
// clock that was wrong when the old process started and was stepped since moves every journaled
// duration by the step (README, Operations). Fixing it needs a time that survives the process.
TEST_F(Attack3Test, DISABLED_SlidingChargesSurviveRestartAfterWallStepForward) {
  MemoryJournal journal;
  auto spec = [] { return std::vector<FeatureSpec>{Feature("f", {Sliding("min", 100, absl::Minutes(1))})}; };
  Use(spec(), &journal);
  EXPECT_EQ(Drain(), 100);
  clock_.StepWall(absl::Minutes(2));  // NTP corrects a slow wall clock
  clock_.Advance(absl::Seconds(1));
  ledger_.reset();
  Use(spec(), &journal);  // restart 1 s (true) after the 100 charges
  const int64_t more = Drain();
  EXPECT_EQ(more, 0) << "the upstream's minute still holds 100; granted " << more;
}

// FINDING, kept disabled: a restart anchors ledger time to the wall clock again, so a wall
// clock that was wrong when the old process started and was stepped since moves every journaled
// duration by the step (README, Operations). Fixing it needs a time that survives the process.
TEST_F(Attack3Test, DISABLED_RetryAfterCooldownSurvivesRestartAfterWallStepForward) {
  MemoryJournal journal;
  auto spec = [] { return std::vector<FeatureSpec>{Feature("f", {Sliding("min", 1000, absl::Minutes(1))})}; };
  Use(spec(), &journal);
  Report(429, {{"Retry-After", "120"}});
  clock_.StepWall(absl::Minutes(5));
  clock_.Advance(absl::Seconds(1));
  ledger_.reset();
  Use(spec(), &journal);
  EXPECT_FALSE(Acquire().granted) << "granted 119 s before Retry-After ends";
}

// 4. A throttle on g (draws on f) while quotad's count of f.min is full: no estimate is learnt,
// but the Retry-After must still cool f down after the sliding window drained.
TEST_F(Attack3Test, FullLimitThrottleStillCoolsFeatureDrawingOnIt) {
  FeatureSpec g = Feature("g", {Sliding("own", 1000, absl::Minutes(1))});
  g.draws_on = {"f"};
  Use({Feature("f", {Sliding("min", 10, absl::Minutes(1))}), g});
  EXPECT_EQ(Drain(), 10);
  UpstreamAnswer a;
  a.credential = "key";
  a.feature = "g";
  a.http_status = 429;
  a.headers = {{"Retry-After", "120"}};
  ASSERT_TRUE(ledger_->Report(a).ok());
  clock_.Advance(absl::Seconds(61));  // f.min drained; Retry-After runs 59 s more
  EXPECT_FALSE(Acquire().granted) << "f granted inside the upstream's Retry-After";
  AcquireRequest req;
  req.credential = "key";
  req.feature = "g";
  req.cost = 1;
  EXPECT_FALSE(ledger_->Acquire(req)->granted) << "g granted inside the upstream's Retry-After";
}

// 5. A Report never raises remaining above the configuration.
TEST_F(Attack3Test, ReportNeverRaisesRemainingAboveConfig) {
  Use({Feature("f", {Calendar("day", 100, CalendarUnit::kDay)})});
  Report(200, {{"X-RateLimit-Limit", "100000"}, {"X-RateLimit-Remaining", "99999"}});
  for (const LimitStatus& s : *ledger_->Usage("key")) EXPECT_LE(s.remaining, 100);
  EXPECT_LE(Drain(), 100);
}

}  // namespace
}  // namespace quotad
