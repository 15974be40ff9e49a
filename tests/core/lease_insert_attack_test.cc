// Attacks on leases entering the lease table under their credential's mutex (commit aa3b815:
// Ledger::InsertLease in Acquire, AcquireAll and AcquireOrWait before the lock is released;
// waiters granted in Credential::ServeWaiters inserted there, Answer::granted_on). Tried here:
// an all_or_nothing AcquireAll refused after it served a waiter on the way (the waiter's grant
// must stand, in the table and the journal, across a restart; the batch must hold nothing), on
// another feature and on the blocker's own counter (rolling, sliding, bucket); the same with the
// journal failing; every path that inserts or serves (Acquire, AcquireAll over two credentials in
// both orders, AcquireOrWait, Release, Renew, Cancel, Pump, Sweep, Reload) racing on real
// threads over a journal, bounded, with Abseil's deadlock detector watching the lock order; the
// real SQLite journal with a full queue under the credential locks, racing Flush and Compact,
// then a restart; a reload in the gap of an AcquireAll's insert; refund-only leases restored
// under a policy that made their limit a concurrency one. Deterministic where it asserts figures
// (fake clock, no sleeps); the race tests assert end states only.

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "service/core/clock.h"
#include "service/core/ledger.h"
#include "service/store/memory_journal.h"
#include "service/store/sqlite_journal.h"
#include "tests/core/failing_journal.h"
#include "tests/support/hooked_journal.h"
#include "tests/support/policy_builders.h"
#include "tests/support/status_matchers.h"
#include "tests/support/temp_dir.h"

namespace quotad {
namespace {

using namespace ::quotad::testing;  // NOLINT: the policy builders

AcquireRequest Req(absl::string_view credential, absl::string_view feature, int64_t cost = 1,
                   absl::Duration ttl = absl::Minutes(10)) {
  return AcquireRequest{
      .credential = credential, .feature = feature, .cost = cost, .lease_ttl = ttl};
}

int GrantsUntilDenied(Ledger& ledger, absl::string_view credential, absl::string_view feature,
                      int at_most = 20) {
  int n = 0;
  while (n < at_most) {
    absl::StatusOr<Decision> d = ledger.Acquire(Req(credential, feature));
    if (!d.ok() || !d->granted) break;
    ++n;
  }
  return n;
}

// x: jobs (1 concurrency slot) and req (2 per minute, rolling).
Policy JobsAndRequests(int64_t req_capacity = 2) {
  return OneCredential("x", {Feature("jobs", {Concurrency("slots", 1)}),
                             Feature("req", {Rolling("per_minute", req_capacity, absl::Minutes(1))})});
}

// An AcquireAll refused (by an error, then by a denial) after its first item served a waiter on
// the way: the waiter's grant stands (answered granted, in the table, holding the one jobs slot,
// and in the journal, so a restart restores it), the batch's own charge is undone (req grants 2
// of 2 afterwards), before and after the restart.
TEST(LeaseInsertAttackTest, RefusedAcquireAllKeepsTheWaiterItServedAcrossARestart) {
  for (int64_t blocker_cost : {3, 2}) {
    SCOPED_TRACE(blocker_cost == 3 ? "blocker: an error (cost over capacity)" : "blocker: denied");
    FakeClock clock(Utc(2026, 6, 1, 10));
    MemoryJournal journal;
    std::optional<absl::StatusOr<Decision>> waited;
    {
      ASSERT_OK_AND_ASSIGN(std::unique_ptr<Ledger> ledger,
                           Ledger::Create(JobsAndRequests(), &clock,
                                          LedgerOptions{.journal = &journal}));
      ASSERT_OK(ledger->Restore());
      ASSERT_OK_AND_ASSIGN(Decision first, ledger->Acquire(Req("x", "jobs", 1, absl::Minutes(1))));
      ASSERT_TRUE(first.granted);
      WaitTicket ticket = ledger->AcquireOrWait(
          Req("x", "jobs"), absl::Minutes(10), 0,
          [&](absl::StatusOr<Decision> d) { waited = std::move(d); });
      ASSERT_FALSE(waited.has_value()) << "parked behind the first lease";
      clock.Advance(absl::Minutes(2));  // the first lease expired: the waiter may go
      std::vector<AcquireRequest> batch = {Req("x", "req"), Req("x", "req", blocker_cost)};
      std::vector<absl::StatusOr<Decision>> out = ledger->AcquireAll(batch);
      ASSERT_EQ(out.size(), 2u);
      ASSERT_TRUE(out[0].ok());
      EXPECT_FALSE(out[0]->granted);
      EXPECT_EQ(out[0]->limited_by, "all_or_nothing:items[1]");
      EXPECT_TRUE(!out[1].ok() || !out[1]->granted);
      ASSERT_TRUE(waited.has_value()) << "the batch served the waiter on the way";
      ASSERT_OK(*waited);
      ASSERT_TRUE((*waited)->granted);
      EXPECT_TRUE(ledger->FindLease((*waited)->lease_id).has_value());
      EXPECT_EQ(ledger->waiting(), 0);
      EXPECT_FALSE(ledger->Cancel(ticket));
      EXPECT_EQ(GrantsUntilDenied(*ledger, "x", "jobs"), 0) << "the waiter holds the slot";
      EXPECT_EQ(ledger->Leases("x").size(), 1u);
    }
    ASSERT_OK_AND_ASSIGN(std::unique_ptr<Ledger> restarted,
                         Ledger::Create(JobsAndRequests(), &clock,
                                        LedgerOptions{.journal = &journal}));
    ASSERT_OK(restarted->Restore());
    EXPECT_TRUE(restarted->FindLease((*waited)->lease_id).has_value());
    EXPECT_EQ(GrantsUntilDenied(*restarted, "x", "jobs"), 0) << "restored: the waiter's slot";
    EXPECT_EQ(GrantsUntilDenied(*restarted, "x", "req"), 2) << "the undone batch holds nothing";
    ASSERT_OK_AND_ASSIGN(ReleaseResult r, restarted->Release((*waited)->lease_id, std::nullopt));
    EXPECT_EQ(r.freed, 1);
    EXPECT_EQ(GrantsUntilDenied(*restarted, "x", "jobs"), 1);
  }
}

// Every inserting and serving path at once, on real threads, bounded (6 threads, 300 rounds
// each), over a journal, two credentials: AcquireAll in both credential orders, Acquire and
// Release, AcquireOrWait with Cancel, Renew, Pump and Sweep, and reloads that change req's
// capacity. The deadlock detector aborts on a lock-order cycle; at the end no credential holds
// more jobs leases than its one slot, and after releasing everything the slots are free.
TEST(LeaseInsertAttackTest, InsertingAndServingPathsRaceWithoutDeadlockOrOverGrant) {
  FakeClock clock(Utc(2026, 6, 1, 10));
  MemoryJournal journal;
  auto policy = [](int64_t req_capacity) {
    Policy p = JobsAndRequests(req_capacity);
    Policy y = OneCredential("y", {Feature("jobs", {Concurrency("slots", 1)}),
                                   Feature("req", {Rolling("per_minute", 5, absl::Minutes(1))})});
    p.credentials.push_back(y.credentials[0]);
    return p;
  };
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Ledger> ledger,
                       Ledger::Create(policy(2), &clock, LedgerOptions{.journal = &journal}));
  ASSERT_OK(ledger->Restore());
  constexpr int kRounds = 300;
  std::atomic<int> granted_waits{0};
  std::atomic<int> batch_grants{0};
  std::vector<std::thread> threads;
  for (int order = 0; order < 2; ++order) {
    threads.emplace_back([&, order] {
      for (int i = 0; i < kRounds; ++i) {
        std::vector<AcquireRequest> batch =
            order == 0 ? std::vector<AcquireRequest>{Req("x", "jobs"), Req("y", "jobs")}
                       : std::vector<AcquireRequest>{Req("y", "jobs"), Req("x", "jobs")};
        std::vector<absl::StatusOr<Decision>> out = ledger->AcquireAll(batch);
        if (out[0].ok() && out[0]->granted && out[1].ok() && out[1]->granted) {
          ++batch_grants;
          ledger->Release(out[0]->lease_id, std::nullopt).IgnoreError();
          ledger->Release(out[1]->lease_id, std::nullopt).IgnoreError();
        }
      }
    });
  }
  threads.emplace_back([&] {  // waiters, some cancelled, some served by releases
    for (int i = 0; i < kRounds; ++i) {
      const char* cred = i % 2 == 0 ? "x" : "y";
      auto lease = std::make_shared<std::optional<LeaseId>>();
      auto mu = std::make_shared<absl::Mutex>();
      WaitTicket t = ledger->AcquireOrWait(
          Req(cred, "jobs"), absl::Minutes(5), i % 3, [&, lease, mu](absl::StatusOr<Decision> d) {
            if (d.ok() && d->granted) {
              ++granted_waits;
              absl::MutexLock l(mu.get());
              *lease = d->lease_id;
            }
          });
      if (i % 4 == 0) ledger->Cancel(t);
      std::optional<LeaseId> held;
      {
        absl::MutexLock l(mu.get());
        held = *lease;
      }
      if (held.has_value()) {
        ledger->Renew(*held, absl::Minutes(1)).IgnoreError();
        ledger->Release(*held, std::nullopt).IgnoreError();
      }
    }
  });
  threads.emplace_back([&] {  // singles on req and jobs
    for (int i = 0; i < kRounds; ++i) {
      absl::StatusOr<Decision> d = ledger->Acquire(Req(i % 2 == 0 ? "x" : "y", i % 3 ? "req" : "jobs"));
      if (d.ok() && d->granted) ledger->Release(d->lease_id, 0).IgnoreError();
    }
  });
  threads.emplace_back([&] {  // reloads
    for (int i = 0; i < kRounds / 10; ++i) ledger->Reload(policy(2 + i % 3)).IgnoreError();
  });
  threads.emplace_back([&] {  // the timer's work and the operator's reads
    for (int i = 0; i < kRounds; ++i) {
      ledger->Pump();
      if (i % 10 == 0) ledger->Sweep();
      ledger->Queues();
      ledger->Leases("x");
    }
  });
  for (std::thread& t : threads) t.join();
  ledger->AnswerAllWaiters(absl::CancelledError("test over"));
  std::cout << "batch grants " << batch_grants << ", granted waits " << granted_waits << "\n";
  for (const char* cred : {"x", "y"}) {
    int jobs = 0;
    for (const LeaseInfo& l : ledger->Leases(cred)) {
      if (l.feature == "jobs") ++jobs;
    }
    EXPECT_LE(jobs, 1) << cred;
    // A waiter granted after its thread looked (answered late) may still hold the slot: let it go.
    for (const LeaseInfo& l : ledger->Leases(cred)) {
      ledger->Release(l.id, std::nullopt).IgnoreError();
    }
    EXPECT_EQ(GrantsUntilDenied(*ledger, cred, "jobs"), 1) << cred;
  }
}

// An AcquireAll refused by a denial after it served a waiter on the blocker's own counter: the
// waiter's charge stays (1 unit), the batch's first item's is undone. req holds 3 (rolling per
// minute, a sliding window, a bucket of burst 3 refilling 3 a minute); 3 grants fill it, a
// waiter parks, a minute later the batch [req 1, req 2] serves the waiter (1), grants item 0 (1)
// and is denied at item 1 (2 of the 1 left). Then exactly 2 more units may be granted.
TEST(LeaseInsertAttackTest, RefusedAcquireAllUndoesItsChargeButNotTheWaitersOnOneCounter) {
  for (const LimitSpec& lim : {Rolling("lim", 3, absl::Minutes(1)),
                               Sliding("lim", 3, absl::Minutes(1)),
                               Bucket("lim", 3, absl::Minutes(1), 3)}) {
    SCOPED_TRACE(lim.name);
    FakeClock clock(Utc(2026, 6, 1, 10));
    MemoryJournal journal;
    const Policy policy = OneCredential("x", {Feature("req", {lim})});
    ASSERT_OK_AND_ASSIGN(std::unique_ptr<Ledger> ledger,
                         Ledger::Create(policy, &clock, LedgerOptions{.journal = &journal}));
    ASSERT_OK(ledger->Restore());
    ASSERT_EQ(GrantsUntilDenied(*ledger, "x", "req"), 3);
    std::optional<absl::StatusOr<Decision>> waited;
    ledger->AcquireOrWait(Req("x", "req"), absl::Minutes(10), 0,
                          [&](absl::StatusOr<Decision> d) { waited = std::move(d); });
    ASSERT_FALSE(waited.has_value());
    clock.Advance(absl::Minutes(1) + absl::Seconds(1));
    std::vector<AcquireRequest> batch = {Req("x", "req"), Req("x", "req", 2)};
    std::vector<absl::StatusOr<Decision>> out = ledger->AcquireAll(batch);
    ASSERT_TRUE(waited.has_value());
    ASSERT_OK(*waited);
    EXPECT_TRUE((*waited)->granted);
    ASSERT_OK(out[0]);
    ASSERT_OK(out[1]);
    EXPECT_FALSE(out[0]->granted);
    EXPECT_FALSE(out[1]->granted);
    EXPECT_EQ(GrantsUntilDenied(*ledger, "x", "req"), 2) << "3 a minute, the waiter's 1 taken";
  }
}

// The real SQLite journal with a queue of 2 records (so InsertLease's queued write, now under
// the credential's mutex, and under several in AcquireAll, waits for the writer thread), while
// concurrency grants write synchronously under the same mutexes and another thread compacts and
// flushes (write_mu_, db_mu_, queue_mu_): bounded threads and rounds; the deadlock detector
// aborts on a cycle. Then a restart from the file restores exactly the leases that were live
// (the queued refund-only ones too; no undone or released one), so every jobs slot is free.
TEST(LeaseInsertAttackTest, SqliteJournalWithAFullQueueUnderCredentialLocksRestoresExactly) {
  FakeClock clock(Utc(2026, 6, 1, 10));
  TempDir dir("lease_insert");
  const std::string path = dir.File("state.db");
  auto policy = [] {
    Policy p = JobsAndRequests(1000);
    Policy y = OneCredential("y", {Feature("jobs", {Concurrency("slots", 1)}),
                                   Feature("req", {Rolling("per_minute", 1000, absl::Minutes(1))})});
    p.credentials.push_back(y.credentials[0]);
    return p;
  };
  SqliteOptions options;
  options.max_queued = 2;
  options.commit_batch = 2;
  constexpr int kRounds = 100;
  std::set<std::string> live_before;
  {
    ASSERT_OK_AND_ASSIGN(std::unique_ptr<SqliteJournal> journal, SqliteJournal::Open(path, options));
    ASSERT_OK_AND_ASSIGN(std::unique_ptr<Ledger> ledger,
                         Ledger::Create(policy(), &clock, LedgerOptions{.journal = journal.get()}));
    ASSERT_OK(ledger->Restore());
    std::vector<std::thread> threads;
    for (int order = 0; order < 2; ++order) {
      threads.emplace_back([&, order] {
        for (int i = 0; i < kRounds; ++i) {
          const char* a = order == 0 ? "x" : "y";
          const char* b = order == 0 ? "y" : "x";
          std::vector<AcquireRequest> batch = {Req(a, "req"), Req(b, "jobs"), Req(b, "req"),
                                               Req(a, "jobs")};
          std::vector<absl::StatusOr<Decision>> out = ledger->AcquireAll(batch);
          for (int k : {1, 3}) {  // give the slots back; keep the window grants
            if (out[k].ok() && out[k]->granted) {
              ledger->Release(out[k]->lease_id, std::nullopt).IgnoreError();
            }
          }
        }
      });
    }
    threads.emplace_back([&] {
      for (int i = 0; i < kRounds; ++i) {
        absl::StatusOr<Decision> d = ledger->Acquire(Req(i % 2 ? "x" : "y", "req"));
        if (d.ok() && d->granted && i % 3 == 0) ledger->Release(d->lease_id, 0).IgnoreError();
      }
    });
    threads.emplace_back([&] {
      for (int i = 0; i < kRounds / 4; ++i) {
        journal->Flush().IgnoreError();
        journal->Compact(absl::ToUnixNanos(clock.Now())).IgnoreError();
      }
    });
    for (std::thread& t : threads) t.join();
    ASSERT_OK(journal->Flush());
    for (const char* cred : {"x", "y"}) {
      for (const LeaseInfo& l : ledger->Leases(cred)) live_before.insert(l.id.ToString());
    }
  }
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<SqliteJournal> journal, SqliteJournal::Open(path, options));
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Ledger> ledger,
                       Ledger::Create(policy(), &clock, LedgerOptions{.journal = journal.get()}));
  ASSERT_OK(ledger->Restore());
  std::set<std::string> restored;
  for (const char* cred : {"x", "y"}) {
    for (const LeaseInfo& l : ledger->Leases(cred)) {
      restored.insert(l.id.ToString());
      EXPECT_NE(l.feature, "jobs") << cred << ": every slot was given back before the restart";
    }
  }
  std::cout << "live leases before the restart " << live_before.size() << ", restored "
            << restored.size() << "\n";
  EXPECT_EQ(restored, live_before);
  for (const char* cred : {"x", "y"}) EXPECT_EQ(GrantsUntilDenied(*ledger, cred, "jobs"), 1) << cred;
}

// The journal failing while an AcquireAll serves a waiter on the way: the waiter (jobs, a
// concurrency slot written before it is answered) is answered with the store's error, not left
// parked and not holding the slot; the batch answers as the failing journal lets it (granted
// whole, or refused whole when its reservation fails), and once the store works again the
// counts add up: 1 jobs slot free, req (2 a minute) grants 2 less what the batch holds.
TEST(LeaseInsertAttackTest, FailingJournalWhileAcquireAllServesAWaiterAnswersItAndLeaksNothing) {
  FakeClock clock(Utc(2026, 6, 1, 10));
  MemoryJournal memory;
  FailingJournal journal(&memory);
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Ledger> ledger,
                       Ledger::Create(JobsAndRequests(), &clock, LedgerOptions{.journal = &journal}));
  ASSERT_OK(ledger->Restore());
  ASSERT_OK_AND_ASSIGN(Decision first, ledger->Acquire(Req("x", "jobs", 1, absl::Minutes(1))));
  ASSERT_TRUE(first.granted);
  std::optional<absl::StatusOr<Decision>> waited;
  ledger->AcquireOrWait(Req("x", "jobs"), absl::Minutes(10), 0,
                        [&](absl::StatusOr<Decision> d) { waited = std::move(d); });
  ASSERT_FALSE(waited.has_value());
  clock.Advance(absl::Minutes(2));
  journal.set_fail(true);
  std::vector<AcquireRequest> batch = {Req("x", "req"), Req("x", "req")};
  std::vector<absl::StatusOr<Decision>> out = ledger->AcquireAll(batch);
  journal.set_fail(false);
  ASSERT_TRUE(waited.has_value()) << "the waiter was served (and failed) on the way";
  EXPECT_FALSE(waited->ok()) << "its slot could not be written: fail closed";
  EXPECT_EQ(ledger->waiting(), 0);
  const bool batch_granted = out[0].ok() && out[0]->granted;
  EXPECT_EQ(batch_granted, out[1].ok() && out[1]->granted) << "all or nothing";
  std::cout << "batch under a failing journal: "
            << (batch_granted ? "granted" : out[0].ok() ? out[0]->limited_by
                                                         : std::string(out[0].status().message()))
            << " / "
            << (out[1].ok() ? (out[1]->granted ? "granted" : out[1]->limited_by)
                            : std::string(out[1].status().message()))
            << "\n";
  EXPECT_EQ(GrantsUntilDenied(*ledger, "x", "jobs"), 1);
  EXPECT_EQ(GrantsUntilDenied(*ledger, "x", "req"), batch_granted ? 0 : 2);
}

// f.lim as a daily window of 100, or as 2 concurrency slots.
Policy AsWindow() {
  return OneCredential("x", {Feature("f", {Calendar("lim", 100, CalendarUnit::kDay)})});
}
Policy AsSlots() { return OneCredential("x", {Feature("f", {Concurrency("lim", 2)})}); }

// AcquireAll's leases enter the table under the batch's credential mutexes too: a reload making
// f.lim 2 slots, started from the journal write of the batch's first lease (InsertLease, under
// the locks), waits for both and finds them holding the 2 slots: no more grants, 2 live leases.
TEST(LeaseInsertAttackTest, AcquireAllLeasesInsertedBeforeAReloadHoldTheirSlots) {
  FakeClock clock(Utc(2026, 6, 1, 10));
  HookedJournal journal;
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Ledger> ledger,
                       Ledger::Create(AsWindow(), &clock, LedgerOptions{.journal = &journal}));
  ReloadInTheGap reload([&] { return ledger->Reload(AsSlots()); });
  journal.BeforeNextPutLease(reload.Hook());
  std::vector<AcquireRequest> batch = {Req("x", "f"), Req("x", "f")};
  std::vector<absl::StatusOr<Decision>> out = ledger->AcquireAll(batch);
  ASSERT_OK(out[0]);
  ASSERT_OK(out[1]);
  ASSERT_TRUE(out[0]->granted && out[1]->granted);
  ASSERT_OK(reload.Join());
  EXPECT_EQ(GrantsUntilDenied(*ledger, "x", "f"), 0);
  EXPECT_EQ(ledger->Leases("x").size(), 2u);
}

// A restart after such a reload: the leases were journaled refund-only (f.lim was a window when
// they were granted) and the policy the restart loads makes f.lim 2 slots. Restored, they must
// still hold the 2 slots (never over: 2 live leases and no more grants), and a renewal or release
// must work on them.
TEST(LeaseInsertAttackTest, RefundOnlyLeasesRestoredUnderASlotsPolicyHoldTheirSlots) {
  FakeClock clock(Utc(2026, 6, 1, 10));
  MemoryJournal journal;
  std::vector<LeaseId> ids;
  {
    ASSERT_OK_AND_ASSIGN(std::unique_ptr<Ledger> first,
                         Ledger::Create(AsWindow(), &clock, LedgerOptions{.journal = &journal}));
    ASSERT_OK(first->Restore());
    std::vector<AcquireRequest> batch = {Req("x", "f"), Req("x", "f")};
    for (absl::StatusOr<Decision>& d : first->AcquireAll(batch)) {
      ASSERT_OK(d);
      ASSERT_TRUE(d->granted);
      ids.push_back(d->lease_id);
    }
    ASSERT_OK(first->Reload(AsSlots()));
    EXPECT_EQ(GrantsUntilDenied(*first, "x", "f"), 0);
  }
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Ledger> ledger,
                       Ledger::Create(AsSlots(), &clock, LedgerOptions{.journal = &journal}));
  ASSERT_OK(ledger->Restore());
  const size_t live = ledger->Leases("x").size();
  const int more = GrantsUntilDenied(*ledger, "x", "f");
  EXPECT_EQ(more, 0) << live << " restored leases; " << more << " more granted on 2 slots";
  EXPECT_EQ(live, 2u);
  ASSERT_OK(ledger->Renew(ids[0], absl::Minutes(5)).status());
  ASSERT_OK(ledger->Release(ids[1], std::nullopt).status());
  EXPECT_EQ(GrantsUntilDenied(*ledger, "x", "f"), 1);
}

}  // namespace
}  // namespace quotad
