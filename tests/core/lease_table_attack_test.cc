// Attacks on the ledger's lease table (lease_table.h; a node_hash_map per shard since commit
// c901055) through every path that touches it: grants (InsertLease), Release, Renew, Sweep,
// Reload's scan of live leases, Restore from the journal, Leases and FindLease. Deterministic:
// a fake clock, a journal hook for the one interleaving a test needs, and bounded thread counts
// and loops. Each test says what it tries; a DISABLED_ one shows a bug that is still open (its
// comment gives the figures). Run them in the sanitizer builds too.

#include <atomic>
#include <cstdint>
#include <limits>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "service/core/clock.h"
#include "service/core/ledger.h"
#include "service/store/memory_journal.h"
#include "tests/support/hooked_journal.h"
#include "tests/support/policy_builders.h"
#include "tests/support/status_matchers.h"

namespace quotad {
namespace {

using namespace ::quotad::testing;  // NOLINT: the policy builders

AcquireRequest Req(absl::string_view feature, int64_t cost = 1,
                   absl::Duration ttl = absl::Minutes(10)) {
  return AcquireRequest{.credential = "x", .feature = feature, .cost = cost, .lease_ttl = ttl};
}

int GrantsUntilDenied(Ledger& ledger, absl::string_view feature, int at_most = 50) {
  int n = 0;
  while (n < at_most) {
    absl::StatusOr<Decision> d = ledger.Acquire(Req(feature));
    if (!d.ok() || !d->granted) break;
    ++n;
  }
  return n;
}

// f.lim as a daily window of 100, or as 2 concurrency slots (the same limit name, another kind:
// the reload builds the counter anew and every live lease that charges it holds a slot there).
Policy AsWindow() {
  return OneCredential("x", {Feature("f", {Calendar("lim", 100, CalendarUnit::kDay)})});
}
Policy AsSlots() { return OneCredential("x", {Feature("f", {Concurrency("lim", 2)})}); }

// Control: a lease granted before the limit became a concurrency limit holds one of its slots.
TEST(LeaseTableAttackTest, LeaseGrantedBeforeAKindChangeHoldsItsSlot) {
  FakeClock clock(Utc(2026, 6, 1, 10));
  HookedJournal journal;
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Ledger> ledger,
                       Ledger::Create(AsWindow(), &clock, LedgerOptions{.journal = &journal}));
  ASSERT_OK_AND_ASSIGN(Decision before, ledger->Acquire(Req("f")));
  ASSERT_TRUE(before.granted);
  ASSERT_OK(ledger->Reload(AsSlots()));
  EXPECT_EQ(GrantsUntilDenied(*ledger, "f"), 1) << "the earlier lease holds one of the 2 slots";
  EXPECT_EQ(ledger->Leases("x").size(), 2u);
}

// FIXED (found by attack15, older than c901055 but on its path): a lease granted just before a
// reload makes its limit a concurrency limit, and inserted into the lease table just after the
// reload's scan of live leases, held no slot.
//
// Ledger::Acquire decided under the credential's mutex and put the lease in the table after
// releasing it (InsertLease); Reload's rehome loop (ledger_reload.cc: "every live lease that
// charges it holds its slots there") scans the table, so it missed a lease in that gap.
// Observed then: 3 live leases on f.lim, a concurrency limit of 2 slots (the gap lease plus 2
// more grants). Now the lease enters the table before the mutex is released, and the reload
// waits for it: the gap lease holds a slot, so 1 more grant (2 of 2).
TEST(LeaseTableAttackTest, LeaseInsertedAfterTheRehomeScanHoldsItsSlot) {
  FakeClock clock(Utc(2026, 6, 1, 10));
  HookedJournal journal;
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Ledger> ledger,
                       Ledger::Create(AsWindow(), &clock, LedgerOptions{.journal = &journal}));
  ReloadInTheGap reload([&] { return ledger->Reload(AsSlots()); });
  journal.BeforeNextPutLease(reload.Hook());
  ASSERT_OK_AND_ASSIGN(Decision gap, ledger->Acquire(Req("f")));
  ASSERT_TRUE(gap.granted);
  ASSERT_OK(reload.Join());
  const int more = GrantsUntilDenied(*ledger, "f");
  const size_t live = ledger->Leases("x").size();
  EXPECT_EQ(more, 1) << "granted " << live << " live leases on a limit of 2 slots";
  EXPECT_LE(live, 2u);
}

// FIXED (same cause as above, on the waiters' path, ledger_wait.cc): a waiter served by a
// release was granted under the credential's mutex and its lease put in the table by Deliver
// after the mutex was released; a reload that made a limit it charges a concurrency limit in
// between did not see it. Now ServeWaiters puts it in the table under the mutex. Feature w (gate: 1 a day) draws on f (lim: 100 a day): the first
// grant on w fills gate, a waiter on w parks, the first lease's release (used 0) refunds gate
// and serves the waiter; the hook reloads there, f.lim becoming 2 slots (gate unchanged).
// Observed then: 3 live leases charging f.lim, 2 slots (the waiter's and 2 grants on f).
// Expected: the waiter's lease holds a slot, 1 more grant.
TEST(LeaseTableAttackTest, WaiterInsertedAfterTheRehomeScanHoldsItsSlot) {
  FakeClock clock(Utc(2026, 6, 1, 10));
  HookedJournal journal;
  auto policy = [](LimitSpec lim) {
    return OneCredential("x", {Feature("f", {std::move(lim)}),
                               Feature("w", {Calendar("gate", 1, CalendarUnit::kDay)}, {"f"})});
  };
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Ledger> ledger,
                       Ledger::Create(policy(Calendar("lim", 100, CalendarUnit::kDay)), &clock,
                                      LedgerOptions{.journal = &journal}));
  ASSERT_OK_AND_ASSIGN(Decision first, ledger->Acquire(Req("w")));
  ASSERT_TRUE(first.granted);
  std::optional<absl::StatusOr<Decision>> answer;
  ledger->AcquireOrWait(Req("w"), absl::Minutes(1), /*priority=*/0,
                        [&](absl::StatusOr<Decision> d) { answer = std::move(d); });
  ASSERT_FALSE(answer.has_value());
  ReloadInTheGap reload([&] { return ledger->Reload(policy(Concurrency("lim", 2))); });
  journal.BeforeNextPutLease(reload.Hook());
  ASSERT_OK(ledger->Release(first.lease_id, /*used=*/0).status());
  ASSERT_OK(reload.Join());
  ASSERT_TRUE(answer.has_value());
  ASSERT_OK(answer->status());
  ASSERT_TRUE((*answer)->granted);
  const int more = GrantsUntilDenied(*ledger, "f");
  const size_t live = ledger->Leases("x").size();
  EXPECT_EQ(more, 1) << "granted " << live << " live leases charging a limit of 2 slots";
  EXPECT_LE(live, 2u);
}

// Leases, LeaseCounts and FindLease agree on what is live: expired leases the sweeper has not
// dropped yet are in none of them, released ones neither, and a sweep changes no answer.
TEST(LeaseTableAttackTest, ListingsAgreeOnLiveLeasesBeforeAndAfterASweep) {
  FakeClock clock(Utc(2026, 6, 1, 10));
  ASSERT_OK_AND_ASSIGN(
      std::unique_ptr<Ledger> ledger,
      Ledger::Create(OneCredential("x", {Feature("f", {Concurrency("slots", 100)})}), &clock));
  std::vector<LeaseId> ids;
  for (int i = 0; i < 60; ++i) {
    ASSERT_OK_AND_ASSIGN(Decision d, ledger->Acquire(Req("f", 1, absl::Seconds(10 + i % 3))));
    ASSERT_TRUE(d.granted);
    ids.push_back(d.lease_id);
  }
  for (int i = 0; i < 60; i += 4) ASSERT_OK(ledger->Release(ids[i], 0).status());
  clock.Advance(absl::Seconds(11));  // the 10 s leases expire; 11 s ones expire at this instant
  auto check = [&](const char* when) {
    std::set<std::string> listed;
    for (const LeaseInfo& l : ledger->Leases("x")) listed.insert(l.id.ToString());
    std::set<std::string> found;
    for (const LeaseId& id : ids) {
      if (ledger->FindLease(id).has_value()) found.insert(id.ToString());
    }
    EXPECT_EQ(listed, found) << when;
    const auto counts = ledger->LeaseCounts();
    const int64_t counted = counts.contains("x") ? counts.at("x") : 0;
    EXPECT_EQ(counted, static_cast<int64_t>(listed.size())) << when;
    int expected = 0;
    for (int i = 0; i < 60; ++i) expected += (i % 4 != 0 && i % 3 == 2) ? 1 : 0;
    EXPECT_EQ(listed.size(), static_cast<size_t>(expected)) << when;
  };
  check("before the sweep");
  EXPECT_GT(ledger->Sweep(), 0);
  check("after the sweep");
  EXPECT_EQ(GrantsUntilDenied(*ledger, "f", 200),
            100 - static_cast<int>(ledger->Leases("x").size()));
}

// Many threads grant, renew and release on 3 slots (or leave leases to expire, moving the clock
// when the slots are full) while another sweeps and reloads (a new version of the credential
// each time, the slots carried). Checked at rest, not during the race: Leases() reads the clock
// once and visits the shards one by one, so a listing taken while others release and grant at
// the same instant may show a released lease and its successor together (a first version of
// this test saw 4 of 3 in 16 of 100 runs, the 4 granted at one instant with one expiry: what a
// release and the next grant at that instant look like).
TEST(LeaseTableAttackTest, RacingGrantsReleasesRenewalsSweepsAndReloadsNeverExceedTheSlots) {
  FakeClock clock(Utc(2026, 6, 1, 10));
  MemoryJournal journal;
  auto policy = [](int64_t other_cap) {
    return OneCredential("x", {Feature("f", {Concurrency("slots", 3)}),
                               Feature("g", {Calendar("per_day", other_cap, CalendarUnit::kDay)})});
  };
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Ledger> ledger,
                       Ledger::Create(policy(10), &clock, LedgerOptions{.journal = &journal}));
  constexpr int kWorkers = 4;
  constexpr int kRounds = 1500;
  std::atomic<bool> done{false};
  std::atomic<int64_t> grants{0};
  std::vector<std::thread> threads;
  for (int w = 0; w < kWorkers; ++w) {
    threads.emplace_back([&, w] {
      for (int i = 0; i < kRounds; ++i) {
        absl::StatusOr<Decision> d = ledger->Acquire(Req("f", 1, absl::Seconds(3)));
        if (!d.ok() || !d->granted) {
          // Full: time passes, so that the leases left to expire free their slots.
          clock.Advance(absl::Milliseconds(500));
          continue;
        }
        ++grants;
        if ((i + w) % 3 == 0) ledger->Renew(d->lease_id, absl::Seconds(3)).IgnoreError();
        if ((i + w) % 4 != 0) ledger->Release(d->lease_id, 0).IgnoreError();  // else it expires
      }
    });
  }
  threads.emplace_back([&] {  // sweeps, reloads, time
    for (int i = 0; !done.load(); ++i) {
      ledger->Sweep();
      if (i % 5 == 0) ledger->Reload(policy(10 + i % 2)).IgnoreError();
      if (i % 3 == 0) clock.Advance(absl::Seconds(1));
      std::this_thread::yield();
    }
  });
  for (int w = 0; w < kWorkers; ++w) threads[w].join();
  done = true;
  for (size_t t = kWorkers; t < threads.size(); ++t) threads[t].join();
  EXPECT_GT(grants.load(), 3);  // the race ran
  RecordProperty("grants", static_cast<int>(grants.load()));
  // At rest: the table lists no more live leases than slots, each of them can be found and
  // released (it held a slot), and then exactly the 3 slots come back: none leaked, none given
  // twice.
  const std::vector<LeaseInfo> live = ledger->Leases("x");
  EXPECT_LE(live.size(), 3u);
  for (const LeaseInfo& l : live) {
    EXPECT_TRUE(ledger->FindLease(l.id).has_value()) << l.id.ToString();
    ASSERT_OK_AND_ASSIGN(ReleaseResult r, ledger->Release(l.id, 0));
    EXPECT_EQ(r.freed, 1) << l.id.ToString();
  }
  ledger->Sweep();
  EXPECT_EQ(GrantsUntilDenied(*ledger, "f"), 3);
}

// A restart reads the leases back from the journal into the table: they hold their slots, can
// be found, renewed and released; expired ones are swept and free theirs.
TEST(LeaseTableAttackTest, RestoredLeasesHoldTheirSlotsAndEndNormally) {
  FakeClock clock(Utc(2026, 6, 1, 10));
  MemoryJournal journal;
  const Policy policy = OneCredential("x", {Feature("f", {Concurrency("slots", 3)})});
  std::vector<LeaseId> ids;
  {
    ASSERT_OK_AND_ASSIGN(std::unique_ptr<Ledger> first,
                         Ledger::Create(policy, &clock, LedgerOptions{.journal = &journal}));
    ASSERT_OK(first->Restore());
    for (int i = 0; i < 3; ++i) {
      ASSERT_OK_AND_ASSIGN(Decision d, first->Acquire(Req("f", 1, absl::Minutes(1 + i))));
      ASSERT_TRUE(d.granted);
      ids.push_back(d.lease_id);
    }
  }
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Ledger> ledger,
                       Ledger::Create(policy, &clock, LedgerOptions{.journal = &journal}));
  ASSERT_OK(ledger->Restore());
  EXPECT_EQ(ledger->Leases("x").size(), 3u);
  EXPECT_EQ(GrantsUntilDenied(*ledger, "f"), 0) << "restored leases must hold their slots";
  for (const LeaseId& id : ids) EXPECT_TRUE(ledger->FindLease(id).has_value());
  ASSERT_OK(ledger->Renew(ids[2], absl::Minutes(30)).status());
  ASSERT_OK_AND_ASSIGN(ReleaseResult r, ledger->Release(ids[1], std::nullopt));
  EXPECT_EQ(r.freed, 1);
  EXPECT_EQ(GrantsUntilDenied(*ledger, "f"), 1);
  // ids[0] (1 minute) expires; ids[2] was renewed. A sweep drops it, its slot is free.
  clock.Advance(absl::Minutes(2));
  EXPECT_EQ(ledger->Sweep(), 1);
  EXPECT_FALSE(ledger->FindLease(ids[0]).has_value());
  EXPECT_EQ(GrantsUntilDenied(*ledger, "f"), 1);
  EXPECT_EQ(ledger->Leases("x").size(), 3u);
}

// Overflow values on the lease paths: a cost near int64 max is never granted; a TTL past the
// feature's maximum is refused on grant and renewal; neither leaves a record in the table.
TEST(LeaseTableAttackTest, OverflowCostsAndTtlsLeaveNoLease) {
  FakeClock clock(Utc(2026, 6, 1, 10));
  ASSERT_OK_AND_ASSIGN(
      std::unique_ptr<Ledger> ledger,
      Ledger::Create(
          OneCredential("x", {Feature("f", {Concurrency("slots", 3)}),
                              Feature("g", {Calendar("per_day", 100, CalendarUnit::kDay)})}),
          &clock));
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
  for (absl::string_view feature : {"f", "g"}) {
    absl::StatusOr<Decision> d = ledger->Acquire(Req(feature, kMax));
    EXPECT_FALSE(d.ok() && d->granted) << feature;
    d = ledger->Acquire(Req(feature, 1, absl::Hours(24 * 365 * 200)));
    EXPECT_FALSE(d.ok() && d->granted) << feature << ": a 200-year lease";
  }
  EXPECT_EQ(ledger->Leases("x").size(), 0u);
  ASSERT_OK_AND_ASSIGN(Decision d, ledger->Acquire(Req("f")));
  ASSERT_TRUE(d.granted);
  EXPECT_THAT(ledger->Renew(d.lease_id, absl::Hours(24 * 365 * 200)),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(ledger->Renew(d.lease_id, -absl::Seconds(1)),
              StatusIs(absl::StatusCode::kInvalidArgument));
  ASSERT_OK_AND_ASSIGN(LeaseInfo info, [&]() -> absl::StatusOr<LeaseInfo> {
    std::optional<LeaseInfo> l = ledger->FindLease(d.lease_id);
    if (!l.has_value()) return absl::NotFoundError("gone");
    return *l;
  }());
  EXPECT_EQ(info.expiry, clock.Now() + absl::Minutes(10));
  EXPECT_EQ(GrantsUntilDenied(*ledger, "f"), 2);
}

}  // namespace
}  // namespace quotad
