// The ledger over a real SqliteJournal across restarts (ledger and journal destroyed, the file
// reopened, Restore): windows never over-grant, and leases keep their slots and expiry.

#include <memory>
#include <string>

#include "gtest/gtest.h"
#include "service/core/clock.h"
#include "service/core/ledger.h"
#include "service/store/sqlite_journal.h"
#include "tests/support/policy_builders.h"
#include "tests/support/status_matchers.h"
#include "tests/support/temp_dir.h"

namespace quotad {
namespace {

using testing::Calendar;
using testing::Concurrency;
using testing::Feature;
using testing::OneCredential;
using testing::Sliding;
using testing::TempDir;
using testing::Utc;

class LedgerStoreTest : public ::testing::Test {
 protected:
  void Start(const Policy& p) {
    policy_ = p;
    ledger_.reset();
    journal_.reset();  // flushes what is queued, as a graceful stop would
    auto journal = SqliteJournal::Open(dir_.File("state.db"));
    ASSERT_OK(journal);
    journal_ = std::move(*journal);
    LedgerOptions options;
    options.journal = journal_.get();
    options.reserve_fraction = 0.1;
    auto ledger = Ledger::Create(p, &clock_, options);
    ASSERT_OK(ledger);
    ledger_ = std::move(*ledger);
    ASSERT_OK(ledger_->Restore());
  }
  void Restart() { Start(policy_); }
  absl::StatusOr<Decision> Try(absl::string_view feature = "f", int64_t cost = 1) {
    AcquireRequest req;
    req.credential = "cred";
    req.feature = feature;
    req.cost = cost;
    req.lease_ttl = absl::Minutes(10);
    return ledger_->Acquire(req);
  }
  int Exhaust(absl::string_view feature = "f") {
    int n = 0;
    for (auto d = Try(feature); d.ok() && d->granted; d = Try(feature)) ++n;
    return n;
  }

  TempDir dir_;
  FakeClock clock_{Utc(2026, 3, 1, 12)};
  Policy policy_;
  std::unique_ptr<SqliteJournal> journal_;
  std::unique_ptr<Ledger> ledger_;
};

TEST_F(LedgerStoreTest, DailyWindowNeverOverGrantsAcrossRestarts) {
  Start(OneCredential("cred", {Feature("f", {Calendar("per_day", 100, CalendarUnit::kDay)})}));
  int total = 0;
  for (int life = 0; life < 30; ++life) {
    for (int i = 0; i < 7; ++i) total += Try()->granted;
    clock_.Advance(absl::Minutes(1));
    Restart();
  }
  total += Exhaust();
  EXPECT_LE(total, 100);
  EXPECT_GE(total, 100 - 30 * 10);  // at most one block of 10 lost per restart
  clock_.Set(Utc(2026, 3, 2));
  Restart();
  EXPECT_EQ(Exhaust(), 100);  // the next day is whole
}

TEST_F(LedgerStoreTest, ThreeLimitFeatureKeepsEveryWindowAcrossRestarts) {
  Start(OneCredential("cred", {Feature("f", {Sliding("per_minute", 20, absl::Minutes(1)),
                                             Calendar("per_day", 150, CalendarUnit::kDay),
                                             Calendar("per_month", 1000, CalendarUnit::kMonth)})}));
  int day_total = 0;
  for (int minute = 0; minute < 20; ++minute) {
    int this_minute = 0;
    for (int i = 0; i < 30; ++i) this_minute += Try()->granted;
    Restart();
    this_minute += Exhaust();
    EXPECT_LE(this_minute, 20) << "minute " << minute;
    day_total += this_minute;
    clock_.Advance(absl::Minutes(1));
  }
  EXPECT_LE(day_total, 150);
  EXPECT_GE(day_total, 150 - 20 * 15);
}

TEST_F(LedgerStoreTest, ConcurrencyLeasesSurviveRestartsWithTheirExpiry) {
  Start(OneCredential("cred", {Feature("jobs", {Concurrency("slots", 2)})}));
  const Decision a = *Try("jobs");
  const Decision b = *Try("jobs");
  ASSERT_TRUE(a.granted && b.granted);
  Restart();
  EXPECT_FALSE(Try("jobs")->granted);
  EXPECT_EQ(ledger_->Leases("cred").size(), 2u);
  ASSERT_OK(ledger_->Release(a.lease_id, std::nullopt));
  Restart();  // the release (queued) was written by the journal's destructor
  EXPECT_EQ(ledger_->Leases("cred").size(), 1u);
  clock_.Advance(absl::Minutes(9));
  ASSERT_OK(ledger_->Renew(b.lease_id, absl::Minutes(10)));
  clock_.Advance(absl::Minutes(5));  // past b's first expiry, inside the renewed one
  Restart();
  EXPECT_TRUE(Try("jobs")->granted);
  EXPECT_FALSE(Try("jobs")->granted);  // b still holds its slot
  clock_.Advance(absl::Minutes(11));
  Restart();
  EXPECT_EQ(Exhaust("jobs"), 2);  // both expired while "down"
}

TEST_F(LedgerStoreTest, RefundableLeaseIsRestoredAndCanBeReleased) {
  Start(OneCredential("cred", {Feature("f", {Calendar("per_day", 100, CalendarUnit::kDay)})}));
  const Decision d = *Try("f", 10);
  ASSERT_TRUE(d.granted);
  ASSERT_OK(journal_->Flush());
  Restart();
  ASSERT_EQ(ledger_->Leases("cred").size(), 1u);
  auto released = ledger_->Release(d.lease_id, 2);
  ASSERT_OK(released);
}

TEST_F(LedgerStoreTest, CompactKeepsWhatStillMatters) {
  Start(OneCredential("cred", {Feature("f", {Calendar("per_day", 100, CalendarUnit::kDay)}),
                               Feature("jobs", {Concurrency("slots", 1)})}));
  for (int i = 0; i < 40; ++i) ASSERT_TRUE(Try()->granted);
  ASSERT_TRUE(Try("jobs")->granted);
  ASSERT_OK(journal_->Compact(absl::ToUnixNanos(clock_.Now())));
  Restart();
  EXPECT_FALSE(Try("jobs")->granted);
  EXPECT_LE(40 + Exhaust(), 100);
  clock_.Set(Utc(2026, 3, 2, 12));
  ASSERT_OK(journal_->Compact(absl::ToUnixNanos(clock_.Now())));
  auto state = journal_->Load();
  ASSERT_OK(state);
  EXPECT_TRUE(state->reservations.empty());
  EXPECT_TRUE(state->leases.empty());
}

}  // namespace
}  // namespace quotad
