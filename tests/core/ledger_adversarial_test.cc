// The ledger under attack: the tests three adversarial reviews wrote against quotad's promise
// "never grant more than a limit allows" (SPEC 2, 4, 6), kept as regression tests. Each asserts
// the promise and fails when a hole opens. The first part (StateAcrossRestartAndReloadTest, the
// first review, against 65ca80e) attacks the state a ledger keeps across a restart (a new ledger
// restored from the same MemoryJournal, as after kill -9), a reload and a reset: guard carries,
// scope counters and seeds, changes of limit kind or period, refunds after restart, reset or a
// lost lease deletion; its Control_ and Probe_ tests pin the neighbouring cases that were found
// sound. The second part (WallClockAndAdoptionTest, the second and third reviews) attacks time
// and the upstream's answers: wall-clock steps around leases, windows, buckets, cooldowns,
// waiters and Report headers; outside estimates across restart and reload; refunds around an
// adoption and a restart. DISABLED_ tests are documented findings that are not fixed yet.
//
// Time model of the second part: the FakeClock's monotonic reading is the true time (the
// upstream lives on it); StepWall() moves only quotad's wall clock.

#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "service/core/clock.h"
#include "service/core/ledger.h"
#include "service/store/memory_journal.h"
#include "tests/support/policy_builders.h"
#include "tests/support/status_matchers.h"

namespace quotad {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using testing::Bucket;
using testing::Calendar;
using testing::Concurrency;
using testing::Feature;
using testing::IsOk;
using testing::OneCredential;
using testing::Rolling;
using testing::Sliding;
using testing::StatusIs;
using testing::Unlimited;
using testing::Utc;

// =============================================================================================
// Part 1: state across restart, reload and reset (the first review)
// =============================================================================================

// A journal whose deferred lease deletions are lost in the crash (journal.h: DeleteLease "may be
// applied late").
class LossyDeleteJournal : public MemoryJournal {
 public:
  void DeleteLease(const std::string&) override {}
};

class StateAcrossRestartAndReloadTest : public ::testing::Test {
 protected:
  std::unique_ptr<Ledger> Make(const Policy& p, Journal* j = nullptr, double fraction = 0.01) {
    LedgerOptions o;
    o.journal = j;
    o.reserve_fraction = fraction;
    auto l = Ledger::Create(p, &clock_, o);
    EXPECT_OK(l);
    if (j != nullptr) {
      absl::Status s = (*l)->Restore();
      EXPECT_OK(s);
    }
    return std::move(*l);
  }
  absl::StatusOr<Decision> Try(Ledger& l, int64_t cost = 1, absl::string_view scope = "",
                               absl::string_view feature = "f",
                               absl::Duration ttl = absl::ZeroDuration()) {
    AcquireRequest r;
    r.credential = "key";
    r.feature = feature;
    r.scope = scope;
    r.cost = cost;
    r.lease_ttl = ttl;
    return l.Acquire(r);
  }
  // Grants of `cost` until the first denial (at most `max`); returns units granted.
  int64_t Drain(Ledger& l, int64_t cost = 1, absl::string_view scope = "",
                absl::string_view feature = "f", int max = 1000) {
    int64_t units = 0;
    for (int i = 0; i < max; ++i) {
      auto d = Try(l, cost, scope, feature);
      if (!d.ok() || !d->granted) break;
      units += cost;
    }
    return units;
  }
  int64_t Used(Ledger& l, absl::string_view name, absl::string_view scope = "") {
    const auto usage = l.Usage("key");
    for (const LimitStatus& s : *usage) {
      if (s.name == name && s.scope == scope) return s.used;
    }
    return -1;
  }

  FakeClock clock_{Utc(2026, 6, 21, 10)};
};

LimitSpec WithGuard(LimitSpec l, absl::Duration g) {
  l.guard = g;
  return l;
}
LimitSpec Scoped(LimitSpec l) {
  l.scoped = true;
  return l;
}

// --- Calendar guard carry is not journaled when the current window's block still has room ---
TEST_F(StateAcrossRestartAndReloadTest, GuardCarryLostOnRestartWhenCurrentBlockHasRoom) {
  const Policy p = OneCredential(
      "key", {Feature("f", {WithGuard(Calendar("m", 10, CalendarUnit::kMinute), absl::Seconds(10))})});
  MemoryJournal j;
  clock_.Set(Utc(2026, 6, 21, 10, 0, 0));
  int64_t carried = 0;
  {
    auto l = Make(p, &j, /*fraction=*/1.0);  // block = capacity
    ASSERT_TRUE(Try(*l, 1)->granted);        // reserves 10 in window 10:00
    clock_.Set(Utc(2026, 6, 21, 10, 0, 55));  // within the guard
    ASSERT_TRUE(Try(*l, 9)->granted);        // counts in 10:01 too (carry 9)
    carried = 9;
  }
  clock_.Set(Utc(2026, 6, 21, 10, 1, 1));  // restart in the next window
  auto l = Make(p, &j, 1.0);
  const int64_t granted = Drain(*l);
  EXPECT_LE(carried + granted, 10) << "window 10:01 got " << granted << " new units on top of "
                                   << carried << " carried by the guard";
}

// --- A denied request erases an existing scope counter when another scoped limit's counter was
// created for it (restart: the scoped concurrency counter is not restored) ---
TEST_F(StateAcrossRestartAndReloadTest, DeniedRequestErasesRestoredScopeCounter) {
  const Policy p = OneCredential(
      "key", {Feature("f", {Scoped(Calendar("daily", 10, CalendarUnit::kDay)),
                            Scoped(Concurrency("slots", 100))})});
  MemoryJournal j;
  {
    auto l = Make(p, &j);
    for (int i = 0; i < 10; ++i) {
      auto d = Try(*l, 1, "a");
      ASSERT_TRUE(d->granted);
      ASSERT_OK(l->Release(d->lease_id, std::nullopt));  // frees the slot, keeps the unit
    }
  }
  clock_.Advance(absl::Minutes(1));
  auto l = Make(p, &j);
  EXPECT_FALSE(Try(*l, 1, "a")->granted);  // denied by daily...
  const int64_t more = Drain(*l, 1, "a");  // ...which that denial erased
  EXPECT_EQ(more, 0) << "scope a of daily (cap 10, used 10) granted " << more << " more today";
}

// --- Same, without restart: a reload adds a scoped limit ---
TEST_F(StateAcrossRestartAndReloadTest, DeniedRequestErasesScopeCounterAfterReloadAddsScopedLimit) {
  auto l = Make(OneCredential("key", {Feature("f", {Scoped(Calendar("daily", 10, CalendarUnit::kDay))})}));
  ASSERT_EQ(Drain(*l, 1, "a"), 10);
  ASSERT_OK(l->Reload(OneCredential(
      "key", {Feature("f", {Scoped(Calendar("daily", 10, CalendarUnit::kDay)),
                            Scoped(Sliding("per_min", 100, absl::Minutes(1)))})})));
  EXPECT_FALSE(Try(*l, 1, "a")->granted);
  const int64_t more = Drain(*l, 1, "a");
  EXPECT_EQ(more, 0) << "scope a of daily (cap 10, used 10) granted " << more << " more today";
}

// --- Concurrency scoped -> unscoped: held slots of other scopes are ignored ---
TEST_F(StateAcrossRestartAndReloadTest, ConcurrencyScopedToUnscopedIgnoresHeldSlots) {
  auto l = Make(OneCredential("key", {Feature("f", {Scoped(Concurrency("slots", 2))})}));
  ASSERT_TRUE(Try(*l, 1, "a")->granted);
  ASSERT_TRUE(Try(*l, 1, "a")->granted);
  ASSERT_OK(l->Reload(OneCredential("key", {Feature("f", {Concurrency("slots", 2)})})));
  const int64_t more = Drain(*l, 1, "b");
  EXPECT_EQ(more, 0) << "2 slots held, unscoped capacity 2, yet " << more << " more granted ("
                     << l->Leases("key").size() << " live leases)";
}

// --- Rolling period shortened, then restart: Restore keeps the record that ends last, dropping
// the new window's units ---
TEST_F(StateAcrossRestartAndReloadTest, RollingPeriodShortenedThenRestartOverGrants) {
  MemoryJournal j;
  const Policy a = OneCredential("key", {Feature("f", {Rolling("win", 10, absl::Hours(10))})});
  const Policy b = OneCredential("key", {Feature("f", {Rolling("win", 10, absl::Hours(2))})});
  int64_t granted = 0;
  {
    auto l = Make(a, &j);
    granted += Drain(*l, 1, "", "f", 5);  // 5 in [0, 10h)
    clock_.Advance(absl::Hours(1));
    ASSERT_OK(l->Reload(b));  // new window [1h, 3h) seeded with 5
    granted += Drain(*l);           // 5 more
    ASSERT_EQ(granted, 10);
  }
  clock_.Advance(absl::Minutes(30));
  auto l = Make(b, &j);
  const int64_t more = Drain(*l);
  EXPECT_EQ(more, 0) << "10 granted in [0,1h30) under both configs (cap 10), then " << more
                     << " more after restart";
}

// --- Calendar -> rolling, then restart: same root cause ---
TEST_F(StateAcrossRestartAndReloadTest, CalendarToRollingThenRestartOverGrants) {
  MemoryJournal j;
  clock_.Set(Utc(2026, 6, 21, 12));
  const Policy a = OneCredential("key", {Feature("f", {Calendar("win", 10, CalendarUnit::kDay)})});
  const Policy b = OneCredential("key", {Feature("f", {Rolling("win", 10, absl::Hours(1))})});
  int64_t granted = 0;
  {
    auto l = Make(a, &j);
    granted += Drain(*l, 1, "", "f", 5);
    ASSERT_OK(l->Reload(b));
    granted += Drain(*l);
    ASSERT_EQ(granted, 10);
  }
  clock_.Advance(absl::Minutes(30));
  auto l = Make(b, &j);
  const int64_t more = Drain(*l);
  EXPECT_EQ(more, 0) << more << " more granted after restart; day and hour both at 10/10";
}

// --- A refund after restart undercuts the adopted upstream count ---
TEST_F(StateAcrossRestartAndReloadTest, RefundAfterRestartUndercutsAdoptedCount) {
  MemoryJournal j;
  const Policy p = OneCredential("key", {Feature("f", {Calendar("daily", 10, CalendarUnit::kDay)})});
  LeaseId l1;
  {
    auto l = Make(p, &j);
    auto d = Try(*l, 5);
    ASSERT_TRUE(d->granted);
    l1 = d->lease_id;
    UpstreamAnswer ans;
    ans.credential = "key";
    ans.feature = "f";
    ans.http_status = 200;
    ans.headers = {{"X-RateLimit-Limit", "10"}, {"X-RateLimit-Remaining", "0"}};
    auto r = l->Report(ans);
    ASSERT_OK(r);
    ASSERT_EQ(Used(*l, "f.daily"), 10);
  }
  clock_.Advance(absl::Seconds(1));
  auto l = Make(p, &j);
  auto rel = l->Release(l1, 0);
  ASSERT_OK(rel);
  const int64_t more = Drain(*l);
  EXPECT_EQ(more, 0) << "upstream said 10/10 used; refund gave back " << rel->refunded
                     << " and " << more << " more were granted";
}

// --- A release whose deferred deletion is lost refunds twice after restart ---
TEST_F(StateAcrossRestartAndReloadTest, LostLeaseDeletionRefundsTwiceAfterRestart) {
  LossyDeleteJournal j;
  const Policy p = OneCredential("key", {Feature("f", {Calendar("daily", 10, CalendarUnit::kDay)})});
  LeaseId l1;
  int64_t real = 0;  // units the upstream really charged today
  {
    auto l = Make(p, &j);
    auto d = Try(*l, 10);
    ASSERT_TRUE(d->granted);
    l1 = d->lease_id;
    ASSERT_EQ(l->Release(l1, 0)->refunded, 10);  // upstream charged nothing for it
    ASSERT_TRUE(Try(*l, 10)->granted);           // L2: really used
    real += 10;
  }
  clock_.Advance(absl::Seconds(1));
  auto l = Make(p, &j);
  auto rel = l->Release(l1, 0);  // the client's retry of the Release the crash did not answer
  real += Drain(*l);
  EXPECT_LE(real, 10) << "second refund of L1 gave back "
                      << (rel.ok() ? rel->refunded : -1) << "; real use today " << real;
}

// --- A limit removed and re-added by reloads forgets its window (a restart would not) ---
TEST_F(StateAcrossRestartAndReloadTest, LimitRemovedThenReaddedForgetsUsage) {
  MemoryJournal j;
  const Policy a = OneCredential("key", {Feature("f", {Calendar("daily", 10, CalendarUnit::kDay)})});
  const Policy b = OneCredential("key", {Feature("f", {Unlimited("count")})});
  auto l = Make(a, &j);
  ASSERT_EQ(Drain(*l), 10);
  ASSERT_OK(l->Reload(b));
  ASSERT_OK(l->Reload(a));
  const int64_t more = Drain(*l);
  {
    auto restarted = Make(a, &j);  // what a restart with the same file would grant
    EXPECT_EQ(Drain(*restarted), 0);
  }
  EXPECT_EQ(more, 0) << "daily 10/10 used; after A->B->A the reload granted " << more;
}

// --- Unscoped -> scoped: the scope seeds are memory only; a restart loses them ---
TEST_F(StateAcrossRestartAndReloadTest, ScopeSeedsLostOnRestart) {
  MemoryJournal j;
  const Policy a = OneCredential("key", {Feature("f", {Calendar("daily", 10, CalendarUnit::kDay)})});
  const Policy b =
      OneCredential("key", {Feature("f", {Scoped(Calendar("daily", 10, CalendarUnit::kDay))})});
  {
    auto l = Make(a, &j);
    ASSERT_EQ(Drain(*l, 1, "a"), 10);
    ASSERT_OK(l->Reload(b));
    ASSERT_FALSE(Try(*l, 1, "a")->granted);  // seeded with 10
  }
  clock_.Advance(absl::Seconds(1));
  auto l = Make(b, &j);
  const int64_t more = Drain(*l, 1, "a");
  EXPECT_EQ(more, 0) << "scope a used 10/10 today; after restart " << more << " more";
}

// --- Unlimited counts overflow int64 (no bound on cost), and a reload then seeds nothing ---
TEST_F(StateAcrossRestartAndReloadTest, UnlimitedCountOverflowsThenReloadSeedsNothing) {
  const Policy a = OneCredential("key", {Feature("f", {Unlimited("daily", CalendarUnit::kDay)})});
  const Policy b = OneCredential("key", {Feature("f", {Calendar("daily", 10, CalendarUnit::kDay)})});
  auto l = Make(a);
  const int64_t big = std::numeric_limits<int64_t>::max() / 2 + 1;
  // A cost past the largest capacity any limit may have is refused, naming it.
  auto d1 = Try(*l, big);
  ASSERT_THAT(d1, StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(absl::StrCat(big))));
  for (int i = 0; i < 1000; ++i) ASSERT_TRUE(Try(*l, kMaxCapacity)->granted);
  EXPECT_GE(Used(*l, "f.daily"), 0) << "used wrapped around";
  ASSERT_OK(l->Reload(b));
  const int64_t more = Drain(*l);
  EXPECT_EQ(more, 0) << "day already counted > 10 units; reload to cap 10 granted " << more;
}

// --- Admin Reset then a refund of a lease granted before it gives back others' units ---
TEST_F(StateAcrossRestartAndReloadTest, RefundAfterResetTakesOthersUnits) {
  auto l = Make(OneCredential("key", {Feature("f", {Calendar("daily", 10, CalendarUnit::kDay)})}));
  auto l1 = Try(*l, 10);
  ASSERT_TRUE(l1->granted);
  ASSERT_OK(l->Reset("key"));
  ASSERT_TRUE(Try(*l, 10)->granted);  // L2, after the reset
  auto rel = l->Release(l1->lease_id, 0);
  ASSERT_OK(rel);
  const int64_t more = Drain(*l);
  EXPECT_EQ(10 + more, 10) << "since the reset: L2 (10) plus " << more
                           << " (L1's refund of " << rel->refunded << " took L2's units)";
}


// ===================== Controls and probes that held (expected to PASS) =====================

TEST_F(StateAcrossRestartAndReloadTest, Control_GuardCarryWithoutRestart) {
  const Policy p = OneCredential(
      "key", {Feature("f", {WithGuard(Calendar("m", 10, CalendarUnit::kMinute), absl::Seconds(10))})});
  MemoryJournal j;
  clock_.Set(Utc(2026, 6, 21, 10, 0, 0));
  auto l = Make(p, &j, 1.0);
  ASSERT_TRUE(Try(*l, 1)->granted);
  clock_.Set(Utc(2026, 6, 21, 10, 0, 55));
  ASSERT_TRUE(Try(*l, 9)->granted);
  clock_.Set(Utc(2026, 6, 21, 10, 1, 1));
  EXPECT_LE(Drain(*l), 1);
}

TEST_F(StateAcrossRestartAndReloadTest, Control_AdoptedRefundWithoutRestart) {
  const Policy p = OneCredential("key", {Feature("f", {Calendar("daily", 10, CalendarUnit::kDay)})});
  auto l = Make(p);
  auto d = Try(*l, 5);
  UpstreamAnswer ans;
  ans.credential = "key";
  ans.feature = "f";
  ans.http_status = 200;
  ans.headers = {{"X-RateLimit-Limit", "10"}, {"X-RateLimit-Remaining", "0"}};
  ASSERT_OK(l->Report(ans));
  EXPECT_EQ(l->Release(d->lease_id, 0)->refunded, 0);
  EXPECT_EQ(Drain(*l), 0);
}

TEST_F(StateAcrossRestartAndReloadTest, Control_FaithfulJournalForgetsReleasedLease) {
  MemoryJournal j;
  const Policy p = OneCredential("key", {Feature("f", {Calendar("daily", 10, CalendarUnit::kDay)})});
  LeaseId l1;
  {
    auto l = Make(p, &j);
    l1 = Try(*l, 10)->lease_id;
    ASSERT_OK(l->Release(l1, 0));
    ASSERT_TRUE(Try(*l, 10)->granted);
  }
  auto l = Make(p, &j);
  EXPECT_THAT(l->Release(l1, 0), Not(IsOk()));
  EXPECT_EQ(Drain(*l), 0);
}

TEST_F(StateAcrossRestartAndReloadTest, Probe_ConcurrencyUnscopedToScopedHolds) {
  auto l = Make(OneCredential("key", {Feature("f", {Concurrency("slots", 2)})}));
  ASSERT_TRUE(Try(*l, 1, "a")->granted);
  ASSERT_TRUE(Try(*l, 1, "b")->granted);
  ASSERT_OK(l->Reload(OneCredential("key", {Feature("f", {Scoped(Concurrency("slots", 2))})})));
  EXPECT_EQ(Drain(*l, 1, "a"), 0);
}

TEST_F(StateAcrossRestartAndReloadTest, Probe_RollingPeriodLengthenedThenRestart) {
  MemoryJournal j;
  const Policy a = OneCredential("key", {Feature("f", {Rolling("win", 10, absl::Hours(2))})});
  const Policy b = OneCredential("key", {Feature("f", {Rolling("win", 10, absl::Hours(10))})});
  {
    auto l = Make(a, &j);
    Drain(*l, 1, "", "f", 5);
    clock_.Advance(absl::Hours(1));
    ASSERT_OK(l->Reload(b));
    EXPECT_EQ(Drain(*l), 5);
  }
  clock_.Advance(absl::Minutes(30));
  auto l = Make(b, &j);
  EXPECT_EQ(Drain(*l), 0);
}

TEST_F(StateAcrossRestartAndReloadTest, Probe_CapacityUpDownAndBack) {
  const auto P = [](int64_t cap) {
    return OneCredential("key", {Feature("f", {Sliding("s", cap, absl::Minutes(1))})});
  };
  auto l = Make(P(10));
  ASSERT_EQ(Drain(*l), 10);
  ASSERT_OK(l->Reload(P(20)));
  EXPECT_EQ(Drain(*l), 0);
  ASSERT_OK(l->Reload(P(10)));
  EXPECT_EQ(Drain(*l), 0);
  ASSERT_OK(l->Reload(P(20)));
  EXPECT_EQ(Drain(*l), 0);
  clock_.Advance(absl::Seconds(61));
  EXPECT_EQ(Drain(*l), 20);
}

TEST_F(StateAcrossRestartAndReloadTest, Probe_TokenBucketRefundsAfterRestartAndReload) {
  MemoryJournal j;
  const Policy p = OneCredential("key", {Feature("f", {Bucket("b", 10, absl::Minutes(1), 10)})});
  LeaseId a, b;
  {
    auto l = Make(p, &j);
    a = Try(*l, 5)->lease_id;
    b = Try(*l, 5)->lease_id;
    EXPECT_EQ(Drain(*l), 0);
  }
  clock_.Advance(absl::Seconds(12));  // 2 units refilled
  auto l = Make(p, &j);
  auto ra = l->Release(a, 0);
  auto rb = l->Release(b, 0);
  // b's 5 units are all ahead of now; a's were the first to refill: at most 10 - 2 free again.
  const int64_t freed = (ra.ok() ? ra->refunded : 0) + (rb.ok() ? rb->refunded : 0);
  EXPECT_LE(freed, 8);
  EXPECT_LE(Drain(*l), 10);
}

TEST_F(StateAcrossRestartAndReloadTest, Probe_WaiterNotPassedAcrossDrawsOn) {
  Policy p = OneCredential("key", {Feature("g", {Sliding("s", 2, absl::Minutes(1))}),
                                   Feature("f", {Sliding("own", 100, absl::Minutes(1))})});
  p.credentials[0].features[1].draws_on = {"g"};
  auto l = Make(p);
  ASSERT_EQ(Drain(*l, 1, "", "g"), 2);
  bool answered = false, granted = false;
  AcquireRequest r;
  r.credential = "key";
  r.feature = "g";
  r.cost = 2;
  l->AcquireOrWait(r, absl::Minutes(5), 0, [&](absl::StatusOr<Decision> d) {
    answered = true;
    granted = d.ok() && d->granted;
  });
  EXPECT_FALSE(answered);
  clock_.Advance(absl::Seconds(61));
  // A non-waiting request of f (draws on g.s) must not pass the waiter.
  EXPECT_FALSE(Try(*l, 1, "", "f")->granted);
  l->Pump();
  EXPECT_TRUE(answered && granted);
}

TEST_F(StateAcrossRestartAndReloadTest, Probe_SlidingRefundAfterAdoption) {
  auto l = Make(OneCredential("key", {Feature("f", {Sliding("s", 10, absl::Minutes(1))})}));
  auto d = Try(*l, 5);
  UpstreamAnswer ans;
  ans.credential = "key";
  ans.feature = "f";
  ans.http_status = 200;
  ans.headers = {{"X-RateLimit-Limit", "10"}, {"X-RateLimit-Remaining", "0"}};
  ASSERT_OK(l->Report(ans));
  clock_.Advance(absl::Seconds(1));
  EXPECT_EQ(l->Release(d->lease_id, 0)->refunded, 0);
  EXPECT_EQ(Drain(*l), 0);
}

TEST_F(StateAcrossRestartAndReloadTest, Probe_RenewAfterSlotMovedByReloadIsNotFound) {
  auto l = Make(OneCredential("key", {Feature("f", {Concurrency("slots", 1)})}));
  auto d = Try(*l, 1, "a");
  ASSERT_TRUE(d->granted);
  ASSERT_OK(l->Reload(OneCredential("key", {Feature("f", {Scoped(Concurrency("slots", 1))})})));
  clock_.Advance(absl::Seconds(30));
  auto r = l->Renew(d->lease_id, absl::Minutes(10));
  clock_.Advance(absl::Seconds(31));  // past the original expiry
  const int64_t more = Drain(*l, 1, "a");
  EXPECT_TRUE(!r.ok() || more == 0) << "renewed lease still live, yet " << more << " granted";
}


// =============================================================================================
// Part 2: wall-clock steps, outside estimates and adoption (the second and third reviews)
// =============================================================================================

class WallClockAndAdoptionTest : public ::testing::Test {
 protected:
  void Use(std::vector<FeatureSpec> features, Journal* journal = nullptr,
           std::function<void(absl::Time)> wake = nullptr) {
    policy_ = OneCredential("key", std::move(features));
    LedgerOptions o;
    o.journal = journal;
    o.jitter_seed = 7;
    o.wake = std::move(wake);
    auto ledger = Ledger::Create(policy_, &clock_, o);
    ASSERT_OK(ledger);
    ledger_ = std::move(*ledger);
    if (journal != nullptr) {
      ASSERT_OK(ledger_->Restore());
    }
  }
  ReportResult Report(int status, UpstreamHeaders headers,
                      absl::Time observed_at = absl::InfinitePast()) {
    UpstreamAnswer a;
    a.credential = "key";
    a.feature = "f";
    a.http_status = status;
    a.headers = std::move(headers);
    a.observed_at = observed_at;
    auto r = ledger_->Report(a);
    EXPECT_OK(r);
    return r.ok() ? *r : ReportResult{};
  }
  Decision Acquire(int64_t cost = 1, absl::Duration ttl = absl::ZeroDuration()) {
    AcquireRequest req;
    req.credential = "key";
    req.feature = "f";
    req.cost = cost;
    req.lease_ttl = ttl;
    auto d = ledger_->Acquire(req);
    EXPECT_OK(d);
    return d.ok() ? *d : Decision{};
  }
  // Grants of cost 1 until the first denial (at most `limit`).
  int64_t Drain(int64_t limit = 100000) {
    int64_t n = 0;
    while (n < limit && Acquire().granted) ++n;
    return n;
  }
  // True time, in epoch seconds (what the upstream puts in its headers).
  int64_t TrueEpoch() const { return absl::ToInt64Seconds(clock_.Monotonic()); }

  FakeClock clock_{Utc(2026, 6, 21, 10)};
  Policy policy_;
  std::unique_ptr<Ledger> ledger_;
};

// ---------------------------------------------------------------------------------------------
// HOLES the reviews found (fixed, or kept DISABLED_ as findings): a failure is a regression
// ---------------------------------------------------------------------------------------------

// A refund of a lease charged BEFORE an adoption, after the count climbed back past the adopted
// floor, gives back units the upstream never counted while forgetting the outside units the
// adoption taught: calendar (and rolling) refunds only keep used >= adopted_.
TEST_F(WallClockAndAdoptionTest, RefundOfPreAdoptionLeaseUndercutsLearntOutsideUse) {
  Use({Feature("f", {Calendar("day", 100, CalendarUnit::kDay)})});
  Decision lease = Acquire(10);  // L: the upstream will charge none of it (used = 0)
  ASSERT_TRUE(lease.granted);
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(Acquire(10).granted);  // ours: 50 (40 real + L)
  // The upstream: 60 used = our 40 real units + 20 from outside (L is free upstream).
  Report(200, {{"X-RateLimit-Limit", "100"}, {"X-RateLimit-Remaining", "40"}});
  int64_t upstream = 60;
  for (int i = 0; i < 4; ++i) {
    ASSERT_TRUE(Acquire(10).granted);
    upstream += 10;
  }
  ASSERT_EQ(upstream, 100);
  // The worker reports that the upstream charged nothing for L.
  auto rel = ledger_->Release(lease.lease_id, 0);
  ASSERT_OK(rel);
  const int64_t more = Drain();
  upstream += more;
  EXPECT_LE(upstream, 100) << "refunded " << rel->refunded << " then granted " << more
                           << ": the upstream's window holds " << upstream << " of 100";
}

TEST_F(WallClockAndAdoptionTest, RollingRefundOfPreAdoptionLeaseUndercutsLearntOutsideUse) {
  Use({Feature("f", {Rolling("win", 100, absl::Hours(24))})});
  Decision lease = Acquire(10);
  ASSERT_TRUE(lease.granted);
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(Acquire(10).granted);
  Report(200, {{"X-RateLimit-Limit", "100"}, {"X-RateLimit-Remaining", "40"}});
  int64_t upstream = 60;
  for (int i = 0; i < 4; ++i) {
    ASSERT_TRUE(Acquire(10).granted);
    upstream += 10;
  }
  auto rel = ledger_->Release(lease.lease_id, 0);
  ASSERT_OK(rel);
  const int64_t more = Drain();
  upstream += more;
  EXPECT_LE(upstream, 100) << "refunded " << rel->refunded << " then granted " << more;
}

// quotad's wall clock steps 1 h forward (NTP step to a wrong time, or a bad step). A rolling
// window's X-RateLimit-Reset (true epoch, 10 min ahead) now reads as 50 min in the past, so
// the full count is dropped as "an earlier window" and quotad grants the whole capacity into
// the upstream's full window. The rolling window is a duration: a wall step must not shorten it.
// FINDING, kept disabled: the upstream's absolute times (X-RateLimit-Reset epochs, Retry-After
// dates, and Retry-After seconds anchored at the answer's wall time) are read on quotad's wall
// clock; when it is wrong against the upstream's, they are misplaced by the error. README,
// Operations: keep the wall clock synced.
TEST_F(WallClockAndAdoptionTest, DISABLED_RollingResetEpochAfterWallStepForwardDropsFullCount) {
  Use({Feature("f", {Rolling("win", 100, absl::Hours(1))})});
  ASSERT_TRUE(Acquire().granted);  // ours opens now; the upstream's opened 50 min ago (outside)
  clock_.StepWall(absl::Hours(1));
  const ReportResult r =
      Report(200, {{"X-RateLimit-Limit", "100"},
                   {"X-RateLimit-Remaining", "0"},
                   {"X-RateLimit-Reset", absl::StrCat(TrueEpoch() + 600)}});
  const int64_t granted = Drain();
  EXPECT_EQ(granted, 0) << "upstream full for 10 more minutes, quotad granted " << granted
                        << "; warnings: "
                        << (r.warnings.empty() ? std::string("none") : r.warnings[0]);
}

// Sliding: the wall stepped 30 s forward; the upstream's reset (true +50 s) reads as +20 s, so
// the adopted units leave 30 s before the upstream lets go of them.
// FINDING, kept disabled: the upstream's absolute times (X-RateLimit-Reset epochs, Retry-After
// dates, and Retry-After seconds anchored at the answer's wall time) are read on quotad's wall
// clock; when it is wrong against the upstream's, they are misplaced by the error. README,
// Operations: keep the wall clock synced.
TEST_F(WallClockAndAdoptionTest,
       DISABLED_SlidingResetEpochAfterWallStepForwardReleasesAdoptedEarly) {
  Use({Feature("f", {Sliding("min", 60, absl::Minutes(1))})});
  clock_.StepWall(absl::Seconds(30));
  Report(200, {{"X-RateLimit-Limit", "60"},
               {"X-RateLimit-Remaining", "0"},
               {"X-RateLimit-Reset", absl::StrCat(TrueEpoch() + 50)}});
  clock_.Advance(absl::Seconds(25));  // true +25 s: the upstream is still full until +50 s
  const int64_t granted = Drain();
  EXPECT_EQ(granted, 0) << "granted " << granted << " into a full upstream window";
}

// Retry-After as an HTTP date while quotad's wall is 1 h ahead: the date reads as passed and
// the 120 s cooldown collapses to the 1 s back-off.
// FINDING, kept disabled: the upstream's absolute times (X-RateLimit-Reset epochs, Retry-After
// dates, and Retry-After seconds anchored at the answer's wall time) are read on quotad's wall
// clock; when it is wrong against the upstream's, they are misplaced by the error. README,
// Operations: keep the wall clock synced.
TEST_F(WallClockAndAdoptionTest, DISABLED_RetryAfterHttpDateAfterWallStepForwardShortensCooldown) {
  Use({Feature("f", {Sliding("min", 1000, absl::Minutes(1))})});
  clock_.StepWall(absl::Hours(1));
  const absl::Time true_retry = absl::FromUnixSeconds(TrueEpoch() + 120);
  const std::string date =
      absl::FormatTime("%a, %d %b %Y %H:%M:%S GMT", true_retry, absl::UTCTimeZone());
  Report(429, {{"Retry-After", date}});
  clock_.Advance(absl::Seconds(10));
  EXPECT_FALSE(Acquire().granted) << "granted 110 s before the upstream's Retry-After " << date;
}

// Retry-After in SECONDS (a duration) is anchored on observed_at, a wall reading the worker took
// just before quotad's wall stepped forward 1 h: the 120 s cooldown is read as over an hour ago.
// FINDING, kept disabled: the upstream's absolute times (X-RateLimit-Reset epochs, Retry-After
// dates, and Retry-After seconds anchored at the answer's wall time) are read on quotad's wall
// clock; when it is wrong against the upstream's, they are misplaced by the error. README,
// Operations: keep the wall clock synced.
TEST_F(WallClockAndAdoptionTest, DISABLED_RetryAfterSecondsAcrossWallStepForwardShortensCooldown) {
  Use({Feature("f", {Sliding("min", 1000, absl::Minutes(1))})});
  const absl::Time observed = clock_.Now();  // the worker's reading, same host
  clock_.StepWall(absl::Hours(1));           // NTP steps before the Report arrives
  clock_.Advance(absl::Milliseconds(5));
  Report(429, {{"Retry-After", "120"}}, observed);
  clock_.Advance(absl::Seconds(10));
  EXPECT_FALSE(Acquire().granted) << "granted 110 s before Retry-After: 120 ran out";
}

// Waiters are woken through LedgerOptions::wake / Pump(), both in WALL time; the server's
// Pumper (service/server/server.cc) sleeps until clock->Now() >= that time. A wall step back
// after parking keeps the Pumper asleep for the size of the step: the waiter is neither
// granted when capacity frees nor denied at its deadline.
TEST_F(WallClockAndAdoptionTest, WallStepBackStarvesWaiterBehindWallTimedWake) {
  absl::Time next_pump = absl::InfiniteFuture();
  Use({Feature("f", {Sliding("min", 1, absl::Minutes(1))})}, nullptr,
      [&](absl::Time t) { next_pump = std::min(next_pump, t); });
  ASSERT_TRUE(Acquire().granted);
  std::optional<absl::StatusOr<Decision>> answer;
  AcquireRequest req;
  req.credential = "key";
  req.feature = "f";
  ledger_->AcquireOrWait(req, absl::Minutes(5), 0,
                         [&](absl::StatusOr<Decision> d) { answer = std::move(d); });
  ASSERT_FALSE(answer.has_value());
  clock_.StepWall(-absl::Hours(1));
  // The Pumper's loop, as in server.cc: run Pump() whenever the wall clock reaches next_, and
  // at least every Pumper::kMaxPumpWait (1 s) while requests wait.
  auto pumper = [&] {
    if (next_pump > clock_.Now() && ledger_->waiting() > 0) next_pump = clock_.Now();
    while (next_pump <= clock_.Now()) {
      next_pump = absl::InfiniteFuture();
      const absl::Time n = ledger_->Pump();
      next_pump = std::min(next_pump, n);
    }
  };
  for (int s = 0; s < 6 * 60; ++s) {  // six true minutes: past the refill and the deadline
    clock_.Advance(absl::Seconds(1));
    pumper();
  }
  EXPECT_TRUE(answer.has_value())
      << "the waiter was neither granted (slot free at +60 s) nor denied (deadline +5 min); "
         "next wake at wall "
      << absl::FormatTime(next_pump) << ", wall now " << absl::FormatTime(clock_.Now());
}

// ---------------------------------------------------------------------------------------------
// PROBES THAT SHOULD HOLD
// ---------------------------------------------------------------------------------------------

TEST_F(WallClockAndAdoptionTest, SlidingWindowSurvivesWallStepsBothWays) {
  Use({Feature("f", {Sliding("min", 10, absl::Minutes(1))})});
  int64_t granted = Drain();
  clock_.StepWall(absl::Hours(2));
  granted += Drain();
  clock_.StepWall(-absl::Hours(5));
  clock_.Advance(absl::Seconds(30));
  granted += Drain();
  EXPECT_EQ(granted, 10);
  clock_.Advance(absl::Seconds(31));
  EXPECT_EQ(Drain(), 10);
}

TEST_F(WallClockAndAdoptionTest, SlidingSubBucketsSurviveWallSteps) {
  Use({Feature("f", {Sliding("min", 10, absl::Minutes(1), 6)})});
  int64_t granted = Drain();
  clock_.StepWall(absl::Hours(1));
  clock_.Advance(absl::Seconds(50));
  granted += Drain();
  clock_.StepWall(-absl::Hours(3));
  granted += Drain();
  EXPECT_EQ(granted, 10);
}

TEST_F(WallClockAndAdoptionTest, RollingAndBucketSurviveWallSteps) {
  Use({Feature("f", {Rolling("r", 5, absl::Hours(1)), Bucket("b", 4, absl::Minutes(1), 1)})});
  EXPECT_TRUE(Acquire().granted);
  clock_.StepWall(absl::Hours(2));
  EXPECT_FALSE(Acquire().granted);  // bucket: 15 s spacing
  clock_.StepWall(-absl::Hours(4));
  EXPECT_FALSE(Acquire().granted);
  int64_t granted = 1;
  for (int i = 0; i < 100; ++i) {
    clock_.Advance(absl::Seconds(15));
    if (i % 3 == 0) clock_.StepWall(i % 2 ? absl::Hours(1) : -absl::Hours(1));
    if (Acquire().granted) ++granted;
  }
  // 25 min of true time: at most 5 in the rolling hour.
  EXPECT_EQ(granted, 5);
}

TEST_F(WallClockAndAdoptionTest, ConcurrencyLeaseNotExtendedOrShortenedByWallSteps) {
  Use({Feature("f", {Concurrency("slots", 1)})});
  Decision d = Acquire(1, absl::Seconds(30));
  ASSERT_TRUE(d.granted);
  clock_.StepWall(absl::Hours(1));  // must not expire it
  EXPECT_FALSE(Acquire(1, absl::Seconds(30)).granted);
  EXPECT_OK(ledger_->Renew(d.lease_id, absl::Seconds(30)));
  clock_.StepWall(-absl::Hours(3));  // must not extend it
  clock_.Advance(absl::Seconds(31));
  EXPECT_THAT(ledger_->Renew(d.lease_id, absl::Seconds(30)), Not(IsOk()));
  EXPECT_THAT(ledger_->Release(d.lease_id, std::nullopt), Not(IsOk()));
  EXPECT_TRUE(Acquire(1, absl::Seconds(30)).granted);
}

TEST_F(WallClockAndAdoptionTest, LimitCooldownRunsOnLedgerTimeAcrossWallSteps) {
  Use({Feature("f", {Sliding("min", 100, absl::Minutes(1))})});
  ASSERT_TRUE(Acquire().granted);
  Report(429, {{"Retry-After", "120"}});
  clock_.StepWall(absl::Hours(1));
  clock_.Advance(absl::Seconds(100));
  EXPECT_FALSE(Acquire().granted);
  clock_.StepWall(-absl::Hours(3));
  clock_.Advance(absl::Seconds(21));
  EXPECT_TRUE(Acquire().granted);
}

TEST_F(WallClockAndAdoptionTest, WaiterDeadlineOnLedgerTimeAcrossWallStepForward) {
  Use({Feature("f", {Sliding("min", 1, absl::Minutes(1))})});
  ASSERT_TRUE(Acquire().granted);
  std::optional<absl::StatusOr<Decision>> answer;
  AcquireRequest req;
  req.credential = "key";
  req.feature = "f";
  ledger_->AcquireOrWait(req, absl::Seconds(30), 0,
                         [&](absl::StatusOr<Decision> d) { answer = std::move(d); });
  clock_.StepWall(absl::Hours(1));
  ledger_->Pump();
  EXPECT_FALSE(answer.has_value()) << "answered at once after a wall step forward";
  clock_.Advance(absl::Seconds(31));
  ledger_->Pump();
  ASSERT_TRUE(answer.has_value());
  ASSERT_TRUE(answer->ok());
  EXPECT_FALSE((*answer)->granted);
}

TEST_F(WallClockAndAdoptionTest, ReportNeverRaisesRemaining) {
  Use({Feature("f", {Sliding("min", 100, absl::Minutes(1)),
                     Calendar("day", 1000, CalendarUnit::kDay)})});
  for (int i = 0; i < 60; ++i) ASSERT_TRUE(Acquire().granted);
  Report(200, {{"X-RateLimit-Limit", "100"}, {"X-RateLimit-Remaining", "100"},
               {"X-RateLimit-Reset", absl::StrCat(TrueEpoch() + 1)}});
  Report(200, {{"X-RateLimit-Limit", "5000"}, {"X-RateLimit-Remaining", "4999"}});
  Report(200, {{"X-RateLimit-Limit", "100"}, {"X-RateLimit-Used", "0"}});
  EXPECT_EQ(Drain(), 40);
}

TEST_F(WallClockAndAdoptionTest, OutsideEstimateAndLimitCooldownSurviveRestart) {
  MemoryJournal journal;
  Use({Feature("f", {Sliding("min", 100, absl::Minutes(1))})}, &journal);
  for (int i = 0; i < 50; ++i) ASSERT_TRUE(Acquire().granted);
  Report(429, {{"Retry-After", "30"}});  // throttled at 50/100: outside use
  const std::vector<LimitStatus> before = *ledger_->Usage("key");
  int64_t est = 0;
  for (const LimitStatus& s : before) {
    if (s.name == "f.min") est = s.outside_estimate;
  }
  ASSERT_GT(est, 0);
  ledger_.reset();
  Use({Feature("f", {Sliding("min", 100, absl::Minutes(1))})}, &journal);  // restart
  EXPECT_FALSE(Acquire().granted) << "the limit cooldown was lost across the restart";
  clock_.Advance(absl::Seconds(31));
  const std::vector<LimitStatus> after = *ledger_->Usage("key");
  for (const LimitStatus& s : after) {
    if (s.name == "f.min") EXPECT_GE(s.outside_estimate, est - 3);
  }
  // 50 of ours still in the window; at most 100 - 50 - estimate more.
  EXPECT_LE(Drain(), 100 - 50 - (est - 3));
}

TEST_F(WallClockAndAdoptionTest, OutsideEstimateSurvivesReloadOfCapacity) {
  Use({Feature("f", {Sliding("min", 100, absl::Minutes(1))})});
  for (int i = 0; i < 50; ++i) ASSERT_TRUE(Acquire().granted);
  Report(429, {});
  clock_.Advance(absl::Seconds(2));  // past the back-off
  ASSERT_OK(ledger_->Reload(
      OneCredential("key", {Feature("f", {Sliding("min", 80, absl::Minutes(1))})})));
  int64_t est = 0;
  const std::vector<LimitStatus> usage = *ledger_->Usage("key");
  for (const LimitStatus& s : usage) {
    if (s.name == "f.min") est = s.outside_estimate;
  }
  EXPECT_GT(est, 0);
  EXPECT_LE(Drain(), 80 - 50 - (est > 0 ? est : 0));
}

// ---------------------------------------------------------------------------------------------
// A third review (attack3): refunds around adoption and restart, wall steps across a restart
// ---------------------------------------------------------------------------------------------
// 1. Calendar/rolling: a lease charged BEFORE an adoption, refunded AFTER a restart (adopted_at_
// is not journaled).
TEST_F(WallClockAndAdoptionTest, CalendarRefundOfPreAdoptionLeaseAfterRestart) {
  MemoryJournal journal;
  auto spec = [] { return std::vector<FeatureSpec>{Feature("f", {Calendar("day", 100, CalendarUnit::kDay)})}; };
  Use(spec(), &journal);
  Decision lease = Acquire(10, absl::Hours(1));  // L: the upstream will charge none of it
  ASSERT_TRUE(lease.granted);
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(Acquire(10).granted);  // 40 real
  Report(200, {{"X-RateLimit-Limit", "100"}, {"X-RateLimit-Remaining", "40"}});  // upstream 60
  int64_t upstream = 60;
  ledger_.reset();
  clock_.Advance(absl::Seconds(1));
  Use(spec(), &journal);  // restart
  for (int i = 0; i < 4; ++i) {
    if (Acquire(10).granted) upstream += 10;
  }
  auto rel = ledger_->Release(lease.lease_id, 0);
  ASSERT_OK(rel);
  const int64_t more = Drain();
  upstream += more;
  EXPECT_LE(upstream, 100) << "refunded " << rel->refunded << " then granted " << more;
}

TEST_F(WallClockAndAdoptionTest, RollingRefundOfPreAdoptionLeaseAfterRestart) {
  MemoryJournal journal;
  auto spec = [] { return std::vector<FeatureSpec>{Feature("f", {Rolling("win", 100, absl::Hours(24))})}; };
  Use(spec(), &journal);
  Decision lease = Acquire(10, absl::Hours(1));
  ASSERT_TRUE(lease.granted);
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(Acquire(10).granted);
  Report(200, {{"X-RateLimit-Limit", "100"}, {"X-RateLimit-Remaining", "40"}});
  int64_t upstream = 60;
  ledger_.reset();
  clock_.Advance(absl::Seconds(1));
  Use(spec(), &journal);
  for (int i = 0; i < 4; ++i) {
    if (Acquire(10).granted) upstream += 10;
  }
  auto rel = ledger_->Release(lease.lease_id, 0);
  ASSERT_OK(rel);
  const int64_t more = Drain();
  upstream += more;
  EXPECT_LE(upstream, 100) << "refunded " << rel->refunded << " then granted " << more;
}

// 2. Calendar: a lease's charge time is converted to wall time at RELEASE with the offset then in
// force; adopted_at_ was converted at adoption. A same-day wall step forward in between makes a
// pre-adoption charge look post-adoption.
TEST_F(WallClockAndAdoptionTest, CalendarPreAdoptionChargeLooksLaterAfterWallStepForward) {
  Use({Feature("f", {Calendar("day", 100, CalendarUnit::kDay)})});
  Decision lease = Acquire(10, absl::Hours(1));
  ASSERT_TRUE(lease.granted);
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(Acquire(10).granted);
  clock_.Advance(absl::Seconds(5));
  Report(200, {{"X-RateLimit-Limit", "100"}, {"X-RateLimit-Remaining", "40"}});  // upstream 60
  int64_t upstream = 60;
  for (int i = 0; i < 4; ++i) {
    ASSERT_TRUE(Acquire(10).granted);
    upstream += 10;
  }
  clock_.StepWall(absl::Seconds(30));  // NTP: 10:00:05 -> 10:00:35, same day
  auto rel = ledger_->Release(lease.lease_id, 0);
  ASSERT_OK(rel);
  const int64_t more = Drain();
  upstream += more;
  EXPECT_LE(upstream, 100) << "refunded " << rel->refunded << " then granted " << more;
}

// 3. Ledger time is re-anchored to the wall at each start: journaled ledger times (sliding
// charges, cooldowns) move by any wall step taken while the old process ran.
// FINDING, kept disabled: a restart anchors ledger time to the wall clock again, so a wall
// clock that was wrong when the old process started and was stepped since moves every journaled
// duration by the step (README, Operations). Fixing it needs a time that survives the process.
TEST_F(WallClockAndAdoptionTest, DISABLED_SlidingChargesSurviveRestartAfterWallStepForward) {
  MemoryJournal journal;
  auto spec = [] { return std::vector<FeatureSpec>{Feature("f", {Sliding("min", 100, absl::Minutes(1))})}; };
  Use(spec(), &journal);
  EXPECT_EQ(Drain(), 100);
  clock_.StepWall(absl::Minutes(2));  // NTP corrects a slow wall clock
  clock_.Advance(absl::Seconds(1));
  ledger_.reset();
  Use(spec(), &journal);  // restart 1 s (true) after the 100 charges
  const int64_t more = Drain();
  EXPECT_EQ(more, 0) << "the upstream's minute still holds 100; granted " << more;
}

// FINDING, kept disabled: a restart anchors ledger time to the wall clock again, so a wall
// clock that was wrong when the old process started and was stepped since moves every journaled
// duration by the step (README, Operations). Fixing it needs a time that survives the process.
TEST_F(WallClockAndAdoptionTest, DISABLED_RetryAfterCooldownSurvivesRestartAfterWallStepForward) {
  MemoryJournal journal;
  auto spec = [] { return std::vector<FeatureSpec>{Feature("f", {Sliding("min", 1000, absl::Minutes(1))})}; };
  Use(spec(), &journal);
  Report(429, {{"Retry-After", "120"}});
  clock_.StepWall(absl::Minutes(5));
  clock_.Advance(absl::Seconds(1));
  ledger_.reset();
  Use(spec(), &journal);
  EXPECT_FALSE(Acquire().granted) << "granted 119 s before Retry-After ends";
}

// 4. A throttle on g (draws on f) while quotad's count of f.min is full: no estimate is learnt,
// but the Retry-After must still cool f down after the sliding window drained.
TEST_F(WallClockAndAdoptionTest, FullLimitThrottleStillCoolsFeatureDrawingOnIt) {
  FeatureSpec g = Feature("g", {Sliding("own", 1000, absl::Minutes(1))});
  g.draws_on = {"f"};
  Use({Feature("f", {Sliding("min", 10, absl::Minutes(1))}), g});
  EXPECT_EQ(Drain(), 10);
  UpstreamAnswer a;
  a.credential = "key";
  a.feature = "g";
  a.http_status = 429;
  a.headers = {{"Retry-After", "120"}};
  ASSERT_OK(ledger_->Report(a));
  clock_.Advance(absl::Seconds(61));  // f.min drained; Retry-After runs 59 s more
  EXPECT_FALSE(Acquire().granted) << "f granted inside the upstream's Retry-After";
  AcquireRequest req;
  req.credential = "key";
  req.feature = "g";
  req.cost = 1;
  EXPECT_FALSE(ledger_->Acquire(req)->granted) << "g granted inside the upstream's Retry-After";
}

// 5. A Report never raises remaining above the configuration.
TEST_F(WallClockAndAdoptionTest, ReportNeverRaisesRemainingAboveConfig) {
  Use({Feature("f", {Calendar("day", 100, CalendarUnit::kDay)})});
  Report(200, {{"X-RateLimit-Limit", "100000"}, {"X-RateLimit-Remaining", "99999"}});
  ASSERT_OK_AND_ASSIGN(const std::vector<LimitStatus> usage, ledger_->Usage("key"));
  for (const LimitStatus& s : usage) EXPECT_LE(s.remaining, 100);
  EXPECT_LE(Drain(), 100);
}

}  // namespace
}  // namespace quotad
