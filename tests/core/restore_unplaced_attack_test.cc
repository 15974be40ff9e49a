// Attacks on the records a restore could not place (merged at 56b8f5a): Ledger::RestoreFrom keeps
// journal records of credentials, limits or features not configured at start-up on the
// credential (Credential::unplaced), ReloadImpl restores them (RestoreUnplaced) when a reload
// configures them again, and Reset drops them.
//
// Every case runs the same operations on a ledger that never restarted (the reference) and on
// one restarted from the journal under a policy without the credential, limit or feature, and
// compares what they grant: the restarted one may be stricter (a journal counts high-water
// marks), never looser, and must hold each live lease exactly once. What is attacked:
// - a kept lease released or renewed by id while its credential is dropped, then re-added;
// - a kept lease that expires while dropped;
// - the same credential dropped and re-added several times (records applied twice?);
// - re-added under another kind, another scoping, a smaller capacity, a renamed feature;
// - Reset while dropped, and after the re-add;
// - Journal::Compact while records are kept, and restarts after they were applied;
// - many credentials; reloads racing acquires on another credential;
// - every public call naming a credential that is only kept (no compiled policy);
// - a kept lease released unused after the re-add (refunds).
// Found: a kept lease cannot be released or renewed by id until the reload that places it
// (three DISABLED_Bug tests), and, without any restart, a released lease of a removed feature
// keeps its slot in the carried counter when the feature comes back (one DISABLED_Bug test).

#include <algorithm>
#include <atomic>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "service/core/clock.h"
#include "service/core/journal.h"
#include "service/core/ledger.h"
#include "service/core/policy.h"
#include "service/store/memory_journal.h"
#include "tests/support/policy_builders.h"
#include "tests/support/status_matchers.h"

namespace quotad {
namespace {

using namespace ::quotad::testing;  // NOLINT: the policy builders

AcquireRequest Req(absl::string_view credential, absl::string_view feature = "f",
                   absl::string_view scope = "") {
  return AcquireRequest{.credential = credential, .feature = feature, .scope = scope, .cost = 1,
                        .lease_ttl = absl::Minutes(30)};
}

// How many acquires of one unit in a row are granted (at most `at_most`).
int Grants(Ledger& ledger, absl::string_view credential, absl::string_view feature = "f",
           absl::string_view scope = "", int at_most = 200) {
  int n = 0;
  while (n < at_most) {
    absl::StatusOr<Decision> d = ledger.Acquire(Req(credential, feature, scope));
    if (!d.ok() || !d->granted) break;
    ++n;
  }
  return n;
}

// Credential a (a calendar day of 10) and, if `b` is given, credential b with feature f of it.
Policy WithB(std::optional<std::vector<LimitSpec>> b, std::string b_feature = "f") {
  Policy p;
  p.credentials.push_back(
      Credential("a", "p", {Feature("f", {Calendar("per_day", 10, CalendarUnit::kDay)})}));
  if (b) p.credentials.push_back(Credential("b", "p", {Feature(b_feature, *b)}));
  return p;
}

const Policy& OnlyA() {
  static const Policy* p = new Policy(WithB(std::nullopt));
  return *p;
}

Policy SlotB(int64_t slots) { return WithB(std::vector<LimitSpec>{Concurrency("k", slots)}); }
Policy DayB(int64_t cap) {
  return WithB(std::vector<LimitSpec>{Calendar("per_day", cap, CalendarUnit::kDay)});
}

std::unique_ptr<Ledger> Make(const Policy& policy, FakeClock& clock, Journal* journal) {
  absl::StatusOr<std::unique_ptr<Ledger>> l =
      Ledger::Create(policy, &clock, LedgerOptions{.journal = journal});
  EXPECT_OK(l.status());
  return l.ok() ? *std::move(l) : nullptr;
}

std::unique_ptr<Ledger> Restarted(const Policy& policy, FakeClock& clock, Journal& journal,
                                  bool create_restored) {
  absl::StatusOr<std::unique_ptr<Ledger>> l;
  if (create_restored) {
    l = Ledger::CreateRestored(policy, &clock, LedgerOptions{.journal = &journal});
  } else {
    l = Ledger::Create(policy, &clock, LedgerOptions{.journal = &journal});
    if (l.ok()) {
      if (absl::Status s = (*l)->Restore(); !s.ok()) l = s;
    }
  }
  EXPECT_OK(l.status());
  return l.ok() ? *std::move(l) : nullptr;
}

LeaseId Take(Ledger& ledger, absl::string_view credential, absl::string_view feature = "f") {
  absl::StatusOr<Decision> d = ledger.Acquire(Req(credential, feature));
  EXPECT_OK(d.status());
  EXPECT_TRUE(d.ok() && d->granted);
  return d.ok() ? d->lease_id : LeaseId{};
}

// Live leases of `credential`'s `feature` (every acquire here takes a lease; only those of a
// concurrency feature hold slots).
size_t LeasesOf(Ledger& ledger, absl::string_view credential, absl::string_view feature) {
  size_t n = 0;
  for (const LeaseInfo& l : ledger.Leases(credential)) n += l.feature == feature ? 1 : 0;
  return n;
}

// A fresh journal holding what `from` holds.
std::unique_ptr<MemoryJournal> CopyOf(Journal& from) {
  auto to = std::make_unique<MemoryJournal>();
  absl::StatusOr<JournalState> s = from.Load();
  EXPECT_OK(s.status());
  if (!s.ok()) return to;
  EXPECT_OK(to->Reserve(s->reservations));
  for (const JournalLease& l : s->leases) EXPECT_OK(to->PutLease(l));
  for (const JournalCooldown& c : s->cooldowns) EXPECT_OK(to->PutCooldown(c));
  for (const JournalOutside& o : s->outside) EXPECT_OK(to->PutOutside(o));
  return to;
}

// ---- Leases kept for a dropped credential.

// What one run of "lease of b, b dropped, `while_dropped`, b back" ends with.
struct LeaseRun {
  size_t leases = 0;  // Leases("b") after the re-add
  int grants = 0;     // slots b grants after the re-add
  std::string op;     // what while_dropped returned
};

using WhileDropped = std::function<std::string(Ledger&, const LeaseId&, FakeClock&)>;

LeaseRun Reference(const Policy& back, const WhileDropped& while_dropped) {
  FakeClock clock(Utc(2026, 6, 1, 10));
  MemoryJournal journal;
  std::unique_ptr<Ledger> l = Make(SlotB(1), clock, &journal);
  LeaseRun out;
  if (l == nullptr) return out;
  const LeaseId id = Take(*l, "b");
  clock.Advance(absl::Minutes(1));
  EXPECT_OK(l->Reload(OnlyA()));
  out.op = while_dropped(*l, id, clock);
  EXPECT_OK(l->Reload(back));
  out.leases = LeasesOf(*l, "b", "f");
  out.grants = Grants(*l, "b");
  return out;
}

LeaseRun AfterRestart(const Policy& back, const WhileDropped& while_dropped,
                      bool create_restored) {
  FakeClock clock(Utc(2026, 6, 1, 10));
  MemoryJournal journal;
  LeaseId id;
  {
    std::unique_ptr<Ledger> l = Make(SlotB(1), clock, &journal);
    if (l == nullptr) return {};
    id = Take(*l, "b");
  }
  clock.Advance(absl::Minutes(1));
  std::unique_ptr<Ledger> l = Restarted(OnlyA(), clock, journal, create_restored);
  LeaseRun out;
  if (l == nullptr) return out;
  out.op = while_dropped(*l, id, clock);
  EXPECT_OK(l->Reload(back));
  out.leases = LeasesOf(*l, "b", "f");
  out.grants = Grants(*l, "b");
  return out;
}

std::string Str(const absl::Status& s) { return s.ok() ? "OK" : s.ToString(); }

// BUG (service/core/ledger_restore.cc, ledger_lease.cc): a lease a restart kept for a dropped
// credential (Credential::unplaced.leases) is in no lease table, so Release by its id answers
// NOT_FOUND ("lease ... is unknown, released or expired") and the journal row stays; the
// reload that brings b back then restores the lease, which holds b's only slot until its
// expiry (30 minutes): b grants 0 where the reference (which never restarted: its lease table
// keeps the lease of a dropped credential, Release answers OK and frees the slot) grants 1,
// and Leases("b") lists a lease its holder was told is gone. Under-grant, bounded by the TTL;
// the holder cannot release it (the second Release is NOT_FOUND too, as the id is kept again
// only after the reload). Both ways of starting (Create + Restore, CreateRestored).
TEST(RestoreUnplacedAttackTest, DISABLED_Bug_LeaseReleasedWhileDroppedComesBackAfterRestart) {
  WhileDropped release = [](Ledger& l, const LeaseId& id, FakeClock&) {
    return Str(l.Release(id, std::nullopt).status());
  };
  const LeaseRun ref = Reference(SlotB(1), release);
  EXPECT_EQ(ref.op, "OK");
  EXPECT_EQ(ref.leases, 0u);
  EXPECT_EQ(ref.grants, 1);
  for (bool cr : {false, true}) {
    const LeaseRun got = AfterRestart(SlotB(1), release, cr);
    EXPECT_EQ(got.op, ref.op) << "create_restored " << cr;
    EXPECT_EQ(got.leases, ref.leases) << "create_restored " << cr;
    EXPECT_EQ(got.grants, ref.grants) << "create_restored " << cr;
  }
}

// BUG (same cause as above): Renew of a kept lease while b is dropped answers NOT_FOUND where
// the reference renews it (OK); when b comes back 41 minutes after the grant, the restored
// lease has its old expiry (30 minutes) and is gone: Leases("b") is empty and b grants its
// slot (1) where the reference still holds it for the renewed holder (0). A holder that obeys
// the NOT_FOUND stops using the slot, so no two holders use it at once, but a restart changes
// the answer a running ledger gives.
TEST(RestoreUnplacedAttackTest, DISABLED_Bug_LeaseRenewedWhileDroppedAfterRestart) {
  WhileDropped renew = [](Ledger& l, const LeaseId& id, FakeClock& clock) {
    std::string out = Str(l.Renew(id, absl::Hours(1)).status());
    clock.Advance(absl::Minutes(40));  // past the first expiry, within the renewed one
    return out;
  };
  const LeaseRun ref = Reference(SlotB(1), renew);
  EXPECT_EQ(ref.op, "OK");
  EXPECT_EQ(ref.leases, 1u);
  EXPECT_EQ(ref.grants, 0);
  for (bool cr : {false, true}) {
    const LeaseRun got = AfterRestart(SlotB(1), renew, cr);
    EXPECT_EQ(got.op, ref.op) << "create_restored " << cr;
    EXPECT_EQ(got.leases, ref.leases) << "create_restored " << cr;
    EXPECT_LE(got.grants, ref.grants) << "create_restored " << cr;
  }
}

// Expires while b is dropped: b comes back with its slot free and no lease.
TEST(RestoreUnplacedAttackTest, LeaseThatExpiredWhileDroppedIsNotRestored) {
  WhileDropped wait = [](Ledger&, const LeaseId&, FakeClock& clock) {
    clock.Advance(absl::Minutes(31));
    return std::string("waited");
  };
  const LeaseRun ref = Reference(SlotB(1), wait);
  EXPECT_EQ(ref.leases, 0u);
  EXPECT_EQ(ref.grants, 1);
  for (bool cr : {false, true}) {
    const LeaseRun got = AfterRestart(SlotB(1), wait, cr);
    EXPECT_EQ(got.leases, 0u) << "create_restored " << cr;
    EXPECT_EQ(got.grants, 1) << "create_restored " << cr;
  }
}

// Nothing while dropped; b comes back with 2 slots, the feature renamed, then as it was, or
// with "k" become a calendar limit: the lease holds exactly one slot, once.
TEST(RestoreUnplacedAttackTest, LeaseKeptThroughRenamedFeatureAndOtherKind) {
  WhileDropped nothing = [](Ledger&, const LeaseId&, FakeClock&) { return std::string(); };
  const Policy two = SlotB(2);
  const LeaseRun ref = Reference(two, nothing);
  EXPECT_EQ(ref.leases, 1u);
  EXPECT_EQ(ref.grants, 1);
  for (bool cr : {false, true}) {
    const LeaseRun got = AfterRestart(two, nothing, cr);
    EXPECT_EQ(got.leases, 1u) << "create_restored " << cr;
    EXPECT_EQ(got.grants, 1) << "create_restored " << cr;
  }
  // Renamed feature first: the lease waits; the feature back: it holds its slot.
  for (bool cr : {false, true}) {
    FakeClock clock(Utc(2026, 6, 1, 10));
    MemoryJournal journal;
    LeaseId id;
    {
      std::unique_ptr<Ledger> l = Make(SlotB(1), clock, &journal);
      ASSERT_NE(l, nullptr);
      id = Take(*l, "b");
    }
    std::unique_ptr<Ledger> l = Restarted(OnlyA(), clock, journal, cr);
    ASSERT_NE(l, nullptr);
    ASSERT_OK(l->Reload(WithB(std::vector<LimitSpec>{Concurrency("k", 1)}, "renamed")));
    EXPECT_EQ(LeasesOf(*l, "b", "f"), 0u);
    const LeaseId other = Take(*l, "b", "renamed");
    EXPECT_EQ(Grants(*l, "b", "renamed"), 0);
    ASSERT_OK(l->Release(other, std::nullopt).status());
    ASSERT_OK(l->Reload(SlotB(1)));
    EXPECT_EQ(LeasesOf(*l, "b", "f"), 1u) << "create_restored " << cr;
    EXPECT_EQ(Grants(*l, "b"), 0) << "create_restored " << cr;
    // Released once it is back: the slot frees once.
    ASSERT_OK(l->Release(id, std::nullopt).status());
    EXPECT_FALSE(l->Release(id, std::nullopt).ok());
    EXPECT_EQ(Grants(*l, "b"), 1) << "create_restored " << cr;
  }
  // "k" back as a calendar limit of 1: the lease's cost is no slot; a restart under that policy
  // from the same journal grants the same.
  for (bool cr : {false, true}) {
    FakeClock clock(Utc(2026, 6, 1, 10));
    MemoryJournal journal;
    {
      std::unique_ptr<Ledger> l = Make(SlotB(1), clock, &journal);
      ASSERT_NE(l, nullptr);
      Take(*l, "b");
    }
    MemoryJournal copy;
    {
      absl::StatusOr<JournalState> s = journal.Load();
      ASSERT_OK(s.status());
      ASSERT_OK(copy.Reserve(s->reservations));
      for (const JournalLease& jl : s->leases) ASSERT_OK(copy.PutLease(jl));
    }
    const Policy cal = WithB(std::vector<LimitSpec>{Calendar("k", 1, CalendarUnit::kDay)});
    std::unique_ptr<Ledger> l = Restarted(OnlyA(), clock, journal, cr);
    ASSERT_NE(l, nullptr);
    ASSERT_OK(l->Reload(cal));
    std::unique_ptr<Ledger> direct = Restarted(cal, clock, copy, cr);
    ASSERT_NE(direct, nullptr);
    EXPECT_EQ(LeasesOf(*l, "b", "f"), LeasesOf(*direct, "b", "f"));
    EXPECT_EQ(Grants(*l, "b"), Grants(*direct, "b")) << "create_restored " << cr;
  }
}

// Every public call that names b, or a kept lease of b, while b is only kept (an entry of no
// table, with no compiled policy): clear refusals, no crash; then b back holds the lease once.
TEST(RestoreUnplacedAttackTest, CallsWhileOnlyKeptAreRefusedCleanly) {
  for (bool cr : {false, true}) {
    FakeClock clock(Utc(2026, 6, 1, 10));
    MemoryJournal journal;
    LeaseId id;
    {
      std::unique_ptr<Ledger> l = Make(SlotB(1), clock, &journal);
      ASSERT_NE(l, nullptr);
      id = Take(*l, "b");
    }
    std::unique_ptr<Ledger> l = Restarted(OnlyA(), clock, journal, cr);
    ASSERT_NE(l, nullptr);
    EXPECT_EQ(l->Acquire(Req("b")).status().code(), absl::StatusCode::kNotFound);
    EXPECT_EQ(l->Usage("b").status().code(), absl::StatusCode::kNotFound);
    EXPECT_TRUE(l->Leases("b").empty());
    EXPECT_FALSE(l->FindLease(id).has_value());
    EXPECT_EQ(l->LeaseCounts().count("b"), 0u);
    EXPECT_EQ(l->Reset("b").code(), absl::StatusCode::kNotFound);
    EXPECT_EQ(l->Sweep(), 0);
    (void)l->Footprint();
    (void)l->Queues();
    EXPECT_EQ(l->policy().credentials.size(), 1u);
    std::optional<absl::Status> waited;
    (void)l->AcquireOrWait(Req("b"), absl::Seconds(1), 0,
                           [&](absl::StatusOr<Decision> d) { waited = d.status(); });
    clock.Advance(absl::Seconds(2));
    l->Pump();
    ASSERT_TRUE(waited.has_value());
    EXPECT_EQ(waited->code(), absl::StatusCode::kNotFound) << *waited;
    ASSERT_OK(l->Reload(SlotB(1)));
    EXPECT_EQ(LeasesOf(*l, "b", "f"), 1u) << "create_restored " << cr;
    ASSERT_TRUE(l->FindLease(id).has_value()) << "create_restored " << cr;
    EXPECT_EQ(Grants(*l, "b"), 0) << "create_restored " << cr;
    ASSERT_OK(l->Release(id, std::nullopt).status());
    EXPECT_EQ(l->Release(id, std::nullopt).status().code(), absl::StatusCode::kNotFound);
    EXPECT_EQ(Grants(*l, "b"), 1) << "create_restored " << cr;
  }
}

// A lease of 5 units of a calendar day of 10, released unused after b came back: the reference
// refunds them; the restarted ledger may not refund more than was charged (at most 10 in all).
TEST(RestoreUnplacedAttackTest, RefundOfAKeptLeaseNeverGivesBackMoreThanCharged) {
  const Policy day = DayB(10);
  auto take5 = [](Ledger& l) {
    AcquireRequest r = Req("b");
    r.cost = 5;
    absl::StatusOr<Decision> d = l.Acquire(r);
    EXPECT_OK(d.status());
    EXPECT_TRUE(d.ok() && d->granted);
    return d.ok() ? d->lease_id : LeaseId{};
  };
  int ref;
  {
    FakeClock clock(Utc(2026, 6, 1, 10));
    std::unique_ptr<Ledger> l = Make(day, clock, nullptr);
    ASSERT_NE(l, nullptr);
    const LeaseId id = take5(*l);
    ASSERT_OK(l->Reload(OnlyA()));
    ASSERT_OK(l->Reload(day));
    ASSERT_OK(l->Release(id, 0).status());
    ref = Grants(*l, "b");
  }
  EXPECT_LE(ref, 10);
  for (bool cr : {false, true}) {
    FakeClock clock(Utc(2026, 6, 1, 10));
    MemoryJournal journal;
    LeaseId id;
    {
      std::unique_ptr<Ledger> l = Make(day, clock, &journal);
      ASSERT_NE(l, nullptr);
      id = take5(*l);
    }
    std::unique_ptr<Ledger> l = Restarted(OnlyA(), clock, journal, cr);
    ASSERT_NE(l, nullptr);
    ASSERT_OK(l->Reload(day));
    ASSERT_OK(l->Release(id, 0).status());
    EXPECT_FALSE(l->Release(id, 0).ok());
    EXPECT_LE(Grants(*l, "b"), ref) << "create_restored " << cr;
  }
}

// ---- Reservations kept for a dropped credential.

// b spends 8 of 10; restart without b; then reloads toggle b off and on `cycles` times.
// `direct` (if given) gets what a restart under `back` grants instead.
int ToggledGrants(int cycles, const Policy& back, bool restart, bool create_restored,
                  int* direct = nullptr) {
  FakeClock clock(Utc(2026, 6, 1, 10));
  MemoryJournal journal;
  std::unique_ptr<Ledger> l = Make(DayB(10), clock, &journal);
  if (l == nullptr) return -1;
  EXPECT_EQ(Grants(*l, "b", "f", "", 8), 8);
  clock.Advance(absl::Minutes(1));
  std::unique_ptr<MemoryJournal> copy = CopyOf(journal);
  if (restart) {
    l.reset();
    l = Restarted(OnlyA(), clock, journal, create_restored);
    if (l == nullptr) return -1;
  } else {
    EXPECT_OK(l->Reload(OnlyA()));
  }
  for (int i = 0; i < cycles; ++i) {
    clock.Advance(absl::Minutes(1));
    EXPECT_OK(l->Reload(back));
    if (i + 1 < cycles) {
      EXPECT_OK(l->Reload(OnlyA()));
    }
  }
  if (direct != nullptr) {
    // A restart under `back` itself, at the same time, from the journal as b left it.
    std::unique_ptr<Ledger> d = Restarted(back, clock, *copy, create_restored);
    *direct = d == nullptr ? -1 : Grants(*d, "b");
  }
  return Grants(*l, "b");
}

// Restarted, b grants what a restart under the policy that brings it back grants, however
// often it went and came back: never under (records applied twice), never over the capacity
// left. A lowered capacity is as strict as the reference; a raised one (30) is looser than the
// reference, which keeps the old 10 until the day ends, as any restart under a raised capacity
// is (the journal has no old rule; see RestoreUnplacedTest in cold_start_attack_test.cc).
TEST(RestoreUnplacedAttackTest, DroppedAndReaddedManyTimesCountsOnce) {
  for (int64_t cap : {10, 6, 30}) {
    for (int cycles : {1, 2, 5}) {
      const int ref = ToggledGrants(cycles, DayB(cap), false, false);
      EXPECT_EQ(ref, std::max<int64_t>(0, std::min<int64_t>(cap, 10) - 8)) << cap << " " << cycles;
      for (bool cr : {false, true}) {
        const std::string what =
            absl::StrCat("capacity ", cap, " cycles ", cycles, " create_restored ", cr);
        int direct = -1;
        const int got = ToggledGrants(cycles, DayB(cap), true, cr, &direct);
        EXPECT_EQ(got, direct) << what;
        EXPECT_LE(got, std::max<int64_t>(0, cap - 8)) << what;
        if (cap <= 10) {
          EXPECT_EQ(got, ref) << what;
        }
      }
    }
  }
}

// The same with a limit (not the credential) dropped at the restart and toggled by reloads,
// and a feature (with a lease) dropped and toggled: counted once, the lease held once.
TEST(RestoreUnplacedAttackTest, LimitAndFeatureToggledManyTimes) {
  auto policy = [](bool hour, bool g) {
    std::vector<LimitSpec> limits = {Calendar("per_day", 100, CalendarUnit::kDay)};
    if (hour) limits.push_back(Calendar("hour", 10, CalendarUnit::kHour));
    std::vector<FeatureSpec> features = {Feature("f", limits)};
    if (g) features.push_back(Feature("g", {Concurrency("k", 2)}));
    Policy p;
    p.credentials.push_back(Credential("a", "p", features));
    return p;
  };
  for (int cycles : {1, 3}) {
    for (bool cr : {false, true}) {
      const std::string what = absl::StrCat("cycles ", cycles, " create_restored ", cr);
      FakeClock clock(Utc(2026, 6, 1, 10));
      MemoryJournal journal;
      {
        std::unique_ptr<Ledger> l = Make(policy(true, true), clock, &journal);
        ASSERT_NE(l, nullptr);
        ASSERT_EQ(Grants(*l, "a", "f", "", 7), 7);
        Take(*l, "a", "g");
      }
      clock.Advance(absl::Minutes(1));
      std::unique_ptr<MemoryJournal> copy = CopyOf(journal);
      std::unique_ptr<Ledger> l = Restarted(policy(false, false), clock, journal, cr);
      ASSERT_NE(l, nullptr);
      for (int i = 0; i < cycles; ++i) {
        ASSERT_OK(l->Reload(policy(true, true)));
        ASSERT_OK(l->Reload(policy(i % 2 == 0, false)));
        ASSERT_OK(l->Reload(policy(false, i % 2 == 0)));
      }
      ASSERT_OK(l->Reload(policy(true, true)));
      std::unique_ptr<Ledger> direct = Restarted(policy(true, true), clock, *copy, cr);
      ASSERT_NE(direct, nullptr);
      EXPECT_EQ(LeasesOf(*l, "a", "g"), 1u) << what;
      const int got = Grants(*l, "a");
      EXPECT_EQ(got, Grants(*direct, "a")) << what;
      EXPECT_LE(got, 3) << what;
      EXPECT_EQ(Grants(*l, "a", "g"), 1) << what;
    }
  }
}

Policy FeatureG(bool g) {
  std::vector<FeatureSpec> features = {
      Feature("f", {Calendar("per_day", 10, CalendarUnit::kDay)})};
  if (g) features.push_back(Feature("g", {Concurrency("k", 1)}));
  Policy p;
  p.credentials.push_back(Credential("a", "p", features));
  return p;
}

// BUG (pre-existing, not of 56b8f5a: no restart; service/core/ledger_reload.cc keeps a removed
// limit's counter in Credential::removed, and ledger_lease.cc's Release does not free the slot
// there): a lease of feature g (1 slot), g removed by a reload, the lease released (OK), g
// re-added: the carried counter still holds the released lease's slot, so g grants 0 instead
// of 1 until the lease's expiry (30 minutes; after it g grants 1, asserted below). Under-grant
// bounded by the TTL. A dropped credential (not feature) does not have it (see
// LeaseThatExpiredWhileDroppedIsNotRestored's reference and DISABLED_Bug_LeaseReleased...).
TEST(RestoreUnplacedAttackTest, DISABLED_Bug_ReleasedLeaseOfARemovedFeatureHoldsItsSlotOnReadd) {
  FakeClock clock(Utc(2026, 6, 1, 10));
  std::unique_ptr<Ledger> l = Make(FeatureG(true), clock, nullptr);
  ASSERT_NE(l, nullptr);
  const LeaseId id = Take(*l, "a", "g");
  ASSERT_OK(l->Reload(FeatureG(false)));
  ASSERT_OK(l->Release(id, std::nullopt).status());
  ASSERT_OK(l->Reload(FeatureG(true)));
  EXPECT_EQ(LeasesOf(*l, "a", "g"), 0u);
  EXPECT_EQ(Grants(*l, "a", "g"), 1);
}

// The pre-existing bug above is bounded by the lease's expiry.
TEST(RestoreUnplacedAttackTest, ReleasedLeaseOfARemovedFeatureFreesItsSlotByItsExpiry) {
  FakeClock clock(Utc(2026, 6, 1, 10));
  std::unique_ptr<Ledger> l = Make(FeatureG(true), clock, nullptr);
  ASSERT_NE(l, nullptr);
  const LeaseId id = Take(*l, "a", "g");
  ASSERT_OK(l->Reload(FeatureG(false)));
  ASSERT_OK(l->Release(id, std::nullopt).status());
  ASSERT_OK(l->Reload(FeatureG(true)));
  EXPECT_LE(Grants(*l, "a", "g"), 1);
  clock.Advance(absl::Minutes(31));
  EXPECT_EQ(Grants(*l, "a", "g"), 1);
}

// BUG (same cause as DISABLED_Bug_LeaseReleasedWhileDroppedComesBackAfterRestart): a lease a
// restart kept because its feature g was not configured (the credential was) cannot be
// released by id: Release answers NOT_FOUND, and the reload that re-adds g restores the lease
// (Leases lists it) and its slot until its expiry: g grants 0 instead of 1.
TEST(RestoreUnplacedAttackTest, DISABLED_Bug_KeptLeaseOfAMissingFeatureCannotBeReleased) {
  for (bool cr : {false, true}) {
    FakeClock clock(Utc(2026, 6, 1, 10));
    MemoryJournal journal;
    LeaseId id;
    {
      std::unique_ptr<Ledger> l = Make(FeatureG(true), clock, &journal);
      ASSERT_NE(l, nullptr);
      id = Take(*l, "a", "g");
    }
    std::unique_ptr<Ledger> l = Restarted(FeatureG(false), clock, journal, cr);
    ASSERT_NE(l, nullptr);
    EXPECT_OK(l->Release(id, std::nullopt).status()) << "create_restored " << cr;
    ASSERT_OK(l->Reload(FeatureG(true)));
    EXPECT_EQ(LeasesOf(*l, "a", "g"), 0u) << "create_restored " << cr;
    // (What g grants then is the pre-existing bug's: the carried counter's slot.)
  }
}

// Back under another kind or scoping: never looser than a restart under that policy from the
// same journal, never a crash; a scoped window limit counts the 8 in every scope.
TEST(RestoreUnplacedAttackTest, ReaddedUnderAnotherKindOrScoping) {
  LimitSpec scoped_day = Calendar("per_day", 10, CalendarUnit::kDay);
  scoped_day.scoped = true;
  LimitSpec scoped_small = Calendar("per_day", 5, CalendarUnit::kDay);
  scoped_small.scoped = true;
  struct Back {
    LimitSpec limit;
    int at_most_s1;  // what scope s1 may grant at most
  };
  for (const Back& back : std::vector<Back>{{Concurrency("per_day", 10), 10},
                                            {scoped_day, 2},
                                            {scoped_small, 0},
                                            {Sliding("per_day", 9, absl::Hours(24)), 1}}) {
    const Policy p = WithB(std::vector<LimitSpec>{back.limit});
    for (bool cr : {false, true}) {
      const std::string what = absl::StrCat("kind ", static_cast<int>(back.limit.kind), " scoped ",
                                            back.limit.scoped, " create_restored ", cr);
      FakeClock clock(Utc(2026, 6, 1, 10));
      MemoryJournal journal;
      MemoryJournal copy;
      {
        std::unique_ptr<Ledger> l = Make(DayB(10), clock, &journal);
        ASSERT_NE(l, nullptr);
        ASSERT_EQ(Grants(*l, "b", "f", "", 8), 8);
        absl::StatusOr<JournalState> s = journal.Load();
        ASSERT_OK(s.status());
        ASSERT_OK(copy.Reserve(s->reservations));
        for (const JournalLease& jl : s->leases) ASSERT_OK(copy.PutLease(jl));
      }
      clock.Advance(absl::Minutes(5));
      std::unique_ptr<Ledger> l = Restarted(OnlyA(), clock, journal, cr);
      ASSERT_NE(l, nullptr);
      ASSERT_OK(l->Reload(p));
      std::unique_ptr<Ledger> direct = Restarted(p, clock, copy, cr);
      ASSERT_NE(direct, nullptr);
      const int got = Grants(*l, "b", "f", "s1");
      EXPECT_LE(got, back.at_most_s1) << what;
      EXPECT_LE(got, Grants(*direct, "b", "f", "s1")) << what;
    }
  }
}

// Reset of b while it is dropped is refused (b is not configured) in both; Reset after the
// re-add starts b over in both. Reset of a (configured) while its removed limit's records are
// kept starts that limit over in both too.
TEST(RestoreUnplacedAttackTest, ResetWhileDroppedAndAfterTheReadd) {
  for (bool reset_after : {false, true}) {
    int ref;
    std::string ref_status;
    {
      FakeClock clock(Utc(2026, 6, 1, 10));
      std::unique_ptr<Ledger> l = Make(DayB(10), clock, nullptr);
      ASSERT_NE(l, nullptr);
      ASSERT_EQ(Grants(*l, "b", "f", "", 8), 8);
      ASSERT_OK(l->Reload(OnlyA()));
      ref_status = Str(l->Reset("b"));
      ASSERT_OK(l->Reload(DayB(10)));
      if (reset_after) {
        ASSERT_OK(l->Reset("b"));
      }
      ref = Grants(*l, "b");
    }
    EXPECT_EQ(ref, reset_after ? 10 : 2);
    for (bool cr : {false, true}) {
      FakeClock clock(Utc(2026, 6, 1, 10));
      MemoryJournal journal;
      {
        std::unique_ptr<Ledger> l = Make(DayB(10), clock, &journal);
        ASSERT_NE(l, nullptr);
        ASSERT_EQ(Grants(*l, "b", "f", "", 8), 8);
      }
      std::unique_ptr<Ledger> l = Restarted(OnlyA(), clock, journal, cr);
      ASSERT_NE(l, nullptr);
      EXPECT_EQ(Str(l->Reset("b")), ref_status);
      ASSERT_OK(l->Reload(DayB(10)));
      if (reset_after) {
        ASSERT_OK(l->Reset("b"));
      }
      EXPECT_EQ(Grants(*l, "b"), ref) << "reset_after " << reset_after << " cr " << cr;
    }
  }
  // a's limit "hour" removed at the restart, a reset, "hour" back: in both it starts over, and
  // a restart after the reset does not bring the 8 back either... only as strict as it may be:
  // at most the reference, at least nothing over capacity.
  const Policy both = [] {
    Policy p;
    p.credentials.push_back(Credential(
        "a", "p",
        {Feature("f", {Calendar("per_day", 100, CalendarUnit::kDay),
                       Calendar("hour", 10, CalendarUnit::kHour)})}));
    return p;
  }();
  const Policy day_only = [] {
    Policy p;
    p.credentials.push_back(
        Credential("a", "p", {Feature("f", {Calendar("per_day", 100, CalendarUnit::kDay)})}));
    return p;
  }();
  int ref;
  {
    FakeClock clock(Utc(2026, 6, 1, 10));
    std::unique_ptr<Ledger> l = Make(both, clock, nullptr);
    ASSERT_NE(l, nullptr);
    ASSERT_EQ(Grants(*l, "a", "f", "", 8), 8);
    ASSERT_OK(l->Reload(day_only));
    ASSERT_OK(l->Reset("a"));
    ASSERT_OK(l->Reload(both));
    ref = Grants(*l, "a");
  }
  EXPECT_EQ(ref, 10);
  for (bool cr : {false, true}) {
    FakeClock clock(Utc(2026, 6, 1, 10));
    MemoryJournal journal;
    {
      std::unique_ptr<Ledger> l = Make(both, clock, &journal);
      ASSERT_NE(l, nullptr);
      ASSERT_EQ(Grants(*l, "a", "f", "", 8), 8);
    }
    std::unique_ptr<Ledger> l = Restarted(day_only, clock, journal, cr);
    ASSERT_NE(l, nullptr);
    ASSERT_OK(l->Reset("a"));
    ASSERT_OK(l->Reload(both));
    EXPECT_EQ(Grants(*l, "a"), ref) << "create_restored " << cr;
  }
}

// Compact while b's records are kept, a second restart still without b, then b back: the 8
// still count (Compact keeps records that have not ended, whoever holds them).
TEST(RestoreUnplacedAttackTest, CompactWhileKeptThenAnotherRestart) {
  for (bool cr : {false, true}) {
    FakeClock clock(Utc(2026, 6, 1, 10));
    MemoryJournal journal;
    LeaseId lease;
    {
      Policy p = DayB(10);
      p.credentials[1].features.push_back(Feature("g", {Concurrency("k", 1)}));
      std::unique_ptr<Ledger> l = Make(p, clock, &journal);
      ASSERT_NE(l, nullptr);
      ASSERT_EQ(Grants(*l, "b", "f", "", 8), 8);
      lease = Take(*l, "b", "g");
    }
    {
      std::unique_ptr<Ledger> l = Restarted(OnlyA(), clock, journal, cr);
      ASSERT_NE(l, nullptr);
      clock.Advance(absl::Minutes(5));
      ASSERT_OK(journal.Compact(l->CompactionTimeNs()));
    }
    std::unique_ptr<Ledger> l = Restarted(OnlyA(), clock, journal, !cr);
    ASSERT_NE(l, nullptr);
    ASSERT_OK(journal.Compact(l->CompactionTimeNs()));
    Policy back = DayB(10);
    back.credentials[1].features.push_back(Feature("g", {Concurrency("k", 1)}));
    ASSERT_OK(l->Reload(back));
    EXPECT_EQ(Grants(*l, "b"), 2) << "create_restored " << cr;
    EXPECT_EQ(Grants(*l, "b", "g"), 0) << "create_restored " << cr;
    EXPECT_EQ(LeasesOf(*l, "b", "g"), 1u) << "create_restored " << cr;
  }
}

// A restart after the records were applied (and b charged on top, and the lease released):
// the lease is not restored again, the slot is free once, the count is never looser.
TEST(RestoreUnplacedAttackTest, RestartAfterTheRecordsWereApplied) {
  Policy full = DayB(10);
  full.credentials[1].features.push_back(Feature("g", {Concurrency("k", 2)}));
  for (bool release : {false, true}) {
    for (bool cr : {false, true}) {
      const std::string what = absl::StrCat("release ", release, " create_restored ", cr);
      FakeClock clock(Utc(2026, 6, 1, 10));
      MemoryJournal journal;
      LeaseId lease;
      {
        std::unique_ptr<Ledger> l = Make(full, clock, &journal);
        ASSERT_NE(l, nullptr);
        ASSERT_EQ(Grants(*l, "b", "f", "", 5), 5);
        lease = Take(*l, "b", "g");
      }
      {
        std::unique_ptr<Ledger> l = Restarted(OnlyA(), clock, journal, cr);
        ASSERT_NE(l, nullptr);
        clock.Advance(absl::Minutes(1));
        ASSERT_OK(l->Reload(full));
        ASSERT_EQ(Grants(*l, "b", "f", "", 3), 3) << what;
        if (release) {
          ASSERT_OK(l->Release(lease, std::nullopt).status()) << what;
        }
      }
      for (int restart = 0; restart < 2; ++restart) {
        clock.Advance(absl::Minutes(1));
        std::unique_ptr<Ledger> l = Restarted(full, clock, journal, cr);
        ASSERT_NE(l, nullptr);
        EXPECT_EQ(LeasesOf(*l, "b", "g"), release ? 0u : 1u) << what;
        if (restart == 1) {
          // 8 of 10 were granted; a journal may count a little more (blocks written ahead).
          EXPECT_LE(Grants(*l, "b"), 2) << what;
          EXPECT_EQ(Grants(*l, "b", "g"), release ? 2 : 1) << what;
        }
      }
    }
  }
}

// Many credentials dropped at the restart and brought back: each keeps its own count.
TEST(RestoreUnplacedAttackTest, ManyCredentialsBroughtBack) {
  constexpr int kN = 300;
  Policy all = OnlyA();
  for (int i = 0; i < kN; ++i) {
    all.credentials.push_back(Credential(
        absl::StrCat("b", i), "p", {Feature("f", {Calendar("per_day", 5, CalendarUnit::kDay)})}));
  }
  FakeClock clock(Utc(2026, 6, 1, 10));
  MemoryJournal journal;
  {
    std::unique_ptr<Ledger> l = Make(all, clock, &journal);
    ASSERT_NE(l, nullptr);
    for (int i = 0; i < kN; ++i) ASSERT_EQ(Grants(*l, absl::StrCat("b", i), "f", "", i % 6), i % 6);
  }
  std::unique_ptr<MemoryJournal> copy = CopyOf(journal);
  std::unique_ptr<Ledger> direct = Restarted(all, clock, *copy, false);
  ASSERT_NE(direct, nullptr);
  std::unique_ptr<Ledger> l = Restarted(OnlyA(), clock, journal, true);
  ASSERT_NE(l, nullptr);
  ASSERT_OK(l->Reload(all));
  ASSERT_OK(l->Reload(OnlyA()));
  ASSERT_OK(l->Reload(all));
  for (int i = 0; i < kN; ++i) {
    // As a restart under `all` (a journal counts blocks written ahead: never less than used).
    const int got = Grants(*l, absl::StrCat("b", i));
    EXPECT_EQ(got, Grants(*direct, absl::StrCat("b", i))) << i;
    EXPECT_LE(got, 5 - std::min(5, i % 6)) << i;
  }
}

// Reloads that drop and re-add b race acquires on a and on b: a grants exactly its 10, b never
// more than the 2 its kept records leave; no crash (bounded: 40 reloads).
TEST(RestoreUnplacedAttackTest, ReloadsRacingAcquires) {
  FakeClock clock(Utc(2026, 6, 1, 10));
  MemoryJournal journal;
  {
    std::unique_ptr<Ledger> l = Make(DayB(10), clock, &journal);
    ASSERT_NE(l, nullptr);
    ASSERT_EQ(Grants(*l, "b", "f", "", 8), 8);
  }
  std::unique_ptr<Ledger> l = Restarted(OnlyA(), clock, journal, false);
  ASSERT_NE(l, nullptr);
  std::atomic<bool> stop{false};
  std::atomic<int> a_granted{0};
  std::atomic<int> b_granted{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 2; ++t) {
    threads.emplace_back([&, t] {
      while (!stop.load()) {
        absl::StatusOr<Decision> d = l->Acquire(Req(t == 0 ? "a" : "b"));
        if (d.ok() && d->granted) (t == 0 ? a_granted : b_granted)++;
      }
    });
  }
  for (int i = 0; i < 40; ++i) {
    EXPECT_OK(l->Reload(i % 2 ? OnlyA() : DayB(10)));
  }
  ASSERT_OK(l->Reload(DayB(10)));
  stop = true;
  for (std::thread& t : threads) t.join();
  const int a_rest = Grants(*l, "a");
  const int b_rest = Grants(*l, "b");
  EXPECT_EQ(a_granted.load() + a_rest, 10);
  EXPECT_EQ(b_granted.load() + b_rest, 2);
}

}  // namespace
}  // namespace quotad
