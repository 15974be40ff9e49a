// The ledger's promise "never over" (issue 11): one regression test per over-grant or
// starvation path found from outside, named after what it protects, each of which failed on
// 68e1764: restarts (a new ledger restored from the same MemoryJournal, as after kill -9), reloads
// of a limit's capacity, kind, guard or scope, refunds after an adoption, token bucket bounds,
// wall-clock steps and cooldowns. The reviews' own attack tests are in ledger_adversarial_test.

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "service/core/clock.h"
#include "service/core/ledger.h"
#include "service/store/memory_journal.h"
#include "tests/support/policy_builders.h"
#include "tests/support/status_matchers.h"

namespace quotad {
namespace {

using ::testing::HasSubstr;
using testing::Bucket;
using testing::Calendar;
using testing::Concurrency;
using testing::Feature;
using testing::OneCredential;
using testing::Rolling;
using testing::Sliding;
using testing::StatusIs;
using testing::Utc;

class NeverOverTest : public ::testing::Test {
 protected:
  void Start(const Policy& p) {
    policy_ = p;
    LedgerOptions options;
    options.journal = &journal_;
    options.reserve_fraction = 0.1;
    options.jitter_seed = 7;
    auto ledger = Ledger::Create(p, &clock_, options);
    ASSERT_OK(ledger);
    ledger_ = std::move(*ledger);
    ASSERT_OK(ledger_->Restore());
  }
  void Start(std::vector<FeatureSpec> features) { Start(OneCredential("cred", std::move(features))); }
  void Restart() { Start(policy_); }
  void Reload(std::vector<FeatureSpec> features) {
    policy_ = OneCredential("cred", std::move(features));
    ASSERT_OK(ledger_->Reload(policy_));
  }
  Decision Try(absl::string_view feature = "f", int64_t cost = 1, absl::string_view scope = "") {
    AcquireRequest req;
    req.credential = "cred";
    req.feature = feature;
    req.scope = scope;
    req.cost = cost;
    req.lease_ttl = absl::Minutes(10);
    absl::StatusOr<Decision> d = ledger_->Acquire(req);
    EXPECT_OK(d);
    return d.ok() ? *d : Decision{};
  }
  // Grants until the first denial; returns how many.
  int Exhaust(absl::string_view feature = "f", absl::string_view scope = "") {
    int n = 0;
    while (Try(feature, 1, scope).granted) ++n;
    return n;
  }
  ReportResult Report(int status, UpstreamHeaders headers, absl::string_view feature = "f") {
    UpstreamAnswer a;
    a.credential = "cred";
    a.feature = feature;
    a.http_status = status;
    a.headers = std::move(headers);
    absl::StatusOr<ReportResult> r = ledger_->Report(a);
    EXPECT_OK(r);
    return r.ok() ? *r : ReportResult{};
  }

  FakeClock clock_{Utc(2026, 3, 1, 12)};
  MemoryJournal journal_;
  Policy policy_;
  std::unique_ptr<Ledger> ledger_;
};

// Finding 1.
TEST_F(NeverOverTest, RollingWindowOpenedByReportSurvivesRestart) {
  Start({Feature("f", {Rolling("per_day", 5, absl::Hours(24))})});
  EXPECT_EQ(Exhaust(), 5);
  clock_.Advance(absl::Hours(25));  // the window closed; the upstream says 3 are used already
  Report(200, {{"X-RateLimit-Limit", "5"}, {"X-RateLimit-Remaining", "2"}});
  Restart();
  EXPECT_EQ(Exhaust(), 2);
}

// Finding 2.
TEST_F(NeverOverTest, TokenBucketRefundGivesBackOnlyTheLeasesOwnUnits) {
  Start({Feature("f", {Bucket("bucket", 1, absl::Seconds(1), 10)})});
  const Decision a = Try("f", 10);
  ASSERT_TRUE(a.granted);
  clock_.Advance(absl::Seconds(10));  // refilled
  ASSERT_TRUE(Try("f", 10).granted);
  // A's units refilled long ago: releasing it unused gives nothing back.
  absl::StatusOr<ReleaseResult> r = ledger_->Release(a.lease_id, 0);
  ASSERT_OK(r);
  EXPECT_EQ(r->refunded, 0);
  EXPECT_FALSE(Try("f", 1).granted);
}

TEST_F(NeverOverTest, TokenBucketRefundOfAnUnusedLeaseStillAheadIsGivenBack) {
  Start({Feature("f", {Bucket("bucket", 1, absl::Seconds(1), 10)})});
  const Decision a = Try("f", 10);
  ASSERT_TRUE(a.granted);
  clock_.Advance(absl::Seconds(4));  // 4 of A's 10 refilled; 6 are still ahead
  absl::StatusOr<ReleaseResult> r = ledger_->Release(a.lease_id, 0);
  ASSERT_OK(r);
  EXPECT_EQ(r->refunded, 6);
  EXPECT_EQ(Exhaust(), 10);
}

// Finding 3: a renewal after the slot went to another holder is NOT_FOUND, and the lease is gone.
TEST_F(NeverOverTest, RenewAfterTheSlotWasTakenIsNotFound) {
  Start({Feature("jobs", {Concurrency("slots", 1)})});
  AcquireRequest req;
  req.credential = "cred";
  req.feature = "jobs";
  req.lease_ttl = absl::Seconds(10);
  absl::StatusOr<Decision> a = ledger_->Acquire(req);
  ASSERT_OK(a);
  ASSERT_TRUE(a->granted);
  clock_.Advance(absl::Seconds(10));
  absl::StatusOr<Decision> b = ledger_->Acquire(req);
  ASSERT_OK(b);
  ASSERT_TRUE(b->granted);  // A expired: B holds the one slot
  EXPECT_THAT(ledger_->Renew(a->lease_id, absl::Seconds(60)),
              StatusIs(absl::StatusCode::kNotFound));
  EXPECT_EQ(ledger_->Leases("cred").size(), 1u);
}

// Finding 4: every edit of a limit that keeps its name keeps its used units.
TEST_F(NeverOverTest, ReloadOfATokenBucketRateKeepsTheBurstUsed) {
  Start({Feature("f", {Bucket("bucket", 10, absl::Minutes(1), 10)})});
  EXPECT_EQ(Exhaust(), 10);
  Reload({Feature("f", {Bucket("bucket", 20, absl::Minutes(1), 10)})});
  EXPECT_EQ(Exhaust(), 0);
}

TEST_F(NeverOverTest, ReloadOfACalendarGuardKeepsTheDaysCount) {
  Start({Feature("f", {Calendar("per_day", 10, CalendarUnit::kDay)})});
  EXPECT_EQ(Exhaust(), 10);
  LimitSpec guarded = Calendar("per_day", 10, CalendarUnit::kDay);
  guarded.guard = absl::Seconds(5);
  Reload({Feature("f", {guarded})});
  EXPECT_EQ(Exhaust(), 0);
  Restart();  // and a restart with the new file agrees
  EXPECT_EQ(Exhaust(), 0);
}

TEST_F(NeverOverTest, ReloadOfASlidingGuardAndSubBucketsKeepsTheWindow) {
  Start({Feature("f", {Sliding("per_min", 10, absl::Minutes(1))})});
  EXPECT_EQ(Exhaust(), 10);
  LimitSpec edited = Sliding("per_min", 10, absl::Minutes(1), 6);
  edited.guard = absl::Seconds(2);
  Reload({Feature("f", {edited})});
  EXPECT_EQ(Exhaust(), 0);
  clock_.Advance(absl::Seconds(90));  // the old window and the new span (and bucket) passed
  EXPECT_EQ(Exhaust(), 10);
}

TEST_F(NeverOverTest, ReloadFromUnscopedToScopedKeepsTheCountInEveryScope) {
  Start({Feature("f", {Calendar("per_day", 10, CalendarUnit::kDay)})});
  EXPECT_EQ(Exhaust(), 10);
  LimitSpec scoped = Calendar("per_day", 10, CalendarUnit::kDay);
  scoped.scoped = true;
  Reload({Feature("f", {scoped})});
  EXPECT_EQ(Exhaust("f", "ruleset-a"), 0);
  EXPECT_EQ(Exhaust("f", "ruleset-b"), 0);
}

TEST_F(NeverOverTest, ReloadOfTheKindKeepsTheUnitsUntilTheOldWindowDrains) {
  Start({Feature("f", {Calendar("per_day", 10, CalendarUnit::kDay)})});
  EXPECT_EQ(Exhaust(), 10);
  Reload({Feature("f", {Sliding("per_day", 10, absl::Minutes(1))})});
  EXPECT_EQ(Exhaust(), 0);
  clock_.Advance(absl::Minutes(2));  // the new sliding minute passed, the old day did not
  EXPECT_EQ(Exhaust(), 0);
  clock_.Set(Utc(2026, 3, 2, 0, 0, 1));
  EXPECT_EQ(Exhaust(), 10);
}

TEST_F(NeverOverTest, RaisedCapacityAppliesOnceTheCurrentWindowEnds) {
  Start({Feature("f", {Calendar("per_day", 10, CalendarUnit::kDay)})});
  EXPECT_EQ(Exhaust(), 10);
  Reload({Feature("f", {Calendar("per_day", 20, CalendarUnit::kDay)})});
  EXPECT_EQ(Exhaust(), 0);  // the stricter of the two configurations, in this window
  clock_.Set(Utc(2026, 3, 2, 0, 0, 1));
  EXPECT_EQ(Exhaust(), 20);
}

TEST_F(NeverOverTest, LoweredCapacityAppliesAtOnce) {
  Start({Feature("f", {Calendar("per_day", 10, CalendarUnit::kDay)})});
  for (int i = 0; i < 6; ++i) ASSERT_TRUE(Try().granted);
  Reload({Feature("f", {Calendar("per_day", 8, CalendarUnit::kDay)})});
  EXPECT_EQ(Exhaust(), 2);
}

// Finding 6.
TEST_F(NeverOverTest, CalendarGuardCarrySurvivesRestartInTheNextWindow) {
  LimitSpec day = Calendar("per_day", 10, CalendarUnit::kDay);
  day.guard = absl::Seconds(10);
  Start({Feature("f", {day})});
  clock_.Set(Utc(2026, 3, 1, 23, 59, 55));  // within the guard: counts tomorrow too
  EXPECT_EQ(Exhaust(), 10);
  clock_.Set(Utc(2026, 3, 2, 0, 0, 1));
  Restart();
  EXPECT_EQ(Exhaust(), 0);
}

// Finding 7.
TEST_F(NeverOverTest, AdoptedCountAndCooldownSurviveRestart) {
  Start({Feature("f", {Calendar("per_day", 100, CalendarUnit::kDay)})});
  Report(200, {{"X-RateLimit-Limit", "100"}, {"X-RateLimit-Remaining", "3"}});
  Report(429, {{"Retry-After", "30"}});
  Restart();
  EXPECT_EQ(Try().limited_by, "f.cooldown");
  clock_.Advance(absl::Seconds(31));
  // The throttle came with 3 left by quotad's count: outside use, learnt on the day limit (10%
  // of it held back), which survives the restart too.
  EXPECT_EQ(Exhaust(), 0);
}

TEST_F(NeverOverTest, RefundAfterAnAdoptionNeverUndercutsTheUpstreamsCount) {
  Start({Feature("f", {Calendar("per_day", 100, CalendarUnit::kDay)})});
  const Decision a = Try("f", 20);
  ASSERT_TRUE(a.granted);
  // The upstream counts 90 (20 of ours and 70 from elsewhere).
  Report(200, {{"X-RateLimit-Limit", "100"}, {"X-RateLimit-Remaining", "10"}});
  ASSERT_OK(ledger_->Release(a.lease_id, 0));
  EXPECT_EQ(Exhaust(), 10);
}

TEST_F(NeverOverTest, SlidingRefundAfterAnAdoptionNeverUndercutsTheUpstreamsCount) {
  Start({Feature("f", {Sliding("per_min", 100, absl::Minutes(1))})});
  const Decision a = Try("f", 20);
  ASSERT_TRUE(a.granted);
  Report(200, {{"X-RateLimit-Limit", "100"}, {"X-RateLimit-Remaining", "10"}});
  ASSERT_OK(ledger_->Release(a.lease_id, 0));
  EXPECT_EQ(Exhaust(), 10);
}

// Finding 8: config bounds keep the arithmetic in range.
TEST_F(NeverOverTest, TokenBucketWhoseRefillOverflowsIsRejectedNamingIt) {
  absl::StatusOr<std::unique_ptr<Ledger>> l = Ledger::Create(
      OneCredential("cred", {Feature("f", {Bucket("slow", 1, absl::Hours(24 * 366), 300)})}),
      &clock_);
  ASSERT_THAT(l, StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("capacity 300")));
}

TEST_F(NeverOverTest, SlowestTokenBucketAllowedGrantsItsBurstOnly) {
  Start({Feature("f", {Bucket("slow", 1, absl::Hours(24 * 366), 9)})});
  EXPECT_EQ(Exhaust(), 9);
}

// Smaller: a sliding window's open block is closed by the next one after a restart, so the
// journal keeps one open row, not one more per restart.
TEST_F(NeverOverTest, RestartsLeaveOneOpenSlidingBlock) {
  Start({Feature("f", {Sliding("per_min", 100, absl::Minutes(1))})});
  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE(Try().granted);
    clock_.Advance(absl::Seconds(1));
    Restart();
  }
  ASSERT_TRUE(Try().granted);
  ASSERT_OK_AND_ASSIGN(const JournalState state, journal_.Load());
  int open = 0;
  for (const Reservation& r : state.reservations) {
    if (r.until_ns == std::numeric_limits<int64_t>::max()) ++open;
  }
  EXPECT_EQ(open, 1);
  // Each restart may forget at most one reserved block (10 units here), never grant more.
  const int more = Exhaust();
  EXPECT_LE(more, 100 - 6);
  EXPECT_GE(more, 100 - 6 - 5 * 10);
}

// Smaller: durations run on the monotonic clock: an NTP step of the wall clock shortens no
// sliding window, bucket refill, lease or cooldown; calendar windows follow the wall clock.
TEST_F(NeverOverTest, WallClockStepShortensNoWindowLeaseOrCooldown) {
  FeatureSpec jobs = Feature("jobs", {Concurrency("slots", 1)});
  Start({Feature("f", {Sliding("per_hour", 3, absl::Hours(1)),
                       Bucket("bucket", 1, absl::Hours(1), 3)}),
         jobs, Feature("g", {Calendar("per_day", 2, CalendarUnit::kDay)})});
  EXPECT_EQ(Exhaust("f"), 3);
  AcquireRequest slot;
  slot.credential = "cred";
  slot.feature = "jobs";
  slot.lease_ttl = absl::Minutes(30);
  absl::StatusOr<Decision> held = ledger_->Acquire(slot);
  ASSERT_OK(held);
  ASSERT_TRUE(held->granted);
  EXPECT_EQ(Exhaust("g"), 2);
  Report(429, {{"Retry-After", "600"}}, "g");

  clock_.StepWall(absl::Hours(25));  // the wall clock jumps a day ahead; no time has passed
  EXPECT_EQ(Exhaust("f"), 0);
  EXPECT_FALSE(ledger_->Acquire(slot)->granted);
  EXPECT_OK(ledger_->Renew(held->lease_id, absl::Minutes(30)));
  EXPECT_EQ(Try("g").limited_by, "g.cooldown");
  // (A restart anchors ledger time to the wall clock again: across a restart durations are as
  // good as the wall clock. See Ledger::NowNs.)

  clock_.Advance(absl::Minutes(11));  // the cooldown ends; a new day on the wall clock
  EXPECT_EQ(Exhaust("g"), 2);
  clock_.Advance(absl::Hours(1));  // an hour has really passed
  EXPECT_EQ(Exhaust("f"), 1);      // the sliding hour freed, the bucket refilled one
}

// Smaller: denied requests leave no scope behind; a cooldown cools the features sharing a
// counter; a cooldown is capped.
TEST_F(NeverOverTest, DeniedRequestsDoNotFillMaxScopes) {
  LimitSpec per_rule = Calendar("per_rule", 1, CalendarUnit::kDay);
  per_rule.scoped = true;
  FeatureSpec f = Feature("f", {Calendar("per_day", 1, CalendarUnit::kDay), per_rule});
  f.max_scopes = 2;
  Start({f});
  ASSERT_TRUE(Try("f", 1, "a").granted);
  for (int i = 0; i < 5; ++i) EXPECT_FALSE(Try("f", 1, absl::StrCat("s", i)).granted);
  clock_.Set(Utc(2026, 3, 2, 0, 0, 1));
  EXPECT_TRUE(Try("f", 1, "b").granted);  // only "a" and "b" in use: within max_scopes
}

TEST_F(NeverOverTest, CooldownCoolsEveryFeatureDrawingOnTheSameLimit) {
  FeatureSpec scan = Feature("scan", {Sliding("per_min", 5, absl::Minutes(1))});
  scan.draws_on = {"requests"};
  Start({Feature("requests", {Sliding("per_min", 60, absl::Minutes(1))}), scan});
  Report(429, {{"Retry-After", "20"}}, "requests");
  EXPECT_FALSE(Try("scan").granted);
  EXPECT_EQ(Try("scan").limited_by, "scan.cooldown");
}

TEST_F(NeverOverTest, OneReportCannotCoolAKeyDownForLongerThanItsLongestWindow) {
  Start({Feature("f", {Calendar("per_day", 10, CalendarUnit::kDay)})});
  const ReportResult r = Report(429, {{"Retry-After", "34560000"}});  // 400 days
  EXPECT_LE(r.cooldown_until - clock_.Now(), absl::Hours(26));
  EXPECT_FALSE(r.warnings.empty());
}

}  // namespace
}  // namespace quotad
