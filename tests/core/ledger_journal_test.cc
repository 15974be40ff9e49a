// The ledger over a Journal (its write-ahead high-water marks and lease records): a restart (a
// new ledger restored from the same journal, the reference MemoryJournal) never grants more than
// a window's capacity across lives and loses at most one reserve block per counter; rolling,
// bucket and concurrency state survive it; reservations are written per block, not per grant;
// and a journal that fails its writes (FailingJournal) makes the ledger fail closed, charging
// nothing it did not answer. Each test starts both ways: Create then Restore, and CreateRestored.
// The Journal implementations themselves are tested in tests/store.

#include <memory>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "service/core/clock.h"
#include "service/core/ledger.h"
#include "service/store/memory_journal.h"
#include "tests/core/failing_journal.h"
#include "tests/support/policy_builders.h"
#include "tests/support/status_matchers.h"

namespace quotad {
namespace {

using ::testing::HasSubstr;
using testing::Bucket;
using testing::Calendar;
using testing::Concurrency;
using testing::FailingJournal;
using testing::Feature;
using testing::OneCredential;
using testing::Rolling;
using testing::Sliding;
using testing::StatusIs;
using testing::Utc;

// Each test runs with both ways to start: Create then Restore, and CreateRestored (which reads
// the journal while the policy compiles).
class LedgerJournalTest : public ::testing::TestWithParam<bool> {
 protected:
  void Start(const Policy& p) {
    policy_ = p;
    LedgerOptions options;
    options.journal = &journal_;
    options.reserve_fraction = 0.1;
    if (GetParam()) {
      auto ledger = Ledger::CreateRestored(p, &clock_, options);
      ASSERT_OK(ledger);
      ledger_ = std::move(*ledger);
      return;
    }
    auto ledger = Ledger::Create(p, &clock_, options);
    ASSERT_OK(ledger);
    ledger_ = std::move(*ledger);
    ASSERT_OK(ledger_->Restore());
  }
  void Restart() { Start(policy_); }  // the old ledger's memory is lost, as in kill -9
  absl::StatusOr<Decision> Try(absl::string_view feature = "f", int64_t cost = 1) {
    AcquireRequest req;
    req.credential = "cred";
    req.feature = feature;
    req.cost = cost;
    req.lease_ttl = absl::Minutes(10);
    return ledger_->Acquire(req);
  }
  int Exhaust() {
    int n = 0;
    for (auto d = Try(); d.ok() && d->granted; d = Try()) ++n;
    return n;
  }

  FakeClock clock_{Utc(2026, 3, 1, 12)};
  MemoryJournal memory_;
  FailingJournal journal_{&memory_};  // what the ledger writes to
  Policy policy_;
  std::unique_ptr<Ledger> ledger_;
};

TEST_P(LedgerJournalTest, DailyWindowNeverOverGrantsAcrossRestarts) {
  Start(OneCredential("cred", {Feature("f", {Calendar("per_day", 100, CalendarUnit::kDay)})}));
  int total = 0;
  for (int life = 0; life < 30; ++life) {
    for (int i = 0; i < 7; ++i) total += Try()->granted;
    Restart();
  }
  total += Exhaust();
  EXPECT_LE(total, 100);
  // Each restart may lose what was reserved but not granted: at most one block (10).
  EXPECT_GE(total, 100 - 30 * 10);
  EXPECT_LT(journal_.reserve_calls(), total);  // blocks, not one write per grant
  clock_.Set(Utc(2026, 3, 2));
  Restart();
  EXPECT_EQ(Exhaust(), 100);  // the new day is whole
}

TEST_P(LedgerJournalTest, SlidingWindowNeverOverGrantsAcrossRestarts) {
  Start(OneCredential("cred", {Feature("f", {Sliding("per_minute", 20, absl::Minutes(1))})}));
  std::vector<absl::Time> grants;
  for (int step = 0; step < 600; ++step) {
    if (step % 7 == 3) Restart();
    for (int i = 0; i < 3; ++i) {
      if (Try()->granted) grants.push_back(clock_.Now());
    }
    clock_.Advance(absl::Seconds(1));
  }
  size_t lo = 0;
  for (size_t hi = 0; hi < grants.size(); ++hi) {
    while (grants[hi] - grants[lo] >= absl::Minutes(1)) ++lo;
    ASSERT_LE(hi - lo + 1, 20u) << "at " << grants[hi];
  }
  EXPECT_GT(grants.size(), 60u);
}

TEST_P(LedgerJournalTest, RollingAndBucketStateSurviveRestart) {
  Start(OneCredential("cred", {Feature("f", {Rolling("per_24h", 50, absl::Hours(24))}),
                               Feature("g", {Bucket("floor", 4, absl::Minutes(1), 1)})}));
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(Try()->granted);
  ASSERT_TRUE(Try("g")->granted);
  Restart();
  EXPECT_FALSE(Try("g")->granted);  // the 15 s spacing holds across the restart
  int more = Exhaust();
  EXPECT_LE(10 + more, 50);
  EXPECT_GE(10 + more, 45);
  const Decision d = *Try();
  EXPECT_EQ(d.retry_at, Utc(2026, 3, 2, 12));  // the window still ends 24 h after first use
}

TEST_P(LedgerJournalTest, ConcurrencyLeasesSurviveRestartWithTheirExpiry) {
  Start(OneCredential("cred", {Feature("f", {Concurrency("jobs", 2)})}));
  const Decision a = *Try();
  const Decision b = *Try();
  ASSERT_TRUE(a.granted && b.granted);
  Restart();
  EXPECT_FALSE(Try()->granted);
  EXPECT_EQ(ledger_->Leases("cred").size(), 2u);
  ASSERT_OK(ledger_->Release(a.lease_id, std::nullopt));
  EXPECT_TRUE(Try()->granted);
  Restart();
  EXPECT_FALSE(Try()->granted);  // b and the new one
  clock_.Advance(absl::Minutes(10));
  Restart();
  EXPECT_TRUE(Try()->granted);  // both expired while "down"
}

TEST_P(LedgerJournalTest, StoreFailureFailsClosedAndChargesNothing) {
  Start(OneCredential("cred", {Feature("f", {Calendar("per_day", 100, CalendarUnit::kDay),
                                             Concurrency("jobs", 5)})}));
  ASSERT_TRUE(Try()->granted);
  journal_.set_fail(true);
  int unavailable = 0;
  for (int i = 0; i < 20; ++i) {
    auto d = Try();
    if (!d.ok()) {
      EXPECT_THAT(d, StatusIs(absl::StatusCode::kUnavailable, HasSubstr("disk full")));
      ++unavailable;
    }
  }
  EXPECT_GT(unavailable, 0);
  journal_.set_fail(false);
  auto usage = *ledger_->Usage("cred");
  // One grant before the failure, plus those made inside an already durable block: every
  // grant that was answered holds its slot, and nothing else was charged.
  EXPECT_EQ(usage[0].used, usage[1].used);
  EXPECT_EQ(usage[1].used, static_cast<int64_t>(ledger_->Leases("cred").size()));
}

INSTANTIATE_TEST_SUITE_P(StartUp, LedgerJournalTest, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& info) {
                           return info.param ? "CreateRestored" : "CreateThenRestore";
                         });

// A journal that cannot be read back.
class UnreadableJournal : public FailingJournal {
 public:
  using FailingJournal::FailingJournal;
  absl::StatusOr<JournalState> Load() override {
    return absl::DataLossError("state file is corrupt");
  }
};

TEST(LedgerCreateRestoredTest, FailsOnAnUnreadableJournalOrABadPolicy) {
  FakeClock clock{Utc(2026, 3, 1, 12)};
  MemoryJournal memory;
  UnreadableJournal unreadable(&memory);
  LedgerOptions options;
  options.journal = &unreadable;
  const Policy good =
      OneCredential("cred", {Feature("f", {Calendar("per_day", 100, CalendarUnit::kDay)})});
  EXPECT_THAT(Ledger::CreateRestored(good, &clock, options),
              StatusIs(absl::StatusCode::kDataLoss, HasSubstr("corrupt")));
  const Policy bad =
      OneCredential("cred", {Feature("f", {Calendar("per_day", 0, CalendarUnit::kDay)})});
  options.journal = &memory;
  EXPECT_THAT(Ledger::CreateRestored(bad, &clock, options),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("capacity 0")));
  options.journal = nullptr;  // nothing to read: Create
  EXPECT_OK(Ledger::CreateRestored(good, &clock, options));
}

}  // namespace
}  // namespace quotad
