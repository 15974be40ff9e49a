// Attacks on leases entering the lease table under their credential's mutex (commit aa3b815:
// Ledger::InsertLease in Acquire, AcquireAll and AcquireOrWait before the lock is released;
// waiters granted in Credential::ServeWaiters inserted there, Answer::granted_on). Tried here:
// an all_or_nothing AcquireAll refused after it served a waiter on the way (the waiter's grant
// must stand, in the table and the journal, across a restart, and the batch must hold nothing),
// and every path that inserts or serves (Acquire, AcquireAll over two credentials in both
// orders, AcquireOrWait, Release, Renew, Cancel, Pump, Sweep, Reload) racing on real threads over
// a journal, bounded, with Abseil's deadlock detector watching the lock order. Deterministic
// where it asserts figures (fake clock, no sleeps); the race test asserts the end state only.

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "service/core/clock.h"
#include "service/core/ledger.h"
#include "service/store/memory_journal.h"
#include "tests/support/policy_builders.h"
#include "tests/support/status_matchers.h"

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
  EXPECT_GT(batch_grants.load(), 0);
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

}  // namespace
}  // namespace quotad
