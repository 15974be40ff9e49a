// Attacks on Ledger::AcquireAll (the all-or-nothing batch) and Credential::UndoGrant: each test
// says what it tries to make the batch do (grant past a limit, grant half, leave a refused
// batch's units, slots, scopes or journal rows behind, pass or starve a waiter, deadlock), and
// fails if it succeeds. Provider windows are modelled by hand where the ledger's own view would
// hide the harm (a rolling window opens at the first request the provider sees, and a refused
// batch sends none).

#include <atomic>
#include <cstdio>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
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


// The rolling fix above closes a window the refused batch opened only when nothing is left in
// it. When the closed window's guard carried units (a charge in its last `guard` may have opened
// the provider's next window, so they count in ours while that one can last), the refund leaves
// them and the window stays open from the batch's instant: it ends before the provider's window
// opened by the next real request, and the ledger grants a second window's worth inside it.
// DISABLED: the fix belongs in Counter (limits.cc): an exact undo of a rolling charge that
// opened a window must restore its bounds and carry (Charge resets carry_ and moves start/end;
// Refund gives back only used units; Clear would drop the carried units, an over-grant too).
TEST_F(AcquireAllAttackTest, DISABLED_ARefusedBatchReopeningACarriedRollingWindowEndsItEarly) {
  LimitSpec roll = Rolling("r", 4, absl::Seconds(10));
  roll.guard = absl::Seconds(2);  // the window lasts 12 s; its last 2 s carry
  Start(OneCredential("c", {Feature("roll", {roll}), Blocker()}));
  FillBlocker();
  ASSERT_EQ(Drain("c", "roll", "", 1, 1), 1);  // +0: the window opens, until +12 s
  clock_.Advance(absl::Milliseconds(10500));
  ASSERT_EQ(Drain("c", "roll", "", 1, 1), 1);  // +10.5 s, in the guard: opens the provider's next
  clock_.Advance(absl::Milliseconds(2500));    // +13 s: ours closed, the carried unit counts
  Refused({Item("c", "roll")});
  clock_.Advance(absl::Seconds(8));  // +21 s: the provider's window from +10.5 s has ended
  const int first = Drain("c", "roll");  // the provider opens its next window here, until +31 s
  clock_.Advance(absl::Seconds(4));      // +25 s
  const int second = Drain("c", "roll");
  EXPECT_LE(first + second, 4) << first << " at +21 s, " << second << " at +25 s";
}

// The same with no batch: the carried unit counts in the window the next real request opens.
TEST_F(AcquireAllAttackTest, ACarriedRollingWindowWithoutABatchIsExact) {
  LimitSpec roll = Rolling("r", 4, absl::Seconds(10));
  roll.guard = absl::Seconds(2);
  Start(OneCredential("c", {Feature("roll", {roll}), Blocker()}));
  ASSERT_EQ(Drain("c", "roll", "", 1, 1), 1);
  clock_.Advance(absl::Milliseconds(10500));
  ASSERT_EQ(Drain("c", "roll", "", 1, 1), 1);
  clock_.Advance(absl::Seconds(10) + absl::Milliseconds(500));  // +21 s
  const int first = Drain("c", "roll");
  clock_.Advance(absl::Seconds(4));
  const int second = Drain("c", "roll");
  EXPECT_LE(first + second, 4) << first << " at +21 s, " << second << " at +25 s";
}

// A Reset at the batch's very instant: the batch's charges come after it, so its undo gives
// them back whole (UndoGrant does not look at the reset time, which only guards older leases).
TEST_F(AcquireAllAttackTest, AResetAtTheSameInstantIsUndoneWhole) {
  Start(OneCredential("c", {Feature("day", {Calendar("d", 5, CalendarUnit::kDay)}),
                            Feature("roll", {Rolling("r", 5, absl::Minutes(1))}), Blocker()}));
  ASSERT_EQ(Drain("c", "day"), 5);
  ASSERT_OK(ledger_->Reset("c"));
  FillBlocker();
  Refused({Item("c", "day", 5), Item("c", "roll", 5)});
  EXPECT_EQ(Drain("c", "day"), 5);
  EXPECT_EQ(Drain("c", "roll"), 5);
}

// The same across a restart: the rolling item's high-water mark (a reservation for the window
// it opened) is written ahead and stays in the journal when the batch is refused. Restored, it
// is a window that began at the refused batch, which the provider never saw: if it ends early,
// the ledger grants a second window's worth inside the provider's one.
TEST_F(AcquireAllAttackTest, ARefusedRollingItemOpensNoWindowAcrossARestart) {
  Start(OneCredential("c", {Feature("roll", {Rolling("r", 100, absl::Seconds(10))}), Blocker()}));
  FillBlocker();
  Refused({Item("c", "roll")});
  clock_.Advance(absl::Seconds(1));
  Restart();
  clock_.Advance(absl::Seconds(4));
  // The provider's window opens here (+5 s) and lasts until +15 s.
  const int first = Drain("c", "roll", "", 1, 200);
  clock_.Advance(absl::Seconds(5));  // +10 s
  const int second = Drain("c", "roll", "", 1, 200);
  EXPECT_LE(first + second, 100) << first << " at +5 s, " << second << " at +10 s";
}

// A hot reload that raised a calendar limit keeps the old counter (retired) alongside until its
// window drains, and charges both. Undo frees a retired counter's slots but cannot refund its
// window (Acquire keeps no refund token for it): the refused batch's units stay there until the
// old window ends. That costs grants (an under-grant, bounded by the old window); it must never
// over-grant, and the full new capacity is there once the old window has drained.
TEST_F(AcquireAllAttackTest, RetiredCountersUndoneNeverOverGrantAndDrain) {
  auto policy = [](int64_t cap) {
    return OneCredential("c", {Feature("day", {Calendar("d", cap, CalendarUnit::kDay)}),
                               Feature("jobs", {Concurrency("j", cap)}), Blocker()});
  };
  Start(policy(5));
  FillBlocker();
  ASSERT_EQ(Drain("c", "day", "", 1, 1), 1);
  ASSERT_OK(ledger_->Reload(policy(8)));  // raised: the old day counter is retired, holding 1
  Refused({Item("c", "day", 3), Item("c", "jobs", 3)});
  const int now_left = Drain("c", "day");
  EXPECT_LE(1 + now_left, 5) << "the old window over its capacity";
  EXPECT_EQ(Drain("c", "jobs"), 8);  // slots are freed exactly
  clock_.Advance(absl::Hours(12) + absl::Seconds(1));  // the next UTC day
  EXPECT_EQ(Drain("c", "day"), 8);
  std::printf("retired undo cost: %d of 4 grants left in the old window after a refused batch\n",
              now_left);
}

// An adoption of the upstream's count at the very instant of the batch (Report just before it,
// same FakeClock instant): calendar refunds of charges made at or before the adoption are
// refused, so the undone item's units stay counted (an under-grant until the window ends; the
// charge was never sent, but the counter cannot tell). It must not over-grant.
TEST_F(AcquireAllAttackTest, AnAdoptionAtTheSameInstantNeverOverGrants) {
  Start(OneCredential("c", {Feature("day", {Calendar("d", 10, CalendarUnit::kDay)}), Blocker()}));
  FillBlocker();
  UpstreamAnswer a;
  a.credential = "c";
  a.feature = "day";
  a.http_status = 200;
  a.headers = {{"X-RateLimit-Limit", "10"}, {"X-RateLimit-Remaining", "7"}};
  ASSERT_OK(ledger_->Report(a));
  Refused({Item("c", "day", 2)});
  const int left = Drain("c", "day");
  EXPECT_LE(left, 7);
  std::printf("same-instant adoption: %d of 7 left after a refused batch\n", left);
}

// A throttle cools a feature down (Report 429 with Retry-After): a batch with an item of it is
// refused with the cooldown's end as every item's retry_at, and the other items are given back.
TEST_F(AcquireAllAttackTest, ACooledDownItemRefusesTheBatchUntilTheCooldownEnds) {
  Start(OneCredential("c", {Feature("f", {Sliding("s", 3, absl::Minutes(1))}),
                            Feature("g", {Calendar("d", 3, CalendarUnit::kDay)}), Blocker()}));
  UpstreamAnswer a;
  a.credential = "c";
  a.feature = "f";
  a.http_status = 429;
  a.headers = {{"Retry-After", "12"}};
  ASSERT_OK(ledger_->Report(a));
  std::vector<absl::StatusOr<Decision>> out =
      ledger_->AcquireAll({Item("c", "g", 3), Item("c", "f", 1)});
  EXPECT_EQ(Granted(out), 0);
  ASSERT_OK(out[1]);
  EXPECT_EQ(out[1]->limited_by, "f.cooldown");
  EXPECT_EQ(out[0]->retry_at, clock_.Now() + absl::Seconds(12));
  clock_.Advance(absl::Seconds(12));
  out = ledger_->AcquireAll({Item("c", "g", 3), Item("c", "f", 1)});
  EXPECT_EQ(Granted(out), 2);  // g's 3 units were all given back
  EXPECT_EQ(Drain("c", "g"), 0);
}

// A calendar limit with a guard counts a charge made within the guard in the next window too.
// A refused batch inside the guard must not over-grant either window; what it costs the next
// one (its units counted there, as a refund of a guard charge leaves them) is printed.
TEST_F(AcquireAllAttackTest, ARefusedBatchInACalendarGuardNeverOverGrants) {
  LimitSpec hour = Calendar("h", 4, CalendarUnit::kHour);
  hour.guard = absl::Seconds(10);
  Start(OneCredential("c", {Feature("f", {hour}), Blocker()}));
  FillBlocker();
  clock_.Advance(absl::Minutes(59) + absl::Seconds(55));  // 12:59:55, in the guard
  Refused({Item("c", "f", 2)});
  clock_.Advance(absl::Seconds(5));  // 13:00:00, the next hour
  const int next = Drain("c", "f");
  EXPECT_LE(next, 4);
  clock_.Advance(absl::Hours(1));
  EXPECT_EQ(Drain("c", "f"), 4);  // the hour after: whole again
  std::printf("calendar guard: %d of 4 granted in the next hour after a refused batch of 2 "
              "in the guard\n", next);
}

// A journal that fails its n-th durable write (Reserve or PutLease) from now on, and only that
// one: a store failing in the middle of a batch.
class NthWriteFails : public MemoryJournal {
 public:
  void FailWrite(int n) { fail_at_ = writes_ + n; }
  absl::Status Reserve(const std::vector<Reservation>& r) override {
    if (++writes_ == fail_at_) return absl::InternalError("disk full");
    return MemoryJournal::Reserve(r);
  }
  absl::Status PutLease(const JournalLease& lease) override {
    if (!lease.holds_slots) return MemoryJournal::PutLease(lease);
    if (++writes_ == fail_at_) return absl::InternalError("disk full");
    return MemoryJournal::PutLease(lease);
  }

 private:
  std::atomic<int> writes_{0};
  std::atomic<int> fail_at_{-1};
};

// The journal fails in the middle of a batch: the first item's slot row was written, then the
// batch's reservations (written in one Reserve once every item is granted) fail. The slot row is
// deleted, the new scope is gone, the error names the store and is the first item that needed a
// reservation's, and the batch is refused; a restart from the journal holds nothing for it.
TEST_F(AcquireAllAttackTest, AJournalFailingMidBatchLeavesNothingAcrossARestart) {
  NthWriteFails journal;
  FeatureSpec hunt = Feature("hunt", {Calendar("per_day", 3, CalendarUnit::kDay)});
  hunt.limits[0].scoped = true;
  hunt.max_scopes = 1;
  Start(OneCredential("c", {Feature("jobs", {Concurrency("j", 2)}),
                            Feature("day", {Calendar("d", 5, CalendarUnit::kDay)}), hunt,
                            Blocker()}),
        &journal);
  FillBlocker();
  journal.FailWrite(2);  // jobs' lease row goes through; the batch's Reserve fails
  std::vector<absl::StatusOr<Decision>> out = ledger_->AcquireAll(
      {Item("c", "jobs", 2), Item("c", "hunt", 3, "new"), Item("c", "day", 5)});
  EXPECT_EQ(out[1].status().code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(out[1].status().message().find("disk full"), std::string::npos);
  for (int i : {0, 2}) {
    ASSERT_OK(out[i]);
    EXPECT_FALSE(out[i]->granted);
    EXPECT_EQ(out[i]->limited_by, "all_or_nothing:items[1]");
    EXPECT_EQ(out[i]->retry_at, absl::InfiniteFuture());
  }
  EXPECT_EQ(ledger_->Leases("c").size(), 1u);  // the blocker's
  Restart();
  EXPECT_EQ(Drain("c", "hunt", "other"), 3);  // "new" left no scope (max_scopes 1)
  EXPECT_EQ(Drain("c", "day"), 5);
  EXPECT_EQ(Drain("c", "jobs"), 2);
  for (const LeaseInfo& l : ledger_->Leases("c")) {
    if (l.feature == "jobs") ASSERT_OK(ledger_->Release(l.id, std::nullopt));
  }
  // A failure at the first item's slot row is the batch's error, with nothing charged.
  journal.FailWrite(1);
  out = ledger_->AcquireAll({Item("c", "jobs", 1), Item("c", "block", 1)});
  EXPECT_EQ(out[0].status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(out[1]->limited_by, "all_or_nothing:items[0]");
  EXPECT_EQ(Drain("c", "jobs"), 2);
}

// A real SqliteJournal file: a refused batch with a slot item and a rolling item, then a restart
// from the file: every slot is free, and the rolling window opens with the first real request.
TEST_F(AcquireAllAttackTest, ARefusedBatchOverSqliteLeavesNoSlotAfterRestart) {
  TempDir dir("acquire-all");
  auto opened = SqliteJournal::Open(dir.File("state.db"));
  ASSERT_OK(opened);
  std::unique_ptr<SqliteJournal> sqlite = std::move(*opened);
  Start(OneCredential("c", {Feature("jobs", {Concurrency("j", 3)}),
                            Feature("roll", {Rolling("r", 4, absl::Seconds(10))}), Blocker()}),
        sqlite.get());
  FillBlocker();
  Refused({Item("c", "jobs", 3), Item("c", "roll", 2)});
  ledger_.reset();
  sqlite.reset();
  opened = SqliteJournal::Open(dir.File("state.db"));
  ASSERT_OK(opened);
  sqlite = std::move(*opened);
  Start(policy_, sqlite.get());
  EXPECT_EQ(Drain("c", "jobs"), 3);
  clock_.Advance(absl::Seconds(5));
  const int first = Drain("c", "roll");
  clock_.Advance(absl::Seconds(5));
  const int second = Drain("c", "roll");
  EXPECT_LE(first + second, 4) << first << " at +5 s, " << second << " at +10 s";
  ledger_.reset();
}

// Concurrency slots whose leases expire at the batch's very instant are free for it; a refused
// batch at that instant frees its own slot by its own key (not another lease's), and a granted
// one then holds them all.
TEST_F(AcquireAllAttackTest, SlotsExpiringAtTheBatchInstant) {
  Start(OneCredential("c", {Feature("jobs", {Concurrency("j", 3)}), Blocker()}));
  FillBlocker();
  AcquireRequest one = Item("c", "jobs", 1);
  one.lease_ttl = absl::Seconds(30);
  ASSERT_TRUE(ledger_->Acquire(one)->granted);
  one.lease_ttl = absl::Seconds(60);
  ASSERT_TRUE(ledger_->Acquire(one)->granted);
  clock_.Advance(absl::Seconds(30));  // the first expires now
  Refused({Item("c", "jobs", 2)});
  std::vector<absl::StatusOr<Decision>> out = ledger_->AcquireAll({Item("c", "jobs", 1), Item("c", "jobs", 1)});
  EXPECT_EQ(Granted(out), 2);
  EXPECT_EQ(Drain("c", "jobs"), 0);
  clock_.Advance(absl::Seconds(30));  // the 60 s lease expires: one slot
  EXPECT_EQ(Drain("c", "jobs"), 1);
}

// A waiter whose time comes at the batch's instant is served inside the batch (ServeWaiters runs
// before the first item of its credential), before the batch's own charges; the batch then
// refused does not take back the waiter's grant, and its undo frees only its own units.
TEST_F(AcquireAllAttackTest, AWaiterServedInsideARefusedBatchKeepsItsGrant) {
  Start(Policy{{Credential("c", "", {Feature("slide", {Sliding("s", 2, absl::Seconds(10))}),
                                     Feature("day", {Calendar("d", 4, CalendarUnit::kDay)}),
                                     Blocker()}),
                Credential("b", "", {Blocker()})}});
  FillBlocker("c");
  FillBlocker("b");
  ASSERT_EQ(Drain("c", "slide"), 2);
  std::atomic<int> granted{0}, answered{0};
  WaitTicket ticket = ledger_->AcquireOrWait(
      Item("c", "slide", 1), absl::Minutes(1), 0, [&](absl::StatusOr<Decision> d) {
        answered++;
        if (d.ok() && d->granted) granted++;
      });
  ASSERT_NE(ticket.credential, nullptr);
  clock_.Advance(absl::Seconds(10));  // a unit frees; nobody pumped
  std::vector<absl::StatusOr<Decision>> out = ledger_->AcquireAll(
      {Item("c", "day", 4), Item("c", "slide", 1), Item("b", "block")});
  EXPECT_EQ(Granted(out), 0);
  EXPECT_EQ(answered.load(), 1);
  EXPECT_EQ(granted.load(), 1);  // the waiter, not the batch, got the freed unit
  EXPECT_EQ(Drain("c", "slide"), 1);  // the other unit frees at the same instant: one left
  EXPECT_EQ(Drain("c", "day"), 4);
  EXPECT_EQ(ledger_->waiting(), 0);
}

// The same credential many times, 1000 items: all granted when they fit exactly, and one over
// refuses all 1001 with everything given back.
TEST_F(AcquireAllAttackTest, AThousandItemsOnOneCredential) {
  Start(Policy{{Credential("c", "", {Feature("day", {Calendar("d", 1000, CalendarUnit::kDay)}),
                                     Feature("bucket", {Bucket("tb", 600, absl::Minutes(1), 600)}),
                                     Feature("jobs", {Concurrency("j", 1000)}), Blocker()}),
                Credential("b", "", {Feature("day", {Calendar("d", 1000, CalendarUnit::kDay)})})}});
  FillBlocker();
  std::vector<AcquireRequest> items;
  for (int i = 0; i < 1000; ++i) {
    items.push_back(Item(i % 2 ? "c" : "b", i % 3 == 0 ? "jobs" : "day"));
    if (i % 2 == 0) items.back().feature = "day";
    if (i % 5 == 0 && i % 2) items.back().feature = "bucket";
  }
  items.push_back(Item("c", "day", 1000));  // over: 1000 more on c's day
  std::vector<absl::StatusOr<Decision>> out = ledger_->AcquireAll(items);
  EXPECT_EQ(Granted(out), 0);
  ASSERT_OK(out.back());
  EXPECT_EQ(out.back()->limited_by, "day.d");
  EXPECT_EQ(Drain("c", "day", "", 1, 2000), 1000);
  EXPECT_EQ(Drain("b", "day", "", 1, 2000), 1000);
  EXPECT_EQ(Drain("c", "jobs", "", 1, 2000), 1000);
  EXPECT_EQ(Drain("c", "bucket", "", 1, 2000), 600);
  // Now exactly what is left, as one batch: 1000 slots freed by a Reset-free path (releases).
  for (const LeaseInfo& l : ledger_->Leases("c")) {
    if (l.feature == "jobs") ASSERT_OK(ledger_->Release(l.id, std::nullopt));
  }
  items.assign(1000, Item("c", "jobs"));
  out = ledger_->AcquireAll(items);
  EXPECT_EQ(Granted(out), 1000);
  EXPECT_EQ(Drain("c", "jobs"), 0);
}

// Batches over three credentials in rotating orders race hot reloads (a raised and lowered
// capacity, so retired counters come and go), resets, sweeps, renewals and releases on other
// threads: no deadlock (the test ends), never half a batch, no error but the expected ones, and
// once everything is released every slot is back.
TEST_F(AcquireAllAttackTest, BatchesRaceReloadResetSweepRenewAndRelease) {
  auto policy = [](int64_t cap) {
    Policy p;
    for (const char* name : {"a", "b", "c"}) {
      p.credentials.push_back(Credential(
          name, "",
          {Feature("jobs", {Concurrency("j", cap)}),
           Feature("day", {Calendar("d", 20 * cap, CalendarUnit::kDay)}),
           Feature("roll", {Rolling("r", 10 * cap, absl::Seconds(30))}),
           Feature("bucket", {Bucket("tb", 60, absl::Minutes(1), cap)})}));
    }
    return p;
  };
  Start(policy(3));
  constexpr int kRounds = 4000;
  std::atomic<bool> stop{false};
  std::atomic<int> half{0}, errors{0}, batches_granted{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 3; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(100 + t);
      const char* names[] = {"a", "b", "c"};
      const char* features[] = {"jobs", "day", "roll", "bucket"};
      std::vector<LeaseId> held;
      for (int r = 0; r < kRounds; ++r) {
        const int n = 2 + static_cast<int>(rng() % 3);
        std::vector<AcquireRequest> items;
        for (int i = 0; i < n; ++i) {
          items.push_back(Item(names[(t + i + r) % 3], features[rng() % 4]));
        }
        std::vector<absl::StatusOr<Decision>> out = ledger_->AcquireAll(items);
        const int g = Granted(out);
        if (g != 0 && g != n) half++;
        for (const auto& d : out) {
          if (!d.ok() && d.status().code() != absl::StatusCode::kNotFound) errors++;
        }
        if (g == n) {
          batches_granted++;
          for (const auto& d : out) held.push_back(d->lease_id);
        }
        while (held.size() > 4 || (!held.empty() && rng() % 2 == 0)) {
          if (rng() % 3 == 0) ledger_->Renew(held.back(), absl::Minutes(1)).IgnoreError();
          ledger_->Release(held.back(), std::nullopt).IgnoreError();  // may have been swept
          held.pop_back();
        }
      }
      for (const LeaseId& id : held) ledger_->Release(id, std::nullopt).IgnoreError();
    });
  }
  std::thread ops([&] {
    std::mt19937 rng(7);
    int64_t cap = 3;
    while (!stop.load()) {
      switch (rng() % 4) {
        case 0:
          cap = cap == 3 ? 4 : 3;
          if (!ledger_->Reload(policy(cap)).ok()) errors++;
          break;
        case 1:
          if (!ledger_->Reset(rng() % 2 ? "a" : "b").ok()) errors++;
          break;
        case 2:
          ledger_->Sweep();
          break;
        case 3:
          ledger_->Queues();
          break;
      }
      std::this_thread::yield();
    }
  });
  for (std::thread& t : threads) t.join();
  stop = true;
  ops.join();
  EXPECT_EQ(half.load(), 0);
  EXPECT_EQ(errors.load(), 0);
  EXPECT_GT(batches_granted.load(), 0);
  ASSERT_OK(ledger_->Reload(policy(4)));
  for (const char* name : {"a", "b", "c"}) EXPECT_EQ(Drain(name, "jobs"), 4) << name;
}

}  // namespace
}  // namespace quotad
