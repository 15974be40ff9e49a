// Adversarial tests (the second and third reviews): wall-clock steps around leases, windows,
// buckets, cooldowns, waiters and Report headers; outside estimates across restart and reload;
// refunds around adoption and restart. Each test asserts quotad's promise: a failure is a hole.
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

class Attack2Test : public ::testing::Test {
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

// ---------------------------------------------------------------------------------------------
// HOLES the reviews found (fixed, or kept DISABLED_ as findings): a failure is a regression
// ---------------------------------------------------------------------------------------------

// A refund of a lease charged BEFORE an adoption, after the count climbed back past the adopted
// floor, gives back units the upstream never counted while forgetting the outside units the
// adoption taught: calendar (and rolling) refunds only keep used >= adopted_.
TEST_F(Attack2Test, RefundOfPreAdoptionLeaseUndercutsLearntOutsideUse) {
  Use({Feature("f", {Calendar("day", 100, CalendarUnit::kDay)})});
  Decision lease = Acquire(10);  // L: the upstream will charge none of it (used = 0)
  ASSERT_TRUE(lease.granted);
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(Acquire(10).granted);  // ours: 50 (40 real + L)
  // The upstream: 60 used = our 40 real units + 20 from outside (L is free upstream).
  Report(200, {{"X-RateLimit-Limit", "100"}, {"X-RateLimit-Remaining", "40"}});
  int64_t upstream = 60;
  for (int i = 0; i < 4; ++i) {
    ASSERT_TRUE(Acquire(10).granted);
    upstream += 10;
  }
  ASSERT_EQ(upstream, 100);
  // The worker reports that the upstream charged nothing for L.
  auto rel = ledger_->Release(lease.lease_id, 0);
  ASSERT_TRUE(rel.ok()) << rel.status();
  const int64_t more = Drain();
  upstream += more;
  EXPECT_LE(upstream, 100) << "refunded " << rel->refunded << " then granted " << more
                           << ": the upstream's window holds " << upstream << " of 100";
}

TEST_F(Attack2Test, RollingRefundOfPreAdoptionLeaseUndercutsLearntOutsideUse) {
  Use({Feature("f", {Rolling("win", 100, absl::Hours(24))})});
  Decision lease = Acquire(10);
  ASSERT_TRUE(lease.granted);
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(Acquire(10).granted);
  Report(200, {{"X-RateLimit-Limit", "100"}, {"X-RateLimit-Remaining", "40"}});
  int64_t upstream = 60;
  for (int i = 0; i < 4; ++i) {
    ASSERT_TRUE(Acquire(10).granted);
    upstream += 10;
  }
  auto rel = ledger_->Release(lease.lease_id, 0);
  ASSERT_TRUE(rel.ok()) << rel.status();
  const int64_t more = Drain();
  upstream += more;
  EXPECT_LE(upstream, 100) << "refunded " << rel->refunded << " then granted " << more;
}

// quotad's wall clock steps 1 h forward (NTP step to a wrong time, or a bad step). A rolling
// window's X-RateLimit-Reset (true epoch, 10 min ahead) now reads as 50 min in the past, so
// the full count is dropped as "an earlier window" and quotad grants the whole capacity into
// the upstream's full window. The rolling window is a duration: a wall step must not shorten it.
// FINDING, kept disabled: the upstream's absolute times (X-RateLimit-Reset epochs, Retry-After
// dates, and Retry-After seconds anchored at the answer's wall time) are read on quotad's wall
// clock; when it is wrong against the upstream's, they are misplaced by the error. README,
// Operations: keep the wall clock synced.
TEST_F(Attack2Test, DISABLED_RollingResetEpochAfterWallStepForwardDropsFullCount) {
  Use({Feature("f", {Rolling("win", 100, absl::Hours(1))})});
  ASSERT_TRUE(Acquire().granted);  // ours opens now; the upstream's opened 50 min ago (outside)
  clock_.StepWall(absl::Hours(1));
  const ReportResult r =
      Report(200, {{"X-RateLimit-Limit", "100"},
                   {"X-RateLimit-Remaining", "0"},
                   {"X-RateLimit-Reset", absl::StrCat(TrueEpoch() + 600)}});
  const int64_t granted = Drain();
  EXPECT_EQ(granted, 0) << "upstream full for 10 more minutes, quotad granted " << granted
                        << "; warnings: "
                        << (r.warnings.empty() ? std::string("none") : r.warnings[0]);
}

// Sliding: the wall stepped 30 s forward; the upstream's reset (true +50 s) reads as +20 s, so
// the adopted units leave 30 s before the upstream lets go of them.
// FINDING, kept disabled: the upstream's absolute times (X-RateLimit-Reset epochs, Retry-After
// dates, and Retry-After seconds anchored at the answer's wall time) are read on quotad's wall
// clock; when it is wrong against the upstream's, they are misplaced by the error. README,
// Operations: keep the wall clock synced.
TEST_F(Attack2Test, DISABLED_SlidingResetEpochAfterWallStepForwardReleasesAdoptedEarly) {
  Use({Feature("f", {Sliding("min", 60, absl::Minutes(1))})});
  clock_.StepWall(absl::Seconds(30));
  Report(200, {{"X-RateLimit-Limit", "60"},
               {"X-RateLimit-Remaining", "0"},
               {"X-RateLimit-Reset", absl::StrCat(TrueEpoch() + 50)}});
  clock_.Advance(absl::Seconds(25));  // true +25 s: the upstream is still full until +50 s
  const int64_t granted = Drain();
  EXPECT_EQ(granted, 0) << "granted " << granted << " into a full upstream window";
}

// Retry-After as an HTTP date while quotad's wall is 1 h ahead: the date reads as passed and
// the 120 s cooldown collapses to the 1 s back-off.
// FINDING, kept disabled: the upstream's absolute times (X-RateLimit-Reset epochs, Retry-After
// dates, and Retry-After seconds anchored at the answer's wall time) are read on quotad's wall
// clock; when it is wrong against the upstream's, they are misplaced by the error. README,
// Operations: keep the wall clock synced.
TEST_F(Attack2Test, DISABLED_RetryAfterHttpDateAfterWallStepForwardShortensCooldown) {
  Use({Feature("f", {Sliding("min", 1000, absl::Minutes(1))})});
  clock_.StepWall(absl::Hours(1));
  const absl::Time true_retry = absl::FromUnixSeconds(TrueEpoch() + 120);
  const std::string date =
      absl::FormatTime("%a, %d %b %Y %H:%M:%S GMT", true_retry, absl::UTCTimeZone());
  Report(429, {{"Retry-After", date}});
  clock_.Advance(absl::Seconds(10));
  EXPECT_FALSE(Acquire().granted) << "granted 110 s before the upstream's Retry-After " << date;
}

// Retry-After in SECONDS (a duration) is anchored on observed_at, a wall reading the worker took
// just before quotad's wall stepped forward 1 h: the 120 s cooldown is read as over an hour ago.
// FINDING, kept disabled: the upstream's absolute times (X-RateLimit-Reset epochs, Retry-After
// dates, and Retry-After seconds anchored at the answer's wall time) are read on quotad's wall
// clock; when it is wrong against the upstream's, they are misplaced by the error. README,
// Operations: keep the wall clock synced.
TEST_F(Attack2Test, DISABLED_RetryAfterSecondsAcrossWallStepForwardShortensCooldown) {
  Use({Feature("f", {Sliding("min", 1000, absl::Minutes(1))})});
  const absl::Time observed = clock_.Now();  // the worker's reading, same host
  clock_.StepWall(absl::Hours(1));           // NTP steps before the Report arrives
  clock_.Advance(absl::Milliseconds(5));
  Report(429, {{"Retry-After", "120"}}, observed);
  clock_.Advance(absl::Seconds(10));
  EXPECT_FALSE(Acquire().granted) << "granted 110 s before Retry-After: 120 ran out";
}

// Waiters are woken through LedgerOptions::wake / Pump(), both in WALL time; the server's
// Pumper (service/server/server.cc) sleeps until clock->Now() >= that time. A wall step back
// after parking keeps the Pumper asleep for the size of the step: the waiter is neither
// granted when capacity frees nor denied at its deadline.
TEST_F(Attack2Test, WallStepBackStarvesWaiterBehindWallTimedWake) {
  absl::Time next_pump = absl::InfiniteFuture();
  Use({Feature("f", {Sliding("min", 1, absl::Minutes(1))})}, nullptr,
      [&](absl::Time t) { next_pump = std::min(next_pump, t); });
  ASSERT_TRUE(Acquire().granted);
  std::optional<absl::StatusOr<Decision>> answer;
  AcquireRequest req;
  req.credential = "key";
  req.feature = "f";
  ledger_->AcquireOrWait(req, absl::Minutes(5), 0,
                         [&](absl::StatusOr<Decision> d) { answer = std::move(d); });
  ASSERT_FALSE(answer.has_value());
  clock_.StepWall(-absl::Hours(1));
  // The Pumper's loop, as in server.cc: run Pump() whenever the wall clock reaches next_, and
  // at least every Pumper::kMaxPumpWait (1 s) while requests wait.
  auto pumper = [&] {
    if (next_pump > clock_.Now() && ledger_->waiting() > 0) next_pump = clock_.Now();
    while (next_pump <= clock_.Now()) {
      next_pump = absl::InfiniteFuture();
      const absl::Time n = ledger_->Pump();
      next_pump = std::min(next_pump, n);
    }
  };
  for (int s = 0; s < 6 * 60; ++s) {  // six true minutes: past the refill and the deadline
    clock_.Advance(absl::Seconds(1));
    pumper();
  }
  EXPECT_TRUE(answer.has_value())
      << "the waiter was neither granted (slot free at +60 s) nor denied (deadline +5 min); "
         "next wake at wall "
      << absl::FormatTime(next_pump) << ", wall now " << absl::FormatTime(clock_.Now());
}

// ---------------------------------------------------------------------------------------------
// PROBES THAT SHOULD HOLD
// ---------------------------------------------------------------------------------------------

TEST_F(Attack2Test, SlidingWindowSurvivesWallStepsBothWays) {
  Use({Feature("f", {Sliding("min", 10, absl::Minutes(1))})});
  int64_t granted = Drain();
  clock_.StepWall(absl::Hours(2));
  granted += Drain();
  clock_.StepWall(-absl::Hours(5));
  clock_.Advance(absl::Seconds(30));
  granted += Drain();
  EXPECT_EQ(granted, 10);
  clock_.Advance(absl::Seconds(31));
  EXPECT_EQ(Drain(), 10);
}

TEST_F(Attack2Test, SlidingSubBucketsSurviveWallSteps) {
  Use({Feature("f", {Sliding("min", 10, absl::Minutes(1), 6)})});
  int64_t granted = Drain();
  clock_.StepWall(absl::Hours(1));
  clock_.Advance(absl::Seconds(50));
  granted += Drain();
  clock_.StepWall(-absl::Hours(3));
  granted += Drain();
  EXPECT_EQ(granted, 10);
}

TEST_F(Attack2Test, RollingAndBucketSurviveWallSteps) {
  Use({Feature("f", {Rolling("r", 5, absl::Hours(1)), Bucket("b", 4, absl::Minutes(1), 1)})});
  EXPECT_TRUE(Acquire().granted);
  clock_.StepWall(absl::Hours(2));
  EXPECT_FALSE(Acquire().granted);  // bucket: 15 s spacing
  clock_.StepWall(-absl::Hours(4));
  EXPECT_FALSE(Acquire().granted);
  int64_t granted = 1;
  for (int i = 0; i < 100; ++i) {
    clock_.Advance(absl::Seconds(15));
    if (i % 3 == 0) clock_.StepWall(i % 2 ? absl::Hours(1) : -absl::Hours(1));
    if (Acquire().granted) ++granted;
  }
  // 25 min of true time: at most 5 in the rolling hour.
  EXPECT_EQ(granted, 5);
}

TEST_F(Attack2Test, ConcurrencyLeaseNotExtendedOrShortenedByWallSteps) {
  Use({Feature("f", {Concurrency("slots", 1)})});
  Decision d = Acquire(1, absl::Seconds(30));
  ASSERT_TRUE(d.granted);
  clock_.StepWall(absl::Hours(1));  // must not expire it
  EXPECT_FALSE(Acquire(1, absl::Seconds(30)).granted);
  EXPECT_TRUE(ledger_->Renew(d.lease_id, absl::Seconds(30)).ok());
  clock_.StepWall(-absl::Hours(3));  // must not extend it
  clock_.Advance(absl::Seconds(31));
  EXPECT_FALSE(ledger_->Renew(d.lease_id, absl::Seconds(30)).ok());
  EXPECT_FALSE(ledger_->Release(d.lease_id, std::nullopt).ok());
  EXPECT_TRUE(Acquire(1, absl::Seconds(30)).granted);
}

TEST_F(Attack2Test, LimitCooldownRunsOnLedgerTimeAcrossWallSteps) {
  Use({Feature("f", {Sliding("min", 100, absl::Minutes(1))})});
  ASSERT_TRUE(Acquire().granted);
  Report(429, {{"Retry-After", "120"}});
  clock_.StepWall(absl::Hours(1));
  clock_.Advance(absl::Seconds(100));
  EXPECT_FALSE(Acquire().granted);
  clock_.StepWall(-absl::Hours(3));
  clock_.Advance(absl::Seconds(21));
  EXPECT_TRUE(Acquire().granted);
}

TEST_F(Attack2Test, WaiterDeadlineOnLedgerTimeAcrossWallStepForward) {
  Use({Feature("f", {Sliding("min", 1, absl::Minutes(1))})});
  ASSERT_TRUE(Acquire().granted);
  std::optional<absl::StatusOr<Decision>> answer;
  AcquireRequest req;
  req.credential = "key";
  req.feature = "f";
  ledger_->AcquireOrWait(req, absl::Seconds(30), 0,
                         [&](absl::StatusOr<Decision> d) { answer = std::move(d); });
  clock_.StepWall(absl::Hours(1));
  ledger_->Pump();
  EXPECT_FALSE(answer.has_value()) << "answered at once after a wall step forward";
  clock_.Advance(absl::Seconds(31));
  ledger_->Pump();
  ASSERT_TRUE(answer.has_value());
  ASSERT_TRUE(answer->ok());
  EXPECT_FALSE((*answer)->granted);
}

TEST_F(Attack2Test, ReportNeverRaisesRemaining) {
  Use({Feature("f", {Sliding("min", 100, absl::Minutes(1)),
                     Calendar("day", 1000, CalendarUnit::kDay)})});
  for (int i = 0; i < 60; ++i) ASSERT_TRUE(Acquire().granted);
  Report(200, {{"X-RateLimit-Limit", "100"}, {"X-RateLimit-Remaining", "100"},
               {"X-RateLimit-Reset", absl::StrCat(TrueEpoch() + 1)}});
  Report(200, {{"X-RateLimit-Limit", "5000"}, {"X-RateLimit-Remaining", "4999"}});
  Report(200, {{"X-RateLimit-Limit", "100"}, {"X-RateLimit-Used", "0"}});
  EXPECT_EQ(Drain(), 40);
}

TEST_F(Attack2Test, OutsideEstimateAndLimitCooldownSurviveRestart) {
  MemoryJournal journal;
  Use({Feature("f", {Sliding("min", 100, absl::Minutes(1))})}, &journal);
  for (int i = 0; i < 50; ++i) ASSERT_TRUE(Acquire().granted);
  Report(429, {{"Retry-After", "30"}});  // throttled at 50/100: outside use
  const std::vector<LimitStatus> before = *ledger_->Usage("key");
  int64_t est = 0;
  for (const LimitStatus& s : before) {
    if (s.name == "f.min") est = s.outside_estimate;
  }
  ASSERT_GT(est, 0);
  ledger_.reset();
  Use({Feature("f", {Sliding("min", 100, absl::Minutes(1))})}, &journal);  // restart
  EXPECT_FALSE(Acquire().granted) << "the limit cooldown was lost across the restart";
  clock_.Advance(absl::Seconds(31));
  const std::vector<LimitStatus> after = *ledger_->Usage("key");
  for (const LimitStatus& s : after) {
    if (s.name == "f.min") EXPECT_GE(s.outside_estimate, est - 3);
  }
  // 50 of ours still in the window; at most 100 - 50 - estimate more.
  EXPECT_LE(Drain(), 100 - 50 - (est - 3));
}

TEST_F(Attack2Test, OutsideEstimateSurvivesReloadOfCapacity) {
  Use({Feature("f", {Sliding("min", 100, absl::Minutes(1))})});
  for (int i = 0; i < 50; ++i) ASSERT_TRUE(Acquire().granted);
  Report(429, {});
  clock_.Advance(absl::Seconds(2));  // past the back-off
  ASSERT_TRUE(ledger_->Reload(OneCredential(
                  "key", {Feature("f", {Sliding("min", 80, absl::Minutes(1))})}))
                  .ok());
  int64_t est = 0;
  const std::vector<LimitStatus> usage = *ledger_->Usage("key");
  for (const LimitStatus& s : usage) {
    if (s.name == "f.min") est = s.outside_estimate;
  }
  EXPECT_GT(est, 0);
  EXPECT_LE(Drain(), 80 - 50 - (est > 0 ? est : 0));
}

// ---------------------------------------------------------------------------------------------
// A third review (attack3): refunds around adoption and restart, wall steps across a restart
// ---------------------------------------------------------------------------------------------
// 1. Calendar/rolling: a lease charged BEFORE an adoption, refunded AFTER a restart (adopted_at_
// is not journaled).
TEST_F(Attack2Test, CalendarRefundOfPreAdoptionLeaseAfterRestart) {
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

TEST_F(Attack2Test, RollingRefundOfPreAdoptionLeaseAfterRestart) {
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
TEST_F(Attack2Test, CalendarPreAdoptionChargeLooksLaterAfterWallStepForward) {
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
TEST_F(Attack2Test, DISABLED_SlidingChargesSurviveRestartAfterWallStepForward) {
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
TEST_F(Attack2Test, DISABLED_RetryAfterCooldownSurvivesRestartAfterWallStepForward) {
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
TEST_F(Attack2Test, FullLimitThrottleStillCoolsFeatureDrawingOnIt) {
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
TEST_F(Attack2Test, ReportNeverRaisesRemainingAboveConfig) {
  Use({Feature("f", {Calendar("day", 100, CalendarUnit::kDay)})});
  Report(200, {{"X-RateLimit-Limit", "100000"}, {"X-RateLimit-Remaining", "99999"}});
  for (const LimitStatus& s : *ledger_->Usage("key")) EXPECT_LE(s.remaining, 100);
  EXPECT_LE(Drain(), 100);
}

}  // namespace
}  // namespace quotad
