// Regression cases of issue 11: one small deterministic scenario per over-grant or starvation path
// the never-over simulation (never_over_sim_test) looks for, on the real Ledger and SQLite file.
// Each fails on 68e1764.

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "service/core/clock.h"
#include "service/core/ledger.h"
#include "service/store/sqlite_journal.h"
#include "tests/support/status_matchers.h"
#include "tests/support/temp_dir.h"

namespace quotad {
namespace {

using ::quotad::testing::StatusIs;

const absl::Time kT0 = absl::FromCivil(absl::CivilSecond(2026, 3, 10, 12, 0, 0), absl::UTCTimeZone());

// A FakeClock whose next read can run a hook (another worker's request) right after the reader
// took the time, as a preempted thread would.
class RaceClock : public Clock {
 public:
  absl::Time Now() const override {
    const absl::Time t = fake.Now();
    if (hook) std::exchange(hook, nullptr)();
    return t;
  }
  std::unique_ptr<Timer> CreateTimer(absl::AnyInvocable<void()> callback) override {
    return fake.CreateTimer(std::move(callback));
  }
  FakeClock fake{kT0};
  mutable std::function<void()> hook;
};

LimitSpec Limit(std::string name, LimitKind kind, int64_t cap, absl::Duration period = absl::ZeroDuration()) {
  LimitSpec l;
  l.name = std::move(name);
  l.kind = kind;
  l.capacity = cap;
  l.period = period;
  if (kind == LimitKind::kCalendar) l.unit = CalendarUnit::kMinute;
  return l;
}

FeatureSpec Feature(std::string name, std::vector<LimitSpec> limits, std::vector<std::string> draws_on = {}) {
  FeatureSpec f;
  f.name = std::move(name);
  f.limits = std::move(limits);
  f.draws_on = std::move(draws_on);
  return f;
}

class NeverOver : public ::testing::Test {
 protected:
  void Start(std::vector<FeatureSpec> features, double fraction = 0.01) {
    policy_.credentials = {CredentialSpec{"cred", "test", std::move(features)}};
    fraction_ = fraction;
    Open();
  }
  void Open() {
    auto j = SqliteJournal::Open(dir_.File("state.db"));
    ASSERT_OK(j);
    journal_ = std::move(*j);
    LedgerOptions o;
    o.journal = journal_.get();
    o.reserve_fraction = fraction_;
    o.jitter_seed = 1;
    o.wake = [this](absl::Time t) { wakes_.push_back(t); };
    auto l = Ledger::Create(policy_, &clock_, o);
    ASSERT_OK(l);
    ledger_ = std::move(*l);
    ASSERT_OK(ledger_->Restore());
  }
  // kill -9: the journal keeps what it wrote (the deferred writes do not matter here).
  void Restart() {
    ledger_.reset();
    journal_.reset();
    Open();
  }
  void Reload(std::function<void(CredentialSpec&)> edit) {
    edit(policy_.credentials[0]);
    ASSERT_OK(ledger_->Reload(policy_));
  }
  absl::StatusOr<Decision> Acquire(const std::string& feature, int64_t cost = 1, const std::string& scope = "") {
    AcquireRequest r;
    r.credential = "cred";
    r.feature = feature;
    r.scope = scope;
    r.cost = cost;
    r.want_limits = false;
    return ledger_->Acquire(r);
  }
  int Grants(const std::string& feature, int tries, int64_t cost = 1) {
    int n = 0;
    for (int i = 0; i < tries; ++i) {
      auto d = Acquire(feature, cost);
      if (d.ok() && d->granted) ++n;
    }
    return n;
  }
  void Advance(absl::Duration d) { clock_.fake.Advance(d); }
  absl::StatusOr<ReportResult> Report(const std::string& feature, int status, UpstreamHeaders h) {
    UpstreamAnswer a;
    a.credential = "cred";
    a.feature = feature;
    a.http_status = status;
    a.headers = std::move(h);
    return ledger_->Report(a);
  }

  testing::TempDir dir_;
  RaceClock clock_;
  Policy policy_;
  double fraction_ = 0.01;
  std::unique_ptr<SqliteJournal> journal_;
  std::unique_ptr<Ledger> ledger_;
  std::vector<absl::Time> wakes_;
};

// (1) 1 outside + 4 of ours in the window the upstream opened; a restart must not grant 5 more.
TEST_F(NeverOver, RollingWindowOpenedByReportSurvivesRestart) {
  Start({Feature("reputation", {Limit("daily", LimitKind::kRolling, 5, absl::Hours(24))})}, 1.0);
  ASSERT_EQ(Grants("reputation", 1), 1);  // opens a window, reserves its block
  Advance(absl::Hours(25));              // that window closed
  ASSERT_OK(Report("reputation", 200,
                   {{"X-RateLimit-Limit", "5"},
                    {"X-RateLimit-Remaining", "4"},
                    {"X-RateLimit-Reset-In", "86400s"}}));
  EXPECT_EQ(Grants("reputation", 10), 4);
  Restart();
  EXPECT_EQ(Grants("reputation", 10), 0) << "a restart granted the rolling window again";
}

// (2) A's refund gives back only A's units: C must not take a second burst at B's instant.
TEST_F(NeverOver, TokenBucketRefundGivesBackOnlyTheLeaseOwnUnits) {
  LimitSpec b = Limit("bucket", LimitKind::kTokenBucket, 10, absl::Seconds(10));
  b.rate = 10;
  Start({Feature("f", {b})});
  auto a = Acquire("f", 10);
  ASSERT_OK(a);
  ASSERT_TRUE(a->granted);
  Advance(absl::Seconds(10));
  auto bb = Acquire("f", 10);
  ASSERT_OK(bb);
  ASSERT_TRUE(bb->granted);
  ASSERT_OK(ledger_->Release(a->lease_id, 0));
  auto c = Acquire("f", 10);
  ASSERT_OK(c);
  EXPECT_FALSE(c->granted) << "20 units at one instant against a burst of 10";
}

// (3) Renew that read the time before the lease expired, while another worker took the slot.
TEST_F(NeverOver, RenewRacingExpiryNeverLeavesTwoHolders) {
  FeatureSpec jobs = Feature("jobs", {Limit("slots", LimitKind::kConcurrency, 1)});
  jobs.default_lease_ttl = absl::Seconds(10);
  Start({jobs});
  auto a = Acquire("jobs");
  ASSERT_OK(a);
  ASSERT_TRUE(a->granted);
  std::optional<absl::StatusOr<Decision>> b;
  clock_.hook = [&] {
    Advance(absl::Seconds(10));
    b = Acquire("jobs");
  };
  absl::StatusOr<absl::Time> renewed = ledger_->Renew(a->lease_id, absl::Seconds(10));
  ASSERT_TRUE(b.has_value());
  const bool b_granted = b->ok() && (*b)->granted;
  EXPECT_FALSE(renewed.ok() && b_granted) << "A renewed and B granted: two holders of one slot";
}


TEST_F(NeverOver, ReloadOfTokenBucketRateKeepsUsage) {
  LimitSpec b = Limit("bucket", LimitKind::kTokenBucket, 5, absl::Minutes(1));
  b.rate = 5;
  Start({Feature("f", {b})});
  ASSERT_EQ(Grants("f", 10), 5);
  Reload([](CredentialSpec& c) { c.features[0].limits[0].rate = 6; });
  EXPECT_EQ(Grants("f", 10), 0);
}

TEST_F(NeverOver, ReloadOfCalendarGuardKeepsUsage) {
  Start({Feature("f", {Limit("per_minute", LimitKind::kCalendar, 5)})});
  ASSERT_EQ(Grants("f", 10), 5);
  Reload([](CredentialSpec& c) { c.features[0].limits[0].guard = absl::Seconds(1); });
  EXPECT_EQ(Grants("f", 10), 0);
}

TEST_F(NeverOver, ReloadOfSlidingGuardKeepsUsage) {
  Start({Feature("f", {Limit("per_minute", LimitKind::kSliding, 5, absl::Minutes(1))})});
  ASSERT_EQ(Grants("f", 10), 5);
  Reload([](CredentialSpec& c) { c.features[0].limits[0].guard = absl::Seconds(1); });
  EXPECT_EQ(Grants("f", 10), 0);
}

TEST_F(NeverOver, ReloadFromUnscopedToScopedKeepsUsage) {
  Start({Feature("f", {Limit("per_minute", LimitKind::kCalendar, 5)})});
  ASSERT_EQ(Grants("f", 10), 5);
  Reload([](CredentialSpec& c) { c.features[0].limits[0].scoped = true; });
  EXPECT_EQ(Grants("f", 10), 0);
}

TEST_F(NeverOver, ReloadOfSlidingSubBucketsKeepsUsage) {
  Start({Feature("f", {Limit("per_hour", LimitKind::kSliding, 2, absl::Hours(1))})});
  ASSERT_EQ(Grants("f", 1), 1);
  Reload([](CredentialSpec& c) { c.features[0].limits[0].sub_buckets = 3; });
  EXPECT_EQ(Grants("f", 5), 1);
}

// (6) Charges in the last `guard` of a window count in the next one, also after a restart.
TEST_F(NeverOver, CalendarGuardCarrySurvivesRestart) {
  LimitSpec l = Limit("per_minute", LimitKind::kCalendar, 5);
  l.guard = absl::Seconds(10);
  Start({Feature("f", {l})});
  Advance(absl::Seconds(55));
  ASSERT_EQ(Grants("f", 10), 5);
  Advance(absl::Seconds(6));  // the next minute, which carries the 5
  ASSERT_EQ(Grants("f", 1), 0);
  Restart();
  EXPECT_EQ(Grants("f", 10), 0) << "the guard's carry was forgotten by a restart";
}

// (7) What Report learned survives a restart, and a refund does not undercut it.
TEST_F(NeverOver, ReportAdoptionSurvivesRestart) {
  Start({Feature("f", {Limit("per_minute", LimitKind::kCalendar, 10)})});
  ASSERT_OK(Report("f", 200, {{"X-RateLimit-Limit", "10"}, {"X-RateLimit-Remaining", "2"}}));
  Restart();
  EXPECT_LE(Grants("f", 10), 2);
}

TEST_F(NeverOver, ReportCooldownSurvivesRestart) {
  Start({Feature("f", {Limit("per_minute", LimitKind::kCalendar, 10)})});
  ASSERT_OK(Report("f", 429, {{"Retry-After", "30"}}));
  Restart();
  EXPECT_EQ(Grants("f", 1), 0) << "granted inside the upstream's Retry-After";
}

TEST_F(NeverOver, RefundAfterAdoptionDoesNotUndercutUpstream) {
  Start({Feature("f", {Limit("per_minute", LimitKind::kCalendar, 10)})});
  auto a = Acquire("f", 5);  // the worker will use none of it
  ASSERT_OK(a);
  ASSERT_TRUE(a->granted);
  // 5 from outside; the upstream counts 5 (ours sent nothing yet).
  ASSERT_OK(Report("f", 200, {{"X-RateLimit-Limit", "10"}, {"X-RateLimit-Remaining", "5"}}));
  ASSERT_OK(ledger_->Release(a->lease_id, 0));
  EXPECT_LE(Grants("f", 20), 5) << "the refund undercut the upstream's count";
}

// (8) Burst 300 at 1 per 366 days: burst * emission passes int64.
// The bucket of the finding (burst 300, 1 per 366 days) is now refused by validation (its
// refill would take 300 years); the slowest bucket allowed grants its burst and no more.
TEST_F(NeverOver, TokenBucketWithLongPeriodNeverOverflows) {
  LimitSpec b = Limit("bucket", LimitKind::kTokenBucket, 9, absl::Hours(24 * 366));
  b.rate = 1;
  Start({Feature("f", {b})});
  EXPECT_EQ(Grants("f", 1000), 9);
  b.capacity = 300;
  Policy p;
  p.credentials = {CredentialSpec{"cred", "test", {Feature("f", {b})}}};
  EXPECT_THAT(ValidatePolicy(p), StatusIs(absl::StatusCode::kInvalidArgument));
}

// (9) A waiter on `requests` is not passed by a sibling drawing on the same limit.
TEST_F(NeverOver, WaiterIsNotPassedBySiblingDrawingOnTheSameLimit) {
  Start({Feature("requests", {Limit("per_minute", LimitKind::kCalendar, 2)}),
         Feature("scan", {Limit("own", LimitKind::kSliding, 100, absl::Minutes(1))}, {"requests"})});
  ASSERT_EQ(Grants("requests", 2), 2);
  AcquireRequest r;
  r.credential = "cred";
  r.feature = "requests";
  std::optional<absl::StatusOr<Decision>> answer;
  ledger_->AcquireOrWait(r, absl::Minutes(2), 0, [&](absl::StatusOr<Decision> d) { answer = std::move(d); });
  ASSERT_FALSE(answer.has_value());
  Advance(absl::Minutes(1));  // the window reopens; the sibling arrives before the timer fires
  auto sibling = Acquire("scan");
  ASSERT_OK(sibling);
  // The waiter is served first (before the sibling is decided), or the sibling is denied.
  ASSERT_TRUE(answer.has_value() || !sibling->granted) << "a later sibling passed the waiter";
  ledger_->Pump();
  ASSERT_TRUE(answer.has_value());
  EXPECT_TRUE(answer->ok() && (*answer)->granted);
}

// (10) Cancelling the head serves the next waiter (or asks for a Pump now).
TEST_F(NeverOver, CancellingTheHeadWaiterServesTheNext) {
  FeatureSpec jobs = Feature("jobs", {Limit("slots", LimitKind::kConcurrency, 2)});
  jobs.default_lease_ttl = absl::Minutes(5);
  Start({jobs});
  ASSERT_EQ(Grants("jobs", 1), 1);  // one of two slots held for 5 minutes
  AcquireRequest big;
  big.credential = "cred";
  big.feature = "jobs";
  big.cost = 2;
  AcquireRequest small = big;
  small.cost = 1;
  std::optional<absl::StatusOr<Decision>> a1, a2;
  WaitTicket head = ledger_->AcquireOrWait(big, absl::Minutes(10), 0, [&](auto d) { a1 = std::move(d); });
  ledger_->AcquireOrWait(small, absl::Minutes(10), 0, [&](auto d) { a2 = std::move(d); });
  ASSERT_FALSE(a2.has_value());
  wakes_.clear();
  ASSERT_TRUE(ledger_->Cancel(head));
  const absl::Time now = clock_.fake.Now();
  for (absl::Time w : wakes_) {
    if (w <= now) ledger_->Pump();  // the server's timer
  }
  ASSERT_TRUE(a2.has_value()) << "the next waiter still waits for the cancelled head's retry time";
  EXPECT_TRUE(a2->ok() && (*a2)->granted);
}

// (11) Reset: the provider zeroed its counters. A lease granted before the reset refunds
// nothing: the provider's fresh count holds only what was sent after it.
TEST_F(NeverOver, RefundOfLeaseGrantedBeforeResetGivesNothingBack) {
  Start({Feature("f", {Limit("per_minute", LimitKind::kCalendar, 10)})});
  auto a = Acquire("f", 10);  // its worker sends 2, before the reset
  ASSERT_OK(a);
  ASSERT_TRUE(a->granted);
  ASSERT_OK(ledger_->Reset("cred"));
  ASSERT_EQ(Grants("f", 20), 10);  // the provider counts these 10
  auto released = ledger_->Release(a->lease_id, 2);
  ASSERT_OK(released);
  EXPECT_EQ(released->refunded, 0);
  EXPECT_EQ(Grants("f", 20), 0) << "the refund of a lease granted before the reset gave back units";
}

// (12) The zeroing is not journaled: a restart right after a reset may count the old units
// again (an under-grant), never fewer than the provider's; a lease from before the reset still
// refunds nothing.
TEST_F(NeverOver, RestartAfterResetCountsAtLeastWhatWasSentSince) {
  Start({Feature("f", {Limit("per_minute", LimitKind::kCalendar, 10)})});
  auto a = Acquire("f", 4);  // its worker sends nothing
  ASSERT_OK(a);
  ASSERT_TRUE(a->granted);
  ASSERT_OK(ledger_->Reset("cred"));
  ASSERT_EQ(Grants("f", 3), 3);  // the provider counts these 3
  Restart();
  auto released = ledger_->Release(a->lease_id, 0);
  ASSERT_OK(released);
  EXPECT_EQ(released->refunded, 0);
  EXPECT_LE(Grants("f", 20), 7) << "more than the provider's fresh window of 10 holds";
}

// (13) Finding of the reset op (never_over_sim_test, see tests/sim/README.md): a rolling
// window ("24 h from the first request") that the provider zeroed opens again at the next
// request, but the ledger keeps its old window's end (Counter::Clear keeps the bounds), so
// when that end passes it grants a second window's worth inside the provider's one.
// Disabled until service/core fixes it (Clear must make the next charge open a window, or the
// window must end no earlier than a period after the first charge after the reset).
TEST_F(NeverOver, ResetRollingWindowOpensAtTheNextRequest) {
  Start({Feature("f", {Limit("daily", LimitKind::kRolling, 5, absl::Hours(24))})});
  ASSERT_EQ(Grants("f", 1), 1);  // opens quotad's window and the provider's: until T0 + 24 h
  Advance(absl::Hours(23));
  ASSERT_OK(ledger_->Reset("cred"));  // the provider forgets its window with its count
  ASSERT_EQ(Grants("f", 10), 5);      // these open the provider's next one: until T0 + 47 h
  Advance(absl::Hours(2));            // quotad's old window has ended, the provider's has not
  EXPECT_EQ(Grants("f", 10), 0) << "10 units in one provider window of 5";
}

}  // namespace
}  // namespace quotad
