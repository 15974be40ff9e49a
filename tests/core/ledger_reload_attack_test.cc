// Attacks on Ledger::Reload's version pruning and reuse (issue 18, finding 4): a reload keeps
// only the compiled versions something points into, reuses a credential's version when its
// features are unchanged (or another credential's, by fingerprint), and numbers versions by seq
// for RebuiltSince. Each test says what it tries. Six of them found two bugs in the first cut
// (a version freed while a lease about to be inserted still used it; a stale refund accepted
// when a shared version came back under a new seq); leases now own their version and its seq.
// Run them in the AddressSanitizer build too.

#include <atomic>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/synchronization/mutex.h"
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

AcquireRequest Req(absl::string_view credential, int64_t cost = 1,
                   absl::Duration ttl = absl::Minutes(10)) {
  return AcquireRequest{.credential = credential, .feature = "f", .cost = cost, .lease_ttl = ttl};
}

int64_t Used(Ledger& ledger, absl::string_view credential, absl::string_view limit) {
  absl::StatusOr<std::vector<LimitStatus>> usage = ledger.Usage(credential);
  if (!usage.ok()) return -1;
  for (const LimitStatus& s : *usage) {
    if (s.name == limit && s.scope.empty()) return s.used;
  }
  return -1;
}

int GrantsUntilDenied(Ledger& ledger, absl::string_view credential, int at_most = 100) {
  int n = 0;
  while (n < at_most) {
    absl::StatusOr<Decision> d = ledger.Acquire(Req(credential));
    if (!d.ok() || !d->granted) break;
    ++n;
  }
  return n;
}

Policy DailyCap(int64_t cap) {
  return OneCredential("x", {Feature("f", {Calendar("per_day", cap, CalendarUnit::kDay)})});
}

// ---- BUG 1: a lease granted between the `leased` scan and its insertion into the lease table
// points into a version the reload prunes.

// Acquire decided under the credential's mutex, released it, then InsertLease wrote the lease
// to the journal and put it in the table. A reload that ran in that gap did not see the lease in
// its scan; the version it was granted under was neither in force nor leased, and a capacity
// lowered (counters carried, nothing retired) left no other reference: pruned. (Fixed first by
// a second scan; since the lease table attack, the lease enters the table under the mutex and
// the reload, run on its own thread from the same point, waits for it.)
TEST(LedgerReloadAttackTest, LeaseInsertedAfterTheScanKeepsItsVersion) {
  FakeClock clock(Utc(2026, 6, 1, 10));
  HookedJournal journal;
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Ledger> ledger,
                       Ledger::Create(DailyCap(100), &clock, LedgerOptions{.journal = &journal}));
  ReloadInTheGap reload([&] { return ledger->Reload(DailyCap(50)); });
  journal.BeforeNextPutLease(reload.Hook());
  ASSERT_OK_AND_ASSIGN(Decision d, ledger->Acquire(Req("x", 5)));
  ASSERT_TRUE(d.granted);
  ASSERT_OK(reload.Join());
  // The lease points into the version it was granted under: it must still be kept.
  EXPECT_EQ(ledger->Footprint().versions, 2u) << "the lease's version was pruned under it";
  // Each of these reads the lease's version (heap-use-after-free under ASan when pruned).
  std::vector<LeaseInfo> leases = ledger->Leases("x");
  ASSERT_EQ(leases.size(), 1u);
  EXPECT_EQ(leases[0].feature, "f");
  ASSERT_OK_AND_ASSIGN(absl::Time expiry, ledger->Renew(d.lease_id, absl::Minutes(5)));
  EXPECT_EQ(expiry, clock.Now() + absl::Minutes(5));
  ASSERT_OK_AND_ASSIGN(ReleaseResult r, ledger->Release(d.lease_id, /*used=*/0));
  EXPECT_EQ(r.refunded, 5);
  EXPECT_EQ(Used(*ledger, "x", "f.per_day"), 0);
}

// The same gap on the other side: the scan runs at the start of the reload, the credential's
// mutex is taken later (after the credentials before it in the policy). A grant in between is
// made under the version about to be replaced and inserted before the reload reaches it.
// Deterministic: the reload of the first credential writes its carried units ahead
// (journal Reserve, under that credential's mutex only), and the hook grants on the second.
TEST(LedgerReloadAttackTest, LeaseGrantedBetweenTheScanAndTheCredentialsLockKeepsItsVersion) {
  FakeClock clock(Utc(2026, 6, 1, 10));
  HookedJournal journal;
  auto policy = [](int64_t w_cap, int64_t x_cap) {
    Policy p;
    p.credentials.push_back(
        Credential("w", "", {Feature("f", {Calendar("per_day", w_cap, CalendarUnit::kDay)})}));
    p.credentials.push_back(
        Credential("x", "", {Feature("f", {Calendar("per_day", x_cap, CalendarUnit::kDay)})}));
    return p;
  };
  // Different features: w and x do not share a version (a shared one would be kept by w).
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Ledger> ledger,
                       Ledger::Create(policy(100, 90), &clock, LedgerOptions{.journal = &journal}));
  ASSERT_OK_AND_ASSIGN(Decision w_lease, ledger->Acquire(Req("w", 10)));
  ASSERT_TRUE(w_lease.granted);
  ASSERT_OK(ledger->Release(w_lease.lease_id, std::nullopt).status());  // w's counter keeps its 10 units
  std::optional<LeaseId> x_lease;
  journal.BeforeNextReserve([&] {
    // Raising w's capacity rebuilds its counter and writes the carried units ahead: here, with
    // the scan done and x not reached yet. Another thread grants on x now.
    std::thread other([&] {
      absl::StatusOr<Decision> d = ledger->Acquire(Req("x", 5));
      if (d.ok() && d->granted) x_lease = d->lease_id;
    });
    other.join();
  });
  // w raised (rebuilt, written ahead), x lowered (carried: nothing retired keeps x's version).
  ASSERT_OK(ledger->Reload(policy(200, 50)));
  ASSERT_TRUE(x_lease.has_value()) << "the hook did not run inside the reload";
  // w: the one in force and the retired counter's; x: the one in force and the lease's.
  EXPECT_GE(ledger->Footprint().versions, 4u) << "the lease's version was pruned under it";
  std::vector<LeaseInfo> leases = ledger->Leases("x");
  ASSERT_EQ(leases.size(), 1u);
  EXPECT_EQ(leases[0].feature, "f");
  ASSERT_OK_AND_ASSIGN(ReleaseResult r, ledger->Release(*x_lease, /*used=*/0));
  EXPECT_EQ(r.refunded, 5);
}

// The waiters' path: a waiter was granted under the credential's mutex (ServeWaiters) and its
// lease inserted by Deliver after the mutex was released; a reload in between pruned the
// version it was granted under. (Now ServeWaiters inserts it under the mutex.)
TEST(LedgerReloadAttackTest, WaiterGrantedBeforeAReloadKeepsItsVersion) {
  FakeClock clock(Utc(2026, 6, 1, 10));
  HookedJournal journal;
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Ledger> ledger,
                       Ledger::Create(DailyCap(10), &clock, LedgerOptions{.journal = &journal}));
  ASSERT_OK_AND_ASSIGN(Decision first, ledger->Acquire(Req("x", 10)));
  ASSERT_TRUE(first.granted);
  std::optional<absl::StatusOr<Decision>> answer;
  ledger->AcquireOrWait(Req("x", 4), absl::Minutes(1), /*priority=*/0,
                        [&](absl::StatusOr<Decision> d) { answer = std::move(d); });
  ASSERT_FALSE(answer.has_value());
  // The refund serves the waiter; its lease is written (PutLease) before it enters the table.
  ReloadInTheGap reload([&] { return ledger->Reload(DailyCap(9)); });
  journal.BeforeNextPutLease(reload.Hook());
  ASSERT_OK(ledger->Release(first.lease_id, /*used=*/0).status());
  ASSERT_OK(reload.Join());
  ASSERT_TRUE(answer.has_value());
  ASSERT_OK(answer->status());
  ASSERT_TRUE((*answer)->granted);
  EXPECT_EQ(ledger->Footprint().versions, 2u) << "the waiter's lease's version was pruned";
  std::vector<LeaseInfo> leases = ledger->Leases("x");
  ASSERT_EQ(leases.size(), 1u);
  EXPECT_EQ(leases[0].feature, "f");
  ASSERT_OK_AND_ASSIGN(ReleaseResult r, ledger->Release((*answer)->lease_id, /*used=*/0));
  EXPECT_EQ(r.refunded, 4);
}

// ---- BUG 2: another credential's version, reused by fingerprint, can be an older version of
// this credential: RebuiltSince then finds it under its new seq and accepts refunds made
// before the rebuilds.

// Two credentials with the same features share one compiled version V1. x is edited (its
// counter rebuilt) and brought back to V1's features: the reload takes y's V1 from the
// fingerprint map, and x's versions hold V1 twice (seq 0 and a newer seq). A lease granted
// under the first V1 now counts as granted after the rebuild.
Policy Pair(const std::vector<LimitSpec>& y_limits, const std::vector<LimitSpec>& x_limits) {
  Policy p;
  p.credentials.push_back(Credential("y", "", {Feature("f", y_limits)}));
  p.credentials.push_back(Credential("x", "", {Feature("f", x_limits)}));
  return p;
}

TEST(LedgerReloadAttackTest, RefundAfterARebuildIsRefusedWhenTheOldVersionComesBackShared) {
  FakeClock clock(Utc(2026, 6, 1, 10));
  const std::vector<LimitSpec> v1 = {Sliding("per_minute", 10, absl::Minutes(1), 6)};
  const std::vector<LimitSpec> v2 = {Sliding("per_minute", 20, absl::Minutes(1), 6)};
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Ledger> ledger, Ledger::Create(Pair(v1, v1), &clock));
  ASSERT_OK_AND_ASSIGN(Decision lease, ledger->Acquire(Req("x", 4)));
  ASSERT_TRUE(lease.granted);
  ASSERT_OK(ledger->Reload(Pair(v1, v2)));  // raised: x's counter rebuilt
  ASSERT_OK(ledger->Reload(Pair(v1, v1)));  // lowered back: x reuses y's V1
  // The lease's token names a counter that has been rebuilt since: it gives nothing back
  // (as on main before the change, where V1 came back as a new object).
  ASSERT_OK_AND_ASSIGN(ReleaseResult r, ledger->Release(lease.lease_id, /*used=*/0));
  EXPECT_EQ(r.refunded, 0);
}

// What the accepted refund costs: the upstream said 7 of 10 were used (adopted); a refund of
// a lease granted before that must not undercut it. The adoption lived in the counter the
// rebuild replaced; the retired counter that still held it is dropped when the limit is
// removed, and the limit brought back from `removed` carries the rebuilt counter, which knows
// nothing of the adoption. With the refund accepted, 8 more are granted in a day whose
// upstream count is already 7 of 10.
TEST(LedgerReloadAttackTest, AnAcceptedStaleRefundUndercutsTheUpstreamsCount) {
  FakeClock clock(Utc(2026, 6, 1, 10));
  const LimitSpec spare = Calendar("spare", 1000, CalendarUnit::kDay);
  const std::vector<LimitSpec> v1 = {Calendar("per_day", 10, CalendarUnit::kDay), spare};
  const std::vector<LimitSpec> v2 = {Calendar("per_day", 20, CalendarUnit::kDay), spare};
  const std::vector<LimitSpec> v3 = {spare};
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Ledger> ledger, Ledger::Create(Pair(v1, v1), &clock));
  ASSERT_OK_AND_ASSIGN(Decision lease, ledger->Acquire(Req("x", 5)));
  ASSERT_TRUE(lease.granted);
  UpstreamAnswer a;
  a.credential = "x";
  a.feature = "f";
  a.http_status = 200;
  a.headers = {{"X-RateLimit-Limit", "10"}, {"X-RateLimit-Remaining", "3"}};
  ASSERT_OK_AND_ASSIGN(ReportResult adopted, ledger->Report(a));
  ASSERT_EQ(adopted.adopted.size(), 1u);
  ASSERT_EQ(Used(*ledger, "x", "f.per_day"), 7);  // the upstream counts 7 today

  clock.Advance(absl::Minutes(1));
  ASSERT_OK(ledger->Reload(Pair(v1, v2)));  // raised: rebuilt, the old counter retired
  ASSERT_OK(ledger->Reload(Pair(v1, v3)));  // removed: the retired counter ends with it
  ASSERT_OK(ledger->Reload(Pair(v1, v1)));  // back, as y's V1: carried from `removed`
  // (`spare` was never rebuilt: its 5 units come back, as they should.)
  ASSERT_OK(ledger->Release(lease.lease_id, /*used=*/0).status());
  EXPECT_EQ(Used(*ledger, "x", "f.per_day"), 7)
      << "a refund of a lease granted before the adoption and the rebuild";
  // Never over: the upstream counts 7; at most 3 more today.
  EXPECT_LE(GrantsUntilDenied(*ledger, "x"), 3);
}

// ---- Regression tests (pass on the change): what pruning and reuse must keep doing.

// Reusing the version in force must not move rebuilt_at: a lease granted after a rebuild, under
// the rebuilt version, still refunds after any number of unchanged reloads.
TEST(LedgerReloadAttackTest, UnchangedReloadsAfterARebuildKeepRefundsOfLaterLeases) {
  FakeClock clock(Utc(2026, 6, 1, 10));
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Ledger> ledger, Ledger::Create(DailyCap(10), &clock));
  ASSERT_OK_AND_ASSIGN(Decision before, ledger->Acquire(Req("x", 2)));
  ASSERT_OK(ledger->Reload(DailyCap(20)));  // rebuilt
  ASSERT_OK_AND_ASSIGN(Decision after, ledger->Acquire(Req("x", 3)));
  ASSERT_TRUE(after.granted);
  for (int i = 0; i < 5; ++i) ASSERT_OK(ledger->Reload(DailyCap(20)));
  ASSERT_OK_AND_ASSIGN(ReleaseResult r_after, ledger->Release(after.lease_id, /*used=*/0));
  EXPECT_EQ(r_after.refunded, 3);
  ASSERT_OK_AND_ASSIGN(ReleaseResult r_before, ledger->Release(before.lease_id, /*used=*/0));
  EXPECT_EQ(r_before.refunded, 0);
}

// A → B (rebuild) → A's exact features (a new object: B was in force): an A-era refund is
// refused, and a lease granted under the new A refunds.
TEST(LedgerReloadAttackTest, BackToTheOldFeaturesOnOneCredentialRefusesOldRefunds) {
  FakeClock clock(Utc(2026, 6, 1, 10));
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Ledger> ledger, Ledger::Create(DailyCap(10), &clock));
  ASSERT_OK_AND_ASSIGN(Decision old_lease, ledger->Acquire(Req("x", 2)));
  ASSERT_OK(ledger->Reload(DailyCap(20)));
  ASSERT_OK(ledger->Reload(DailyCap(10)));
  ASSERT_OK_AND_ASSIGN(Decision new_lease, ledger->Acquire(Req("x", 3)));
  ASSERT_TRUE(new_lease.granted);
  ASSERT_OK_AND_ASSIGN(ReleaseResult r_old, ledger->Release(old_lease.lease_id, /*used=*/0));
  EXPECT_EQ(r_old.refunded, 0);
  ASSERT_OK_AND_ASSIGN(ReleaseResult r_new, ledger->Release(new_lease.lease_id, /*used=*/0));
  EXPECT_EQ(r_new.refunded, 3);
}

// Credentials sharing one version by fingerprint, then diverging: each keeps its own
// counters, leases under the shared version release on both, and pruning one credential's
// versions does not free what the other still uses.
TEST(LedgerReloadAttackTest, SharedVersionsDivergeWithoutDanglingLeases) {
  FakeClock clock(Utc(2026, 6, 1, 10));
  const std::vector<LimitSpec> a = {Sliding("per_minute", 10, absl::Minutes(1)),
                                    Concurrency("jobs", 3)};
  const std::vector<LimitSpec> b = {Sliding("per_minute", 10, absl::Minutes(1)),
                                    Calendar("jobs", 3, CalendarUnit::kDay)};
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Ledger> ledger, Ledger::Create(Pair(a, a), &clock));
  ASSERT_OK_AND_ASSIGN(Decision on_x, ledger->Acquire(Req("x", 2)));
  ASSERT_OK_AND_ASSIGN(Decision on_y, ledger->Acquire(Req("y", 2)));
  ASSERT_TRUE(on_x.granted && on_y.granted);
  ASSERT_OK(ledger->Reload(Pair(b, a)));  // y diverges (jobs: concurrency -> calendar)
  ASSERT_OK(ledger->Reload(Pair(b, b)));  // x follows, sharing y's new version
  ASSERT_OK(ledger->Reload(Pair(a, b)));  // y back, x stays
  for (int i = 0; i < 3; ++i) ASSERT_OK(ledger->Reload(Pair(a, b)));
  ASSERT_OK_AND_ASSIGN(absl::Time ex, ledger->Renew(on_x.lease_id, absl::Minutes(1)));
  EXPECT_EQ(ex, clock.Now() + absl::Minutes(1));
  EXPECT_EQ(ledger->Leases("").size(), 2u);
  ASSERT_OK(ledger->Release(on_x.lease_id, /*used=*/0).status());
  ASSERT_OK(ledger->Release(on_y.lease_id, /*used=*/0).status());
  // Nothing holds the old versions any more once the retired counters drain.
  clock.Advance(absl::Hours(48));
  ASSERT_OK(ledger->Reload(Pair(a, b)));
  EXPECT_EQ(ledger->Footprint().versions, 2u);
}

// Reset between reloads drops the retired and removed counters that kept old versions; the
// next reload prunes them, and a lease granted before the reset still releases (its version
// kept by the lease) and gives nothing back.
TEST(LedgerReloadAttackTest, ResetBetweenReloadsPrunesOnlyWhatNothingHolds) {
  FakeClock clock(Utc(2026, 6, 1, 10));
  auto policy = [](bool with_hourly, int64_t cap) {
    std::vector<LimitSpec> limits = {Calendar("per_day", cap, CalendarUnit::kDay)};
    if (with_hourly) limits.push_back(Calendar("per_hour", 5, CalendarUnit::kHour));
    return OneCredential("x", {Feature("f", limits)});
  };
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Ledger> ledger, Ledger::Create(policy(true, 10), &clock));
  ASSERT_OK_AND_ASSIGN(Decision lease, ledger->Acquire(Req("x", 3)));
  ASSERT_OK(ledger->Reload(policy(false, 20)));  // per_day rebuilt (retired), per_hour removed
  ASSERT_OK(ledger->Reset("x"));
  ASSERT_OK(ledger->Reload(policy(false, 20)));
  EXPECT_EQ(ledger->Footprint().versions, 2u);  // in force, and the lease's
  ASSERT_OK_AND_ASSIGN(ReleaseResult r, ledger->Release(lease.lease_id, /*used=*/0));
  EXPECT_EQ(r.refunded, 0);
  EXPECT_EQ(Used(*ledger, "x", "f.per_day"), 0);
  EXPECT_EQ(GrantsUntilDenied(*ledger, "x"), 20);
  ASSERT_OK(ledger->Reload(policy(false, 20)));
  EXPECT_EQ(ledger->Footprint().versions, 1u);
}

// A removed limit brought back after its version lost every lease: the removed counter alone
// keeps that version (its Rule), and the limit comes back with its units.
TEST(LedgerReloadAttackTest, ARemovedLimitKeepsItsRuleAliveUntilItComesBack) {
  FakeClock clock(Utc(2026, 6, 1, 10));
  auto policy = [](bool with_daily) {
    std::vector<LimitSpec> limits = {Sliding("per_minute", 100, absl::Minutes(1))};
    if (with_daily) limits.push_back(Calendar("per_day", 10, CalendarUnit::kDay));
    return OneCredential("x", {Feature("f", limits)});
  };
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Ledger> ledger, Ledger::Create(policy(true), &clock));
  ASSERT_EQ(GrantsUntilDenied(*ledger, "x"), 10);
  ASSERT_OK(ledger->Reload(policy(false)));
  clock.Advance(absl::Minutes(11));  // every lease expired
  EXPECT_EQ(ledger->Sweep(), 10);
  for (int i = 0; i < 3; ++i) ASSERT_OK(ledger->Reload(policy(false)));
  EXPECT_EQ(ledger->Footprint().versions, 2u);  // in force, and the removed counter's
  ASSERT_OK(ledger->Reload(policy(true)));
  EXPECT_EQ(Used(*ledger, "x", "f.per_day"), 10);
  EXPECT_EQ(GrantsUntilDenied(*ledger, "x"), 0);
}

// Restart after pruned versions: the journal's leases are restored under the version in force
// and release there; units stay counted.
TEST(LedgerReloadAttackTest, RestoreAfterPrunedVersionsReleasesUnderTheVersionInForce) {
  FakeClock clock(Utc(2026, 6, 1, 10));
  MemoryJournal journal;
  auto policy = [](int64_t cap) {
    return OneCredential("x", {Feature("f", {Calendar("per_day", cap, CalendarUnit::kDay),
                                             Concurrency("jobs", 4)})});
  };
  LeaseId held;
  {
    ASSERT_OK_AND_ASSIGN(std::unique_ptr<Ledger> ledger,
                         Ledger::Create(policy(10), &clock, LedgerOptions{.journal = &journal}));
    ASSERT_OK(ledger->Restore());
    ASSERT_OK_AND_ASSIGN(Decision d, ledger->Acquire(Req("x", 2)));
    ASSERT_TRUE(d.granted);
    held = d.lease_id;
    for (int64_t cap = 9; cap >= 5; --cap) ASSERT_OK(ledger->Reload(policy(cap)));
    EXPECT_EQ(ledger->Footprint().versions, 2u);
  }
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Ledger> restarted,
                       Ledger::Create(policy(5), &clock, LedgerOptions{.journal = &journal}));
  ASSERT_OK(restarted->Restore());
  ASSERT_EQ(restarted->Leases("x").size(), 1u);
  ASSERT_OK(restarted->Reload(policy(6)));  // rebuilt (raised): the restored lease's version
  ASSERT_OK(restarted->Reload(policy(5)));
  ASSERT_OK_AND_ASSIGN(ReleaseResult r, restarted->Release(held, /*used=*/0));
  EXPECT_EQ(r.freed, 2);
  EXPECT_EQ(r.refunded, 0);  // rebuilt since it was granted
  EXPECT_LE(GrantsUntilDenied(*restarted, "x"), 3);
}

// BUG 1 without hooks: reloads (capacities lowered, so nothing retired) racing grants, renewals
// and releases on real threads (bounded). A grant that lands between a reload's scan and the
// insertion of its lease loses its version: heap-use-after-free in Leases/Renew/Release under
// ASan (a plain build usually reads the freed memory unnoticed).
TEST(LedgerReloadAttackTest, ReloadsRacingGrantsLeaveNoDanglingLease) {
  FakeClock clock(Utc(2026, 6, 1, 10));
  auto policy = [](int step) {
    Policy p;
    for (const char* name : {"a", "b", "x"}) {
      p.credentials.push_back(Credential(
          name, "", {Feature("f", {Calendar("per_day", 1000 - step % 7, CalendarUnit::kDay),
                                   Concurrency("jobs", 50 - step % 3)})}));
    }
    return p;
  };
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Ledger> ledger, Ledger::Create(policy(0), &clock));
  std::atomic<bool> stop{false};
  std::atomic<int> granted{0};
  std::vector<std::thread> workers;
  for (int t = 0; t < 2; ++t) {
    workers.emplace_back([&] {
      for (int i = 0; i < 400 && !stop.load(); ++i) {
        absl::StatusOr<Decision> d = ledger->Acquire(Req("x", 1, absl::Minutes(1)));
        if (!d.ok() || !d->granted) continue;
        granted.fetch_add(1);
        (void)ledger->Leases("x");
        (void)ledger->Renew(d->lease_id, absl::Minutes(2));
        (void)ledger->Release(d->lease_id, /*used=*/1);
      }
    });
  }
  for (int step = 1; step <= 200; ++step) ASSERT_OK(ledger->Reload(policy(step)));
  stop.store(true);
  for (std::thread& w : workers) w.join();
  EXPECT_LE(Used(*ledger, "x", "f.per_day"), 1000);
  EXPECT_LE(granted.load(), 1000);
}

}  // namespace
}  // namespace quotad
