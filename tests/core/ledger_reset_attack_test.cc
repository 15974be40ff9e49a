// Attacks on Ledger::Reset and the lease paths around it: Reset then a restart from a real
// SQLite journal, Reset racing grants and releases, refunds of leases granted before a Reset or
// a reload, Renew's rewrite of a refund-only lease as one that holds slots followed by a crash
// (kill -9: the journal's queued writes are lost) or a clean restart, and Report after a Reset.
// Each test says what it tries. Two found defects, now fixed: a lease granted refund-only whose
// limit became a concurrency one lost its slot (Renew after a restart wrote nowhere; a reload's
// rehomed slot was not written ahead). Such a lease is now journaled as holding slots as soon as
// it holds one (ledger_internal::JournalWithSlots).

#include <atomic>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "service/core/clock.h"
#include "service/core/journal.h"
#include "service/core/ledger.h"
#include "service/store/sqlite_journal.h"
#include "tests/support/policy_builders.h"
#include "tests/support/status_matchers.h"
#include "tests/support/temp_dir.h"

namespace quotad {
namespace {

using namespace ::quotad::testing;  // NOLINT: the policy builders

// Models kill -9 over a real journal, as tests/sim/never_over_sim.cc does: what SqliteJournal
// queues (refund-only leases and every release) is held here and lost by a crash; what it writes
// synchronously (reservations, leases that hold slots, renewals, cooldowns, estimates) passes
// straight through. Not thread-safe; single-threaded tests only.
class KillNineJournal : public Journal {
 public:
  explicit KillNineJournal(Journal* inner) : inner_(inner) {}
  absl::StatusOr<JournalState> Load() override { return inner_->Load(); }
  absl::Status Reserve(const std::vector<Reservation>& r) override { return inner_->Reserve(r); }
  absl::Status PutLease(const JournalLease& lease) override {
    if (lease.holds_slots) return inner_->PutLease(lease);
    queued_.push_back({false, lease, lease.id});
    return absl::OkStatus();
  }
  absl::Status RenewLease(const std::string& id, int64_t expiry_ns) override {
    return inner_->RenewLease(id, expiry_ns);
  }
  void DeleteLease(const std::string& id) override { queued_.push_back({true, {}, id}); }
  absl::Status PutCooldown(const JournalCooldown& c) override { return inner_->PutCooldown(c); }
  absl::Status PutOutside(const JournalOutside& o) override { return inner_->PutOutside(o); }
  absl::Status Compact(int64_t now_ns) override { return inner_->Compact(now_ns); }

  // The queue reaches the inner journal (a writer thread's drain).
  void Drain() {
    for (Deferred& d : queued_) {
      if (d.is_delete) {
        inner_->DeleteLease(d.id);
      } else {
        inner_->PutLease(d.lease).IgnoreError();
      }
    }
    queued_.clear();
  }
  // kill -9: the queue is lost.
  void Drop() { queued_.clear(); }

 private:
  struct Deferred {
    bool is_delete = false;
    JournalLease lease;
    std::string id;
  };
  Journal* const inner_;
  std::deque<Deferred> queued_;
};

// One quotad process over a state file that outlives it.
class Process {
 public:
  Process(const std::string& path, Clock* clock) : path_(path), clock_(clock) {}
  ~Process() { Stop(); }

  // Starts with `policy`, restoring from the state file.
  Ledger& Start(const Policy& policy, bool kill_nine_journal) {
    Stop();
    absl::StatusOr<std::unique_ptr<SqliteJournal>> sql = SqliteJournal::Open(path_);
    EXPECT_OK(sql);
    sqlite_ = *std::move(sql);
    Journal* journal = sqlite_.get();
    if (kill_nine_journal) {
      kill_ = std::make_unique<KillNineJournal>(sqlite_.get());
      journal = kill_.get();
    }
    LedgerOptions options;
    options.journal = journal;
    options.jitter_seed = 7;
    absl::StatusOr<std::unique_ptr<Ledger>> ledger = Ledger::Create(policy, clock_, options);
    EXPECT_OK(ledger);
    ledger_ = *std::move(ledger);
    EXPECT_OK(ledger_->Restore());
    return *ledger_;
  }
  // A clean stop: everything queued is written (SqliteJournal's destructor writes its queue).
  void Stop() {
    if (kill_ != nullptr) kill_->Drain();
    ledger_.reset();
    kill_.reset();
    sqlite_.reset();
  }
  // kill -9: what the journal had queued is lost.
  void Crash() {
    if (kill_ != nullptr) kill_->Drop();
    ledger_.reset();
    kill_.reset();
    sqlite_.reset();
  }
  // The journal's queue reaches the file (what a writer thread does at its own pace).
  void Drain() {
    if (kill_ != nullptr) kill_->Drain();
    ASSERT_OK(sqlite_->Flush());
  }
  Ledger& ledger() { return *ledger_; }

 private:
  const std::string path_;
  Clock* const clock_;
  std::unique_ptr<SqliteJournal> sqlite_;
  std::unique_ptr<KillNineJournal> kill_;
  std::unique_ptr<Ledger> ledger_;
};

class LedgerResetAttackTest : public ::testing::Test {
 protected:
  static Policy Windows(LimitSpec limit) {
    return OneCredential("key", {Feature("f", {std::move(limit)})});
  }
  static Policy WithSlots(int64_t slots) {
    return OneCredential("key", {Feature("f", {Sliding("per_hour", 1000, absl::Hours(1)),
                                                Concurrency("slots", slots)})});
  }
  // "f.slots" as a window limit: a reload to WithSlots rebuilds it as a concurrency limit, in
  // which every live lease holds its slots.
  static Policy WithoutSlots() {
    return OneCredential("key", {Feature("f", {Sliding("per_hour", 1000, absl::Hours(1)),
                                                Sliding("slots", 1000, absl::Hours(1))})});
  }
  static std::optional<Decision> Grant(Ledger& ledger, int64_t cost = 1,
                                       absl::Duration ttl = absl::ZeroDuration()) {
    absl::StatusOr<Decision> d =
        ledger.Acquire({.credential = "key", .feature = "f", .cost = cost, .lease_ttl = ttl});
    EXPECT_OK(d);
    if (!d.ok() || !d->granted) return std::nullopt;
    return *d;
  }
  // How many grants of cost 1 in a row (at most `bound`).
  static int GrantsInARow(Ledger& ledger, int bound) {
    int n = 0;
    while (n < bound && Grant(ledger).has_value()) ++n;
    return n;
  }
  static int64_t Used(Ledger& ledger, absl::string_view limit) {
    absl::StatusOr<std::vector<LimitStatus>> usage = ledger.Usage("key");
    EXPECT_OK(usage);
    if (!usage.ok()) return -1;
    for (const LimitStatus& s : *usage) {
      if (s.name == limit && !s.cooldown) return s.used;
    }
    return -1;
  }

  TempDir dir_{"reset-attack"};
  FakeClock clock_{Utc(2026, 6, 21, 10)};
};

// ---- Reset, then a restart from SQLite ----

// Grants the capacity, Reset, grants it again, restarts (clean and kill -9): the window in force
// has spent its capacity since the Reset, so the restarted ledger grants nothing more.
TEST_F(LedgerResetAttackTest, ResetThenRestartDoesNotGrantTwiceTheCapacity) {
  for (LimitSpec limit : {Sliding("w", 20, absl::Minutes(1)), Rolling("w", 20, absl::Minutes(1)),
                          Calendar("w", 20, CalendarUnit::kHour),
                          Bucket("w", 20, absl::Minutes(1), 20)}) {
    for (bool crash : {false, true}) {
      SCOPED_TRACE(::testing::Message() << "kind " << static_cast<int>(limit.kind) << " crash "
                                      << crash);
      TempDir dir("reset-restart");
      Process p(dir.File("state.db"), &clock_);
      Ledger& l1 = p.Start(Windows(limit), true);
      ASSERT_EQ(GrantsInARow(l1, 100), 20);
      clock_.Advance(absl::Seconds(1));
      ASSERT_OK(l1.Reset("key"));
      ASSERT_EQ(GrantsInARow(l1, 100), 20);
      clock_.Advance(absl::Seconds(1));
      if (crash) {
        p.Crash();
      } else {
        p.Stop();
      }
      Ledger& l2 = p.Start(Windows(limit), true);
      EXPECT_EQ(GrantsInARow(l2, 100), 0);
      clock_.Advance(absl::Hours(2));  // every window has passed
    }
  }
}

// A rolling window closed by Reset and opened again: a restart keeps the post-Reset window and
// its count, and a Reset after the restart still starts over.
TEST_F(LedgerResetAttackTest, RollingWindowReopenedAfterResetSurvivesTwoRestarts) {
  Process p(dir_.File("state.db"), &clock_);
  const Policy policy = Windows(Rolling("w", 10, absl::Minutes(1)));
  Ledger& l1 = p.Start(policy, true);
  ASSERT_EQ(GrantsInARow(l1, 100), 10);
  clock_.Advance(absl::Seconds(50));
  ASSERT_OK(l1.Reset("key"));
  ASSERT_EQ(GrantsInARow(l1, 4), 4);  // opens a window ending 50 s + 1 min
  clock_.Advance(absl::Seconds(20));  // past the first window's end, in the second
  EXPECT_EQ(GrantsInARow(l1, 100), 6);
  p.Crash();
  Ledger& l2 = p.Start(policy, true);
  EXPECT_EQ(GrantsInARow(l2, 100), 0);
  ASSERT_OK(l2.Reset("key"));
  EXPECT_EQ(GrantsInARow(l2, 100), 10);
  p.Stop();
  Ledger& l3 = p.Start(policy, true);
  EXPECT_EQ(GrantsInARow(l3, 100), 0);
}

// ---- refunds across Reset, reloads and restarts ----

// A lease granted before a Reset refunds nothing after it, even when its release comes after a
// restart (the restarted ledger no longer knows when the Reset was).
TEST_F(LedgerResetAttackTest, LeaseFromBeforeResetRefundsNothingAlsoAfterARestart) {
  for (bool restart : {false, true}) {
    SCOPED_TRACE(restart ? "restart" : "same process");
    TempDir dir("refund");
    Process p(dir.File("state.db"), &clock_);
    const Policy policy = Windows(Sliding("w", 10, absl::Minutes(10)));
    Ledger* l = &p.Start(policy, true);
    std::optional<Decision> old = Grant(*l, 5, absl::Minutes(5));
    ASSERT_TRUE(old.has_value());
    ASSERT_EQ(GrantsInARow(*l, 100), 5);
    clock_.Advance(absl::Seconds(1));
    ASSERT_OK(l->Reset("key"));
    ASSERT_EQ(GrantsInARow(*l, 100), 10);  // the capacity again, since the Reset
    if (restart) {
      p.Drain();  // the old lease's record is in the file
      p.Stop();
      l = &p.Start(policy, true);
    }
    absl::StatusOr<ReleaseResult> r = l->Release(old->lease_id, 0);
    ASSERT_OK(r);
    EXPECT_EQ(r->refunded, 0);
    EXPECT_EQ(GrantsInARow(*l, 100), 0);
    clock_.Advance(absl::Hours(1));
  }
}

// A lease granted after a Reset refunds as usual; one granted at the very nanosecond of the
// Reset (before it, under the same clock reading) refunds nothing.
TEST_F(LedgerResetAttackTest, RefundAtTheResetInstantGivesNothingBackLaterOnesDo) {
  Process p(dir_.File("state.db"), &clock_);
  Ledger& l = p.Start(Windows(Sliding("w", 10, absl::Minutes(10))), false);
  std::optional<Decision> same_ns = Grant(l, 4);
  ASSERT_TRUE(same_ns.has_value());
  ASSERT_OK(l.Reset("key"));  // same clock reading as the grant
  std::optional<Decision> after = Grant(l, 4);
  ASSERT_TRUE(after.has_value());
  absl::StatusOr<ReleaseResult> r1 = l.Release(same_ns->lease_id, 0);
  ASSERT_OK(r1);
  EXPECT_EQ(r1->refunded, 0);
  EXPECT_EQ(Used(l, "f.w"), 4);
  // Granted at the same ns as the Reset but after it: its refund is lost too (under-grants).
  absl::StatusOr<ReleaseResult> r2 = l.Release(after->lease_id, 0);
  ASSERT_OK(r2);
  EXPECT_LE(Used(l, "f.w"), 4);
  EXPECT_GE(Used(l, "f.w"), 0);
  clock_.Advance(absl::Milliseconds(1));
  std::optional<Decision> later = Grant(l, 3);
  ASSERT_TRUE(later.has_value());
  const int64_t before = Used(l, "f.w");
  absl::StatusOr<ReleaseResult> r3 = l.Release(later->lease_id, 1);
  ASSERT_OK(r3);
  EXPECT_EQ(r3->refunded, 2);
  EXPECT_EQ(Used(l, "f.w"), before - 2);
}

// Reset, then a reload that rebuilds the window (a new kind), then the release of a lease from
// before both: nothing is refunded into the rebuilt counter.
TEST_F(LedgerResetAttackTest, LeaseAcrossResetAndRebuildingReloadRefundsNothing) {
  Process p(dir_.File("state.db"), &clock_);
  Ledger& l = p.Start(Windows(Sliding("w", 10, absl::Minutes(10))), false);
  std::optional<Decision> old = Grant(l, 6, absl::Minutes(30));
  ASSERT_TRUE(old.has_value());
  clock_.Advance(absl::Seconds(1));
  ASSERT_OK(l.Reset("key"));
  clock_.Advance(absl::Seconds(1));
  std::optional<Decision> mid = Grant(l, 6, absl::Minutes(30));  // after the Reset
  ASSERT_TRUE(mid.has_value());
  ASSERT_OK(l.Reload(Windows(Rolling("w", 10, absl::Minutes(10)))));
  ASSERT_OK(l.Reload(Windows(Sliding("w", 10, absl::Minutes(10)))));  // and back
  for (const Decision* d : {&*old, &*mid}) {
    absl::StatusOr<ReleaseResult> r = l.Release(d->lease_id, 0);
    ASSERT_OK(r);
    EXPECT_EQ(r->refunded, 0);
  }
  EXPECT_EQ(GrantsInARow(l, 100), 4);
}

// ---- Reset racing grants and releases ----

// Threads acquire and release (refunding everything) while another resets over and over: no
// more leases than slots are ever held at once, and no window counter goes below zero or above
// its capacity.
TEST_F(LedgerResetAttackTest, ResetRacingAcquireAndReleaseNeverOverGrantsSlots) {
  constexpr int kSlots = 3;
  Process p(dir_.File("state.db"), &clock_);
  Ledger& l = p.Start(OneCredential("key", {Feature("f", {Sliding("per_hour", 50, absl::Hours(1)),
                                                           Concurrency("slots", kSlots)})}),
                      false);
  std::atomic<int> held{0};
  std::atomic<int> max_held{0};
  std::atomic<bool> stop{false};
  std::atomic<int> errors{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 400; ++i) {
        absl::StatusOr<Decision> d = l.Acquire({.credential = "key", .feature = "f"});
        if (!d.ok()) {
          ++errors;
          continue;
        }
        if (!d->granted) continue;
        const int now_held = ++held;
        int m = max_held.load();
        while (now_held > m && !max_held.compare_exchange_weak(m, now_held)) {
        }
        --held;  // before the release: never counts a freed slot as held
        absl::StatusOr<ReleaseResult> r = l.Release(d->lease_id, (i + t) % 2 == 0 ? 0 : 1);
        if (!r.ok()) ++errors;
      }
    });
  }
  std::thread resetter([&] {
    while (!stop.load()) {
      if (!l.Reset("key").ok()) ++errors;
      const int64_t used = Used(l, "f.per_hour");
      if (used < 0 || used > 50) ++errors;
    }
  });
  for (std::thread& t : threads) t.join();
  stop = true;
  resetter.join();
  EXPECT_EQ(errors.load(), 0);
  EXPECT_LE(max_held.load(), kSlots);
  EXPECT_EQ(Used(l, "f.slots"), 0);
  EXPECT_THAT(l.Leases("key"), ::testing::IsEmpty());
}

// ---- Renew's rewrite of a refund-only lease as holding slots ----

// Granted refund-only, a reload adds a concurrency limit, Renew rewrites the lease with its
// slot; a kill -9 loses the queued release of the refund-only copy. After the restart the
// lease holds its one slot once (not twice, not zero), its release frees it, and a second
// crash (the release queued and lost) leaves the slot held until the lease expires, never
// freed early.
TEST_F(LedgerResetAttackTest, RenewRewriteThenCrashKeepsExactlyOneSlotUntilReleased) {
  Process p(dir_.File("state.db"), &clock_);
  Ledger& l1 = p.Start(WithoutSlots(), true);
  std::optional<Decision> lease = Grant(l1, 1, absl::Minutes(10));
  ASSERT_TRUE(lease.has_value());
  p.Drain();  // the refund-only copy is in the log
  ASSERT_OK(l1.Reload(WithSlots(1)));
  EXPECT_FALSE(Grant(l1).has_value());  // the lease holds the one slot
  clock_.Advance(absl::Minutes(5));
  ASSERT_OK(l1.Renew(lease->lease_id, absl::Minutes(10)).status());  // expiry at 15 min
  p.Crash();  // the release of the log copy is lost; the slot row is written

  Ledger& l2 = p.Start(WithSlots(1), true);
  EXPECT_EQ(Used(l2, "f.slots"), 1);
  EXPECT_EQ(l2.Leases("key").size(), 1u);
  clock_.Advance(absl::Minutes(7));  // past the log copy's expiry, before the row's
  EXPECT_FALSE(Grant(l2).has_value());
  ASSERT_OK(l2.Renew(lease->lease_id, absl::Minutes(10)).status());  // expiry at 22 min
  p.Crash();

  Ledger& l3 = p.Start(WithSlots(1), true);
  EXPECT_EQ(Used(l3, "f.slots"), 1);
  absl::StatusOr<ReleaseResult> r = l3.Release(lease->lease_id, 0);
  ASSERT_OK(r);
  EXPECT_EQ(r->freed, 1);
  p.Crash();  // the release is lost: the lease comes back, held until its expiry

  Ledger& l4 = p.Start(WithSlots(1), true);
  EXPECT_FALSE(Grant(l4).has_value());
  ASSERT_OK(l4.Release(lease->lease_id, 0).status());
  p.Stop();

  Ledger& l5 = p.Start(WithSlots(1), true);
  EXPECT_THAT(l5.Leases("key"), ::testing::IsEmpty());
  EXPECT_TRUE(Grant(l5).has_value());
}

// The rewrite, then a reload that removes the concurrency limit and one that adds it back, then
// Renew again (no second release of the log copy), then a clean restart and a release: nothing
// of the lease outlives it.
TEST_F(LedgerResetAttackTest, RenewRewriteAcrossSlotLimitRemovedAndBackLeavesNothingBehind) {
  Process p(dir_.File("state.db"), &clock_);
  Ledger& l1 = p.Start(WithoutSlots(), true);
  std::optional<Decision> lease = Grant(l1, 1, absl::Minutes(10));
  ASSERT_TRUE(lease.has_value());
  ASSERT_OK(l1.Reload(WithSlots(1)));
  ASSERT_OK(l1.Renew(lease->lease_id, absl::Minutes(10)).status());
  ASSERT_OK(l1.Reload(WithoutSlots()));
  ASSERT_OK(l1.Renew(lease->lease_id, absl::Minutes(10)).status());
  ASSERT_OK(l1.Reload(WithSlots(1)));
  EXPECT_FALSE(Grant(l1).has_value());
  ASSERT_OK(l1.Renew(lease->lease_id, absl::Minutes(10)).status());
  ASSERT_OK(l1.Release(lease->lease_id, 0).status());
  p.Stop();
  Ledger& l2 = p.Start(WithSlots(1), true);
  EXPECT_THAT(l2.Leases("key"), ::testing::IsEmpty());
  EXPECT_TRUE(Grant(l2).has_value());
}

// FOUND BUG. A lease granted refund-only is restored after a restart under a policy whose
// feature now has a concurrency limit: Restore gives it the slot (from its log copy) and records
// it under the version in force, whose feature has_concurrency. Its next Renew therefore takes
// the RenewLease path (an UPDATE of the slot row) instead of the rewrite path, but there is no
// slot row: the renewal is written nowhere. At the next restart the log copy's old expiry has
// passed, the lease is gone and its slot is free while the holder (who renewed successfully) is
// still running: a second holder is granted a concurrency limit of 1. No crash is needed; every
// stop here is clean.
TEST_F(LedgerResetAttackTest,
       RenewOfRefundOnlyLeaseRestoredUnderSlotLimitIsNotDurableAndLosesTheSlot) {
  Process p(dir_.File("state.db"), &clock_);
  Ledger& l1 = p.Start(WithoutSlots(), false);
  std::optional<Decision> lease = Grant(l1, 1, absl::Minutes(10));
  ASSERT_TRUE(lease.has_value());
  p.Stop();  // clean: the refund-only copy is in the log

  Ledger& l2 = p.Start(WithSlots(1), false);  // the config file gained a concurrency limit
  EXPECT_EQ(Used(l2, "f.slots"), 1);          // the restored lease holds the slot
  EXPECT_FALSE(Grant(l2).has_value());
  clock_.Advance(absl::Minutes(8));
  absl::StatusOr<absl::Time> expiry = l2.Renew(lease->lease_id, absl::Minutes(10));
  ASSERT_OK(expiry);  // the holder is told it holds the slot until 18 min
  clock_.Advance(absl::Minutes(4));  // 12 min: past the first expiry, before the renewed one
  EXPECT_FALSE(Grant(l2).has_value());
  p.Stop();  // clean

  Ledger& l3 = p.Start(WithSlots(1), false);
  EXPECT_EQ(l3.Leases("key").size(), 1u) << "the renewed lease was lost by a clean restart";
  EXPECT_EQ(Used(l3, "f.slots"), 1);
  EXPECT_FALSE(Grant(l3).has_value()) << "a second holder got the only slot";
}

// A reload rebuilds "f.slots" as a concurrency limit, so a live refund-only lease holds its slot
// in memory; nothing writes that lease as holding slots until its first Renew. A kill -9 before
// the journal's writer stores the lease's (queued) refund-only copy loses the lease, and with it
// the slot, while the holder runs on. Reported as a narrower finding (the window is the writer's
// delay after the grant; refund-only leases are lossy by design, slots are not).
TEST_F(LedgerResetAttackTest,
       SlotRehomedByReloadIsLostByAKillNineBeforeTheRefundOnlyCopyIsWritten) {
  Process p(dir_.File("state.db"), &clock_);
  Ledger& l1 = p.Start(WithoutSlots(), true);
  std::optional<Decision> lease = Grant(l1, 1, absl::Minutes(10));
  ASSERT_TRUE(lease.has_value());
  ASSERT_OK(l1.Reload(WithSlots(1)));
  EXPECT_FALSE(Grant(l1).has_value());  // the lease holds the one slot
  p.Crash();
  Ledger& l2 = p.Start(WithSlots(1), true);
  EXPECT_FALSE(Grant(l2).has_value()) << "a second holder got the only slot";
}

// The same restored lease, renewed and then released, then a kill -9: the release of its log
// copy is lost, so it comes back at most until its first expiry (holds a slot it no longer
// needs: under-grants, never over).
TEST_F(LedgerResetAttackTest, RestoredRefundOnlyLeaseReleasedThenCrashComesBackHeldAtMost) {
  Process p(dir_.File("state.db"), &clock_);
  Ledger& l1 = p.Start(WithoutSlots(), true);
  std::optional<Decision> lease = Grant(l1, 1, absl::Minutes(10));
  ASSERT_TRUE(lease.has_value());
  p.Stop();
  Ledger& l2 = p.Start(WithSlots(1), true);
  ASSERT_OK(l2.Release(lease->lease_id, 0).status());
  EXPECT_TRUE(Grant(l2, 1, absl::Minutes(1)).has_value());  // writes a slot row of its own
  p.Crash();
  Ledger& l3 = p.Start(WithSlots(1), true);
  // Both the released lease (its release was lost) and the new one may hold: over the limit in
  // the count, never a grant beyond it.
  EXPECT_FALSE(Grant(l3).has_value());
  EXPECT_GE(Used(l3, "f.slots"), 1);
}

// ---- Report after Reset ----

// A throttle answer and an adopted count after a Reset are learnt as usual and survive a restart;
// the Reset before them does not hide them, and a Reset after them clears them for good.
TEST_F(LedgerResetAttackTest, ReportAfterResetIsKeptAndASecondResetClearsIt) {
  Process p(dir_.File("state.db"), &clock_);
  FeatureSpec f = Feature("f", {Sliding("w", 100, absl::Minutes(1))});
  f.throttle.initial_backoff = absl::Seconds(1);
  f.throttle.max_backoff = absl::Seconds(30);
  const Policy policy = OneCredential("key", {f});
  Ledger& l1 = p.Start(policy, true);
  ASSERT_EQ(GrantsInARow(l1, 10), 10);
  ASSERT_OK(l1.Reset("key"));
  ASSERT_EQ(GrantsInARow(l1, 5), 5);
  UpstreamAnswer adopt{.credential = "key", .feature = "f", .http_status = 200,
                       .headers = {{"X-RateLimit-Limit", "100"},
                                   {"X-RateLimit-Remaining", "40"}}};
  absl::StatusOr<ReportResult> ra = l1.Report(adopt);
  ASSERT_OK(ra);
  EXPECT_EQ(Used(l1, "f.w"), 60);
  UpstreamAnswer throttle{.credential = "key", .feature = "f", .http_status = 429,
                          .headers = {{"Retry-After", "20"}}};
  ASSERT_OK(l1.Report(throttle).status());
  EXPECT_FALSE(Grant(l1).has_value());  // cooling down
  p.Crash();
  Ledger& l2 = p.Start(policy, true);
  EXPECT_FALSE(Grant(l2).has_value());  // the cooldown came back
  EXPECT_GE(Used(l2, "f.w"), 60);
  ASSERT_OK(l2.Reset("key"));
  EXPECT_TRUE(Grant(l2).has_value());
  p.Crash();
  Ledger& l3 = p.Start(policy, true);
  // The cooldown written after the first Reset is gone; the reservations from before the
  // second Reset come back as a high-water mark (under-grants), never more than the capacity.
  absl::StatusOr<std::vector<LimitStatus>> usage = l3.Usage("key");
  ASSERT_OK(usage);
  for (const LimitStatus& s : *usage) EXPECT_FALSE(s.cooldown) << s.name;
  // Report on a reset credential whose counters are zero and with a reset in the past: no crash.
  UpstreamAnswer stale{.credential = "key", .feature = "f", .http_status = 200,
                       .headers = {{"X-RateLimit-Limit", "100"},
                                   {"X-RateLimit-Remaining", "0"},
                                   {"X-RateLimit-Reset", "1"}}};
  ASSERT_OK(l3.Reset("key"));
  ASSERT_OK(l3.Report(stale).status());
}

}  // namespace
}  // namespace quotad
