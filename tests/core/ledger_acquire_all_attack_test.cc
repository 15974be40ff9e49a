// Attacks on Ledger::AcquireAll (the all-or-nothing batch) and Credential::UndoGrant: each test
// says what it tries to make the batch do (grant past a limit, grant half, leave a refused
// batch's units, slots, scopes or journal rows behind, pass or starve a waiter, deadlock), and
// fails if it succeeds. Provider windows are modelled by hand where the ledger's own view would
// hide the harm (a rolling window opens at the first request the provider sees, and a refused
// batch sends none).

#include <atomic>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "service/core/clock.h"
#include "service/core/ledger.h"
#include "service/store/memory_journal.h"
#include "service/store/sqlite_journal.h"
#include "tests/core/failing_journal.h"
#include "tests/support/policy_builders.h"
#include "tests/support/status_matchers.h"
#include "tests/support/temp_dir.h"

namespace quotad {
namespace {

using namespace ::quotad::testing;  // NOLINT: the policy builders

AcquireRequest Item(absl::string_view credential, absl::string_view feature, int64_t cost = 1,
                    absl::string_view scope = "") {
  AcquireRequest req;
  req.credential = credential;
  req.feature = feature;
  req.scope = scope;
  req.cost = cost;
  req.lease_ttl = absl::Minutes(5);
  return req;
}

int Granted(const std::vector<absl::StatusOr<Decision>>& out) {
  int n = 0;
  for (const auto& d : out) n += d.ok() && d->granted ? 1 : 0;
  return n;
}

// The feature "block" of every policy below: a calendar day of 1, filled first, so that an item
// on it refuses its batch.
FeatureSpec Blocker() { return Feature("block", {Calendar("one", 1, CalendarUnit::kDay)}); }

class AcquireAllAttackTest : public ::testing::Test {
 protected:
  // A ledger of `policy` over `journal` (the test's MemoryJournal when null); "block" filled.
  void Start(const Policy& policy, Journal* journal = nullptr) {
    policy_ = policy;
    LedgerOptions options;
    options.journal = journal != nullptr ? journal : &journal_;
    journal_in_use_ = options.journal;
    auto ledger = Ledger::Create(policy, &clock_, options);
    ASSERT_OK(ledger);
    ledger_ = std::move(*ledger);
    ASSERT_OK(ledger_->Restore());
  }
  void FillBlocker(absl::string_view credential = "c") {
    absl::StatusOr<Decision> d = ledger_->Acquire(Item(credential, "block"));
    ASSERT_OK(d);
    ASSERT_TRUE(d->granted);
  }
  // A restart: a new ledger from the same journal.
  void Restart() {
    ledger_.reset();
    LedgerOptions options;
    options.journal = journal_in_use_;
    auto ledger = Ledger::Create(policy_, &clock_, options);
    ASSERT_OK(ledger);
    ledger_ = std::move(*ledger);
    ASSERT_OK(ledger_->Restore());
  }
  // How many single acquires of `cost` are granted from here on (at most `at_most`).
  int Drain(absl::string_view credential, absl::string_view feature, absl::string_view scope = "",
            int64_t cost = 1, int at_most = 1000) {
    int n = 0;
    while (n < at_most) {
      absl::StatusOr<Decision> d = ledger_->Acquire(Item(credential, feature, cost, scope));
      if (!d.ok() || !d->granted) return n;
      ++n;
    }
    return n;
  }
  // A batch of `items` then the blocker: must be refused whole, naming the blocker.
  void Refused(std::vector<AcquireRequest> items, absl::string_view credential = "c") {
    items.push_back(Item(credential, "block"));
    std::vector<absl::StatusOr<Decision>> out = ledger_->AcquireAll(items);
    ASSERT_EQ(out.size(), items.size());
    EXPECT_EQ(Granted(out), 0);
    const std::string blocker = absl::StrCat("all_or_nothing:items[", items.size() - 1, "]");
    for (size_t i = 0; i + 1 < items.size(); ++i) {
      ASSERT_OK(out[i]);
      EXPECT_EQ(out[i]->limited_by, blocker) << i;
    }
    ASSERT_OK(out.back());
    EXPECT_EQ(out.back()->limited_by, "block.one");
  }

  FakeClock clock_{Utc(2026, 3, 1, 12)};
  MemoryJournal journal_;
  Journal* journal_in_use_ = nullptr;
  Policy policy_;
  std::unique_ptr<Ledger> ledger_;
};

// Every limit kind, each item undone: the whole capacity is there after the refusal, also when
// two items of the batch charged the same counter (and at one instant, so a sliding log merges
// them into one entry and a bucket's refunds must come latest first).
TEST_F(AcquireAllAttackTest, EveryKindIsGivenBackWholeAlsoTwiceOnOneCounter) {
  Start(OneCredential(
      "c", {Feature("day", {Calendar("d", 5, CalendarUnit::kDay)}),
            Feature("roll", {Rolling("r", 5, absl::Minutes(1))}),
            Feature("slide", {Sliding("s", 5, absl::Minutes(1))}),
            Feature("buckets", {Sliding("sb", 5, absl::Minutes(1), 6)}),
            Feature("bucket", {Bucket("tb", 5, absl::Minutes(1), 5)}),
            Feature("jobs", {Concurrency("j", 5)}),
            Feature("free", {Unlimited("u", CalendarUnit::kDay), Calendar("cap", 5, CalendarUnit::kDay)}),
            Blocker()}));
  FillBlocker();
  const char* kFeatures[] = {"day", "roll", "slide", "buckets", "bucket", "jobs", "free"};
  for (int round = 0; round < 3; ++round) {
    std::vector<AcquireRequest> items;
    for (const char* f : kFeatures) {
      items.push_back(Item("c", f, 2));
      items.push_back(Item("c", f, 3));
    }
    Refused(items);
    clock_.Advance(absl::Seconds(1));
  }
  for (const char* f : kFeatures) EXPECT_EQ(Drain("c", f), 5) << f;
  EXPECT_EQ(ledger_->Leases("c").size(), 1u + 5 * 7);
}

// A feature that draws on another's limits, and scoped limits: the sibling's counters are given
// back too, and a scope the refused batch created is gone again (max_scopes counts scopes in use:
// a refused batch that left its new scopes behind would lock out every other scope).
TEST_F(AcquireAllAttackTest, DrawsOnSiblingsAndNewScopesLeaveNothingBehind) {
  FeatureSpec hunt = Feature("hunt", {Calendar("per_day", 3, CalendarUnit::kDay)});
  hunt.limits[0].scoped = true;
  hunt.max_scopes = 2;
  Start(OneCredential("c", {Feature("requests", {Sliding("rpm", 4, absl::Minutes(1))}),
                            Feature("scan", {Calendar("s", 9, CalendarUnit::kDay)}, {"requests"}),
                            hunt, Blocker()}));
  FillBlocker();
  Refused({Item("c", "scan", 2), Item("c", "requests", 2), Item("c", "hunt", 3, "a"),
           Item("c", "hunt", 3, "b")});
  EXPECT_EQ(Drain("c", "requests"), 4);
  clock_.Advance(absl::Minutes(2));
  EXPECT_EQ(Drain("c", "scan"), 4);  // requests.rpm (drawn on) holds it back at 4
  // Two other scopes fit max_scopes 2: the refused batch's "a" and "b" are not in use.
  EXPECT_EQ(Drain("c", "hunt", "x"), 3);
  EXPECT_EQ(Drain("c", "hunt", "y"), 3);
}

// A rolling window that an item of a refused batch opened must not stay open: the provider
// never saw that request, so its window opens at the first request it does see. A window kept
// open from the refused batch ends early, and the ledger grants a second window's worth inside
// the provider's one.
TEST_F(AcquireAllAttackTest, ARefusedBatchDoesNotOpenARollingWindow) {
  Start(OneCredential("c", {Feature("roll", {Rolling("r", 2, absl::Seconds(10))}), Blocker()}));
  FillBlocker();
  Refused({Item("c", "roll")});
  clock_.Advance(absl::Seconds(5));
  // The provider's window opens here, with these two, and lasts until +15 s.
  EXPECT_EQ(Drain("c", "roll"), 2);
  clock_.Advance(absl::Seconds(5));  // +10 s: still inside the provider's window
  EXPECT_EQ(Drain("c", "roll"), 0) << "a window opened by the refused batch ended at +10 s";
  clock_.Advance(absl::Seconds(5));
  EXPECT_EQ(Drain("c", "roll"), 2);
}

}  // namespace
}  // namespace quotad
