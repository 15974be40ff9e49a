// Adversarial tests against commit 65ca80e: each asserts the promise "never grant more than a
// limit allows" (SPEC 2, 4, 6) and FAILS when a hole is found.

#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "service/core/clock.h"
#include "service/core/ledger.h"
#include "tests/core/memory_journal.h"
#include "tests/core/test_util.h"

namespace quotad {
namespace {

using testing::Bucket;
using testing::Calendar;
using testing::Concurrency;
using testing::Feature;
using testing::MemoryJournal;
using testing::OneCredential;
using testing::Rolling;
using testing::Sliding;
using testing::Unlimited;
using testing::Utc;

// A journal whose deferred lease deletions are lost in the crash (journal.h: DeleteLease "may be
// applied late").
class LossyDeleteJournal : public MemoryJournal {
 public:
  void DeleteLease(const std::string&) override {}
};

class AttackTest : public ::testing::Test {
 protected:
  std::unique_ptr<Ledger> Make(const Policy& p, Journal* j = nullptr, double fraction = 0.01) {
    LedgerOptions o;
    o.journal = j;
    o.reserve_fraction = fraction;
    auto l = Ledger::Create(p, &clock_, o);
    EXPECT_TRUE(l.ok()) << l.status();
    if (j != nullptr) {
      absl::Status s = (*l)->Restore();
      EXPECT_TRUE(s.ok()) << s;
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
TEST_F(AttackTest, GuardCarryLostOnRestartWhenCurrentBlockHasRoom) {
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
TEST_F(AttackTest, DeniedRequestErasesRestoredScopeCounter) {
  const Policy p = OneCredential(
      "key", {Feature("f", {Scoped(Calendar("daily", 10, CalendarUnit::kDay)),
                            Scoped(Concurrency("slots", 100))})});
  MemoryJournal j;
  {
    auto l = Make(p, &j);
    for (int i = 0; i < 10; ++i) {
      auto d = Try(*l, 1, "a");
      ASSERT_TRUE(d->granted);
      ASSERT_TRUE(l->Release(d->lease_id, std::nullopt).ok());  // frees the slot, keeps the unit
    }
  }
  clock_.Advance(absl::Minutes(1));
  auto l = Make(p, &j);
  EXPECT_FALSE(Try(*l, 1, "a")->granted);  // denied by daily...
  const int64_t more = Drain(*l, 1, "a");  // ...which that denial erased
  EXPECT_EQ(more, 0) << "scope a of daily (cap 10, used 10) granted " << more << " more today";
}

// --- Same, without restart: a reload adds a scoped limit ---
TEST_F(AttackTest, DeniedRequestErasesScopeCounterAfterReloadAddsScopedLimit) {
  auto l = Make(OneCredential("key", {Feature("f", {Scoped(Calendar("daily", 10, CalendarUnit::kDay))})}));
  ASSERT_EQ(Drain(*l, 1, "a"), 10);
  ASSERT_TRUE(l->Reload(OneCredential(
                              "key", {Feature("f", {Scoped(Calendar("daily", 10, CalendarUnit::kDay)),
                                                    Scoped(Sliding("per_min", 100, absl::Minutes(1)))})}))
                  .ok());
  EXPECT_FALSE(Try(*l, 1, "a")->granted);
  const int64_t more = Drain(*l, 1, "a");
  EXPECT_EQ(more, 0) << "scope a of daily (cap 10, used 10) granted " << more << " more today";
}

// --- Concurrency scoped -> unscoped: held slots of other scopes are ignored ---
TEST_F(AttackTest, ConcurrencyScopedToUnscopedIgnoresHeldSlots) {
  auto l = Make(OneCredential("key", {Feature("f", {Scoped(Concurrency("slots", 2))})}));
  ASSERT_TRUE(Try(*l, 1, "a")->granted);
  ASSERT_TRUE(Try(*l, 1, "a")->granted);
  ASSERT_TRUE(l->Reload(OneCredential("key", {Feature("f", {Concurrency("slots", 2)})})).ok());
  const int64_t more = Drain(*l, 1, "b");
  EXPECT_EQ(more, 0) << "2 slots held, unscoped capacity 2, yet " << more << " more granted ("
                     << l->Leases("key").size() << " live leases)";
}

// --- Rolling period shortened, then restart: Restore keeps the record that ends last, dropping
// the new window's units ---
TEST_F(AttackTest, RollingPeriodShortenedThenRestartOverGrants) {
  MemoryJournal j;
  const Policy a = OneCredential("key", {Feature("f", {Rolling("win", 10, absl::Hours(10))})});
  const Policy b = OneCredential("key", {Feature("f", {Rolling("win", 10, absl::Hours(2))})});
  int64_t granted = 0;
  {
    auto l = Make(a, &j);
    granted += Drain(*l, 1, "", "f", 5);  // 5 in [0, 10h)
    clock_.Advance(absl::Hours(1));
    ASSERT_TRUE(l->Reload(b).ok());  // new window [1h, 3h) seeded with 5
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
TEST_F(AttackTest, CalendarToRollingThenRestartOverGrants) {
  MemoryJournal j;
  clock_.Set(Utc(2026, 6, 21, 12));
  const Policy a = OneCredential("key", {Feature("f", {Calendar("win", 10, CalendarUnit::kDay)})});
  const Policy b = OneCredential("key", {Feature("f", {Rolling("win", 10, absl::Hours(1))})});
  int64_t granted = 0;
  {
    auto l = Make(a, &j);
    granted += Drain(*l, 1, "", "f", 5);
    ASSERT_TRUE(l->Reload(b).ok());
    granted += Drain(*l);
    ASSERT_EQ(granted, 10);
  }
  clock_.Advance(absl::Minutes(30));
  auto l = Make(b, &j);
  const int64_t more = Drain(*l);
  EXPECT_EQ(more, 0) << more << " more granted after restart; day and hour both at 10/10";
}

// --- A refund after restart undercuts the adopted upstream count ---
TEST_F(AttackTest, RefundAfterRestartUndercutsAdoptedCount) {
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
    ASSERT_TRUE(r.ok()) << r.status();
    ASSERT_EQ(Used(*l, "f.daily"), 10);
  }
  clock_.Advance(absl::Seconds(1));
  auto l = Make(p, &j);
  auto rel = l->Release(l1, 0);
  ASSERT_TRUE(rel.ok()) << rel.status();
  const int64_t more = Drain(*l);
  EXPECT_EQ(more, 0) << "upstream said 10/10 used; refund gave back " << rel->refunded
                     << " and " << more << " more were granted";
}

// --- A release whose deferred deletion is lost refunds twice after restart ---
TEST_F(AttackTest, LostLeaseDeletionRefundsTwiceAfterRestart) {
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
TEST_F(AttackTest, LimitRemovedThenReaddedForgetsUsage) {
  MemoryJournal j;
  const Policy a = OneCredential("key", {Feature("f", {Calendar("daily", 10, CalendarUnit::kDay)})});
  const Policy b = OneCredential("key", {Feature("f", {Unlimited("count")})});
  auto l = Make(a, &j);
  ASSERT_EQ(Drain(*l), 10);
  ASSERT_TRUE(l->Reload(b).ok());
  ASSERT_TRUE(l->Reload(a).ok());
  const int64_t more = Drain(*l);
  {
    auto restarted = Make(a, &j);  // what a restart with the same file would grant
    EXPECT_EQ(Drain(*restarted), 0);
  }
  EXPECT_EQ(more, 0) << "daily 10/10 used; after A->B->A the reload granted " << more;
}

// --- Unscoped -> scoped: the scope seeds are memory only; a restart loses them ---
TEST_F(AttackTest, ScopeSeedsLostOnRestart) {
  MemoryJournal j;
  const Policy a = OneCredential("key", {Feature("f", {Calendar("daily", 10, CalendarUnit::kDay)})});
  const Policy b =
      OneCredential("key", {Feature("f", {Scoped(Calendar("daily", 10, CalendarUnit::kDay))})});
  {
    auto l = Make(a, &j);
    ASSERT_EQ(Drain(*l, 1, "a"), 10);
    ASSERT_TRUE(l->Reload(b).ok());
    ASSERT_FALSE(Try(*l, 1, "a")->granted);  // seeded with 10
  }
  clock_.Advance(absl::Seconds(1));
  auto l = Make(b, &j);
  const int64_t more = Drain(*l, 1, "a");
  EXPECT_EQ(more, 0) << "scope a used 10/10 today; after restart " << more << " more";
}

// --- Unlimited counts overflow int64 (no bound on cost), and a reload then seeds nothing ---
TEST_F(AttackTest, UnlimitedCountOverflowsThenReloadSeedsNothing) {
  const Policy a = OneCredential("key", {Feature("f", {Unlimited("daily", CalendarUnit::kDay)})});
  const Policy b = OneCredential("key", {Feature("f", {Calendar("daily", 10, CalendarUnit::kDay)})});
  auto l = Make(a);
  const int64_t big = std::numeric_limits<int64_t>::max() / 2 + 1;
  // A cost past the largest capacity any limit may have is refused, naming it.
  auto d1 = Try(*l, big);
  ASSERT_FALSE(d1.ok());
  EXPECT_EQ(d1.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(d1.status().message().find(absl::StrCat(big)), std::string::npos) << d1.status();
  for (int i = 0; i < 1000; ++i) ASSERT_TRUE(Try(*l, kMaxCapacity)->granted);
  EXPECT_GE(Used(*l, "f.daily"), 0) << "used wrapped around";
  ASSERT_TRUE(l->Reload(b).ok());
  const int64_t more = Drain(*l);
  EXPECT_EQ(more, 0) << "day already counted > 10 units; reload to cap 10 granted " << more;
}

// --- Admin Reset then a refund of a lease granted before it gives back others' units ---
TEST_F(AttackTest, RefundAfterResetTakesOthersUnits) {
  auto l = Make(OneCredential("key", {Feature("f", {Calendar("daily", 10, CalendarUnit::kDay)})}));
  auto l1 = Try(*l, 10);
  ASSERT_TRUE(l1->granted);
  ASSERT_TRUE(l->Reset("key").ok());
  ASSERT_TRUE(Try(*l, 10)->granted);  // L2, after the reset
  auto rel = l->Release(l1->lease_id, 0);
  ASSERT_TRUE(rel.ok());
  const int64_t more = Drain(*l);
  EXPECT_EQ(10 + more, 10) << "since the reset: L2 (10) plus " << more
                           << " (L1's refund of " << rel->refunded << " took L2's units)";
}


// ===================== Controls and probes that held (expected to PASS) =====================

TEST_F(AttackTest, Control_GuardCarryWithoutRestart) {
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

TEST_F(AttackTest, Control_AdoptedRefundWithoutRestart) {
  const Policy p = OneCredential("key", {Feature("f", {Calendar("daily", 10, CalendarUnit::kDay)})});
  auto l = Make(p);
  auto d = Try(*l, 5);
  UpstreamAnswer ans;
  ans.credential = "key";
  ans.feature = "f";
  ans.http_status = 200;
  ans.headers = {{"X-RateLimit-Limit", "10"}, {"X-RateLimit-Remaining", "0"}};
  ASSERT_TRUE(l->Report(ans).ok());
  EXPECT_EQ(l->Release(d->lease_id, 0)->refunded, 0);
  EXPECT_EQ(Drain(*l), 0);
}

TEST_F(AttackTest, Control_FaithfulJournalForgetsReleasedLease) {
  MemoryJournal j;
  const Policy p = OneCredential("key", {Feature("f", {Calendar("daily", 10, CalendarUnit::kDay)})});
  LeaseId l1;
  {
    auto l = Make(p, &j);
    l1 = Try(*l, 10)->lease_id;
    ASSERT_TRUE(l->Release(l1, 0).ok());
    ASSERT_TRUE(Try(*l, 10)->granted);
  }
  auto l = Make(p, &j);
  EXPECT_FALSE(l->Release(l1, 0).ok());
  EXPECT_EQ(Drain(*l), 0);
}

TEST_F(AttackTest, Probe_ConcurrencyUnscopedToScopedHolds) {
  auto l = Make(OneCredential("key", {Feature("f", {Concurrency("slots", 2)})}));
  ASSERT_TRUE(Try(*l, 1, "a")->granted);
  ASSERT_TRUE(Try(*l, 1, "b")->granted);
  ASSERT_TRUE(l->Reload(OneCredential("key", {Feature("f", {Scoped(Concurrency("slots", 2))})})).ok());
  EXPECT_EQ(Drain(*l, 1, "a"), 0);
}

TEST_F(AttackTest, Probe_RollingPeriodLengthenedThenRestart) {
  MemoryJournal j;
  const Policy a = OneCredential("key", {Feature("f", {Rolling("win", 10, absl::Hours(2))})});
  const Policy b = OneCredential("key", {Feature("f", {Rolling("win", 10, absl::Hours(10))})});
  {
    auto l = Make(a, &j);
    Drain(*l, 1, "", "f", 5);
    clock_.Advance(absl::Hours(1));
    ASSERT_TRUE(l->Reload(b).ok());
    EXPECT_EQ(Drain(*l), 5);
  }
  clock_.Advance(absl::Minutes(30));
  auto l = Make(b, &j);
  EXPECT_EQ(Drain(*l), 0);
}

TEST_F(AttackTest, Probe_CapacityUpDownAndBack) {
  const auto P = [](int64_t cap) {
    return OneCredential("key", {Feature("f", {Sliding("s", cap, absl::Minutes(1))})});
  };
  auto l = Make(P(10));
  ASSERT_EQ(Drain(*l), 10);
  ASSERT_TRUE(l->Reload(P(20)).ok());
  EXPECT_EQ(Drain(*l), 0);
  ASSERT_TRUE(l->Reload(P(10)).ok());
  EXPECT_EQ(Drain(*l), 0);
  ASSERT_TRUE(l->Reload(P(20)).ok());
  EXPECT_EQ(Drain(*l), 0);
  clock_.Advance(absl::Seconds(61));
  EXPECT_EQ(Drain(*l), 20);
}

TEST_F(AttackTest, Probe_TokenBucketRefundsAfterRestartAndReload) {
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

TEST_F(AttackTest, Probe_WaiterNotPassedAcrossDrawsOn) {
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

TEST_F(AttackTest, Probe_SlidingRefundAfterAdoption) {
  auto l = Make(OneCredential("key", {Feature("f", {Sliding("s", 10, absl::Minutes(1))})}));
  auto d = Try(*l, 5);
  UpstreamAnswer ans;
  ans.credential = "key";
  ans.feature = "f";
  ans.http_status = 200;
  ans.headers = {{"X-RateLimit-Limit", "10"}, {"X-RateLimit-Remaining", "0"}};
  ASSERT_TRUE(l->Report(ans).ok());
  clock_.Advance(absl::Seconds(1));
  EXPECT_EQ(l->Release(d->lease_id, 0)->refunded, 0);
  EXPECT_EQ(Drain(*l), 0);
}

TEST_F(AttackTest, Probe_RenewAfterSlotMovedByReloadIsNotFound) {
  auto l = Make(OneCredential("key", {Feature("f", {Concurrency("slots", 1)})}));
  auto d = Try(*l, 1, "a");
  ASSERT_TRUE(d->granted);
  ASSERT_TRUE(l->Reload(OneCredential("key", {Feature("f", {Scoped(Concurrency("slots", 1))})})).ok());
  clock_.Advance(absl::Seconds(30));
  auto r = l->Renew(d->lease_id, absl::Minutes(10));
  clock_.Advance(absl::Seconds(31));  // past the original expiry
  const int64_t more = Drain(*l, 1, "a");
  EXPECT_TRUE(!r.ok() || more == 0) << "renewed lease still live, yet " << more << " granted";
}

}  // namespace
}  // namespace quotad
