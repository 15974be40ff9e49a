// The Journal contract (service/core/journal.h), one suite run against every implementation:
// MemoryJournal and SqliteJournal now, Redis when it comes (add its factory to kJournals).
//
// A test writes, then reads what a restart would read (Reloaded): a durable implementation is
// closed and opened again over the same storage first, so every test also checks that what
// was written survives a reopen. The SQLite journal's own behaviour (group commit, the lease
// log, start-up safety, disk bounds, crashes) is tested in sqlite_journal_test, lease_log_test,
// disk_bound_test and crash_test.

#include <algorithm>
#include <cstdint>
#include <functional>
#include <memory>
#include <ostream>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "service/core/journal.h"
#include "service/store/memory_journal.h"
#include "service/store/sqlite_journal.h"
#include "tests/support/status_matchers.h"
#include "tests/support/temp_dir.h"
#include "tests/store/journal_records.h"

namespace quotad {
namespace {

using ::testing::IsEmpty;
using testing::Lease;
using testing::Res;
using testing::TempDir;

// One implementation under test.
struct JournalFactory {
  std::string name;
  // Reopening reads the same storage anew (otherwise Reloaded keeps the instance).
  bool durable = false;
  // Opens the journal, keeping its storage (if any) under `dir`.
  std::function<absl::StatusOr<std::unique_ptr<Journal>>(const std::string& dir)> open;
};

void PrintTo(const JournalFactory& f, std::ostream* os) { *os << f.name; }

const JournalFactory kJournals[] = {
    {"Memory", false,
     [](const std::string&) -> absl::StatusOr<std::unique_ptr<Journal>> {
       return std::make_unique<MemoryJournal>();
     }},
    {"Sqlite", true,
     [](const std::string& dir) -> absl::StatusOr<std::unique_ptr<Journal>> {
       absl::StatusOr<std::unique_ptr<SqliteJournal>> j = SqliteJournal::Open(dir + "/state.db");
       if (!j.ok()) return j.status();
       return std::unique_ptr<Journal>(std::move(*j));
     }},
};

// A lease id as the ledger writes it (LeaseId::ToString: 32 lowercase hex digits).
std::string HexId(int i) {
  std::string id = absl::StrCat(i);
  return std::string(32 - id.size(), 'a') + id;
}

// Every record of a state as one line each, sorted: implementations may load in any order.
std::vector<std::string> Rows(const JournalState& s) {
  std::vector<std::string> rows;
  for (const Reservation& r : s.reservations) {
    rows.push_back(absl::StrCat("reservation ", r.key.credential, "/", r.key.limit, "/",
                                r.key.scope, "@", r.window_start_ns, " until=", r.until_ns,
                                " units=", r.units));
  }
  for (const JournalLease& l : s.leases) {
    rows.push_back(absl::StrCat("lease ", l.id, " ", l.credential, "/", l.feature, "/", l.scope,
                                " holder=", l.holder, " cost=", l.cost, " granted=", l.granted_ns,
                                " expiry=", l.expiry_ns, " slots=", l.holds_slots,
                                " tokens=", absl::StrJoin(l.tokens, ",")));
  }
  for (const JournalCooldown& c : s.cooldowns) {
    rows.push_back(absl::StrCat("cooldown ", c.credential, "/", c.feature, " until=", c.until_ns));
  }
  for (const JournalOutside& o : s.outside) {
    rows.push_back(absl::StrCat("outside ", o.credential, "/", o.limit, " milli=", o.outside_milli,
                                " at=", o.at_ns, " cooldown=", o.cooldown_until_ns,
                                " consecutive=", o.consecutive, " until=", o.until_ns));
  }
  std::sort(rows.begin(), rows.end());
  return rows;
}

// The rows of exactly these records.
std::vector<std::string> RowsOf(std::vector<Reservation> reservations,
                                std::vector<JournalLease> leases = {},
                                std::vector<JournalCooldown> cooldowns = {},
                                std::vector<JournalOutside> outside = {}) {
  JournalState s;
  s.reservations = std::move(reservations);
  s.leases = std::move(leases);
  s.cooldowns = std::move(cooldowns);
  s.outside = std::move(outside);
  return Rows(s);
}

class JournalConformanceTest : public ::testing::TestWithParam<JournalFactory> {
 protected:
  void SetUp() override { journal_ = Open(); }

  std::unique_ptr<Journal> Open() {
    absl::StatusOr<std::unique_ptr<Journal>> j = GetParam().open(dir_.path());
    EXPECT_OK(j);
    return j.ok() ? std::move(*j) : nullptr;
  }

  // What a restart reads. A durable journal is closed (writing what is queued, as a graceful
  // stop does) and opened again first.
  std::vector<std::string> Reloaded() {
    if (GetParam().durable) {
      journal_.reset();
      journal_ = Open();
    }
    return Loaded();
  }

  // What Load returns now, without a reopen.
  std::vector<std::string> Loaded() {
    absl::StatusOr<JournalState> s = journal_->Load();
    EXPECT_OK(s);
    return s.ok() ? Rows(*s) : std::vector<std::string>{"Load failed"};
  }

  TempDir dir_;
  std::unique_ptr<Journal> journal_;
};

TEST_P(JournalConformanceTest, NewJournalLoadsEmpty) {
  ASSERT_NE(journal_, nullptr);
  EXPECT_THAT(Loaded(), IsEmpty());
  EXPECT_THAT(Reloaded(), IsEmpty());
}

TEST_P(JournalConformanceTest, LoadReturnsEveryRecordKindAsWritten) {
  const std::vector<Reservation> reservations = {
      Res("vt/prod", "api.per_day", "", 100, 200, 500),
      Res("vt/prod", "api.per_minute", "", 150, INT64_MAX, 40),  // sliding, newest block
      Res("vt/prod", "livehunt.per_day", "ruleset-7", 100, 200, 10),
      Res("vt/prod", "api.bucket", "", 0, 999, 1767225600000000000),  // a bucket's arrival time
  };
  const std::vector<JournalLease> leases = {Lease(HexId(1), true), Lease(HexId(2), false),
                                            Lease("not-a-hex-id", false)};
  const JournalCooldown cooldown{"vt/prod", "api", 7000};
  const JournalOutside outside{"vt/prod", "api.per_day", 2500, 6000, 6500, 3, 9000};
  ASSERT_OK(journal_->Reserve(reservations));
  for (const JournalLease& l : leases) ASSERT_OK(journal_->PutLease(l));
  ASSERT_OK(journal_->PutCooldown(cooldown));
  ASSERT_OK(journal_->PutOutside(outside));

  const std::vector<std::string> expected = RowsOf(reservations, leases, {cooldown}, {outside});
  EXPECT_EQ(Loaded(), expected);  // every write, queued ones too, is in the next Load
  EXPECT_EQ(Reloaded(), expected);
}

TEST_P(JournalConformanceTest, ReservationsOfTheSameKeyAndWindowStartReplaceEachOther) {
  ASSERT_OK(journal_->Reserve({Res("c", "f.per_day", "", 100, 200, 50)}));
  ASSERT_OK(journal_->Reserve({Res("c", "f.per_day", "", 100, 250, 100)}));
  ASSERT_OK(journal_->Reserve({Res("c", "f.per_day", "s", 100, 200, 7),  // other scope
                               Res("c", "f.per_day", "", 200, 300, 1),   // next window
                               Res("d", "f.per_day", "", 100, 200, 3)}));  // other credential
  EXPECT_EQ(
      Reloaded(),
      RowsOf({Res("c", "f.per_day", "", 100, 250, 100), Res("c", "f.per_day", "s", 100, 200, 7),
              Res("c", "f.per_day", "", 200, 300, 1), Res("d", "f.per_day", "", 100, 200, 3)}));
}

TEST_P(JournalConformanceTest, NegativeUnitsOnlyMoveTheUntilOfTheRecordTheyName) {
  ASSERT_OK(journal_->Reserve({Res("c", "f.sliding", "", 100, INT64_MAX, 30),
                               Res("c", "f.sliding", "", 300, INT64_MAX, 60)}));
  ASSERT_OK(journal_->Reserve({Res("c", "f.sliding", "", 100, 5000, -1)}));
  // Naming a record that does not exist creates nothing.
  ASSERT_OK(journal_->Reserve({Res("c", "f.sliding", "", 200, 7000, -1)}));
  EXPECT_EQ(Reloaded(), RowsOf({Res("c", "f.sliding", "", 100, 5000, 30),
                                Res("c", "f.sliding", "", 300, INT64_MAX, 60)}));
}

TEST_P(JournalConformanceTest, PutLeaseOfTheSameIdReplacesIt) {
  JournalLease slot = Lease(HexId(1), true, 5000);
  JournalLease refund = Lease(HexId(2), false, 5000);
  ASSERT_OK(journal_->PutLease(slot));
  ASSERT_OK(journal_->PutLease(refund));
  slot.expiry_ns = 8000;
  slot.holder = "worker-4";
  refund.expiry_ns = 9000;
  refund.tokens = {42};
  ASSERT_OK(journal_->PutLease(slot));
  ASSERT_OK(journal_->PutLease(refund));
  EXPECT_EQ(Reloaded(), RowsOf({}, {slot, refund}));
}

// The ledger renews with RenewLease the leases that hold slots (a refund-only lease is written
// again with PutLease).
TEST_P(JournalConformanceTest, RenewLeaseMovesTheExpiryOfALeaseThatHoldsSlots) {
  JournalLease slot = Lease(HexId(1), true, 5000);
  ASSERT_OK(journal_->PutLease(slot));
  ASSERT_OK(journal_->RenewLease(slot.id, 9000));
  ASSERT_OK(journal_->RenewLease(HexId(9), 9000));  // unknown: nothing to do
  slot.expiry_ns = 9000;
  EXPECT_EQ(Reloaded(), RowsOf({}, {slot}));
}

TEST_P(JournalConformanceTest, DeleteLeaseForgetsLeasesOfBothKinds) {
  const JournalLease slot = Lease(HexId(1), true);
  const JournalLease refund = Lease(HexId(2), false);
  const JournalLease kept = Lease(HexId(3), false);
  for (const JournalLease& l : {slot, refund, kept}) ASSERT_OK(journal_->PutLease(l));
  journal_->DeleteLease(slot.id);
  journal_->DeleteLease(refund.id);
  journal_->DeleteLease(HexId(9));  // unknown: nothing to do
  EXPECT_EQ(Loaded(), RowsOf({}, {kept}));
  EXPECT_EQ(Reloaded(), RowsOf({}, {kept}));
}

TEST_P(JournalConformanceTest, CooldownsReplaceEachOtherPerCredentialAndFeature) {
  ASSERT_OK(journal_->PutCooldown({"c", "api", 1000}));
  ASSERT_OK(journal_->PutCooldown({"c", "api", 3000}));
  ASSERT_OK(journal_->PutCooldown({"c", "intel", 2000}));
  ASSERT_OK(journal_->PutCooldown({"d", "api", 500}));
  EXPECT_EQ(Reloaded(),
            RowsOf({}, {}, {{"c", "api", 3000}, {"c", "intel", 2000}, {"d", "api", 500}}));
}

TEST_P(JournalConformanceTest, OutsideRecordsReplaceEachOtherPerCredentialAndLimit) {
  const JournalOutside first{"c", "api.per_day", 1000, 10, 20, 1, 5000};
  const JournalOutside second{"c", "api.per_day", 4000, 30, 90, 2, 8000};
  const JournalOutside other_limit{"c", "api.per_minute", 7, 30, 0, 0, 600};
  const JournalOutside other_credential{"d", "api.per_day", 9, 30, 0, 0, 600};
  for (const JournalOutside& o : {first, second, other_limit, other_credential}) {
    ASSERT_OK(journal_->PutOutside(o));
  }
  EXPECT_EQ(Reloaded(), RowsOf({}, {}, {}, {second, other_limit, other_credential}));
}

// Compact(now) drops what ended by `now` (until or expiry <= now) and keeps, unchanged, all that
// still matters. A refund-only lease may outlive its expiry in storage until the leases written
// with it end (SQLite's lease log keeps a row until its last lease ends; the ledger skips ended
// leases at Restore): so the live one is written after the ended ones were read.
TEST_P(JournalConformanceTest, CompactDropsWhatEndedAndKeepsWhatStillMatters) {
  const int64_t now = 100;
  ASSERT_OK(journal_->Reserve({Res("c", "f.ended", "", 0, now, 1),
                               Res("c", "f.live", "", 0, now + 1, 2),
                               Res("c", "f.newest_block", "", 50, INT64_MAX, 3)}));
  const JournalLease ended_slot = Lease(HexId(1), true, now);
  const JournalLease live_slot = Lease(HexId(2), true, now + 1);
  const JournalLease ended_refund = Lease(HexId(3), false, now);
  const JournalLease live_refund = Lease(HexId(4), false, now + 1);
  for (const JournalLease& l : {ended_slot, live_slot, ended_refund}) {
    ASSERT_OK(journal_->PutLease(l));
  }
  const JournalCooldown ended_cooldown{"c", "api", now};
  const JournalCooldown live_cooldown{"c", "intel", now + 1};
  const JournalOutside ended_outside{"c", "api.per_day", 1, 2, 3, 4, now};
  const JournalOutside live_outside{"c", "api.per_minute", 5, 6, 7, 8, now + 1};
  for (const JournalCooldown& c : {ended_cooldown, live_cooldown}) {
    ASSERT_OK(journal_->PutCooldown(c));
  }
  for (const JournalOutside& o : {ended_outside, live_outside}) {
    ASSERT_OK(journal_->PutOutside(o));
  }
  ASSERT_EQ(Loaded().size(), 10u);
  ASSERT_OK(journal_->PutLease(live_refund));

  ASSERT_OK(journal_->Compact(now));
  const std::vector<std::string> expected = RowsOf(
      {Res("c", "f.live", "", 0, now + 1, 2), Res("c", "f.newest_block", "", 50, INT64_MAX, 3)},
      {live_slot, live_refund}, {live_cooldown}, {live_outside});
  EXPECT_EQ(Loaded(), expected);
  EXPECT_EQ(Reloaded(), expected);

  // Later, everything ends but the newest block's reservation.
  ASSERT_OK(journal_->Compact(now + 1));
  EXPECT_EQ(Reloaded(), RowsOf({Res("c", "f.newest_block", "", 50, INT64_MAX, 3)}));
}

TEST_P(JournalConformanceTest, CompactBeforeAnythingEndedKeepsEverything) {
  ASSERT_OK(journal_->Reserve({Res("c", "f.per_day", "", 0, 200, 1)}));
  ASSERT_OK(journal_->PutLease(Lease(HexId(1), true, 200)));
  ASSERT_OK(journal_->PutLease(Lease(HexId(2), false, 200)));
  const std::vector<std::string> before = Loaded();
  ASSERT_OK(journal_->Compact(199));
  EXPECT_EQ(Reloaded(), before);
}

// Implementations are thread-safe: concurrent writers lose nothing.
TEST_P(JournalConformanceTest, ConcurrentWritersLoseNothing) {
  constexpr int kThreads = 4;
  constexpr int kEach = 50;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([this, t] {
      for (int i = 0; i < kEach; ++i) {
        const int n = t * kEach + i;
        EXPECT_OK(journal_->Reserve({Res("c", absl::StrCat("f.l", n), "", 0, 1000, n)}));
        EXPECT_OK(journal_->PutLease(Lease(HexId(n), n % 2 == 0)));
        if (n % 5 == 0) journal_->DeleteLease(HexId(n));
      }
    });
  }
  for (std::thread& t : threads) t.join();
  absl::StatusOr<JournalState> s = journal_->Load();
  ASSERT_OK(s);
  EXPECT_EQ(s->reservations.size(), static_cast<size_t>(kThreads * kEach));
  EXPECT_EQ(s->leases.size(), static_cast<size_t>(kThreads * kEach * 4 / 5));
  EXPECT_EQ(Reloaded(), Rows(*s));
}

INSTANTIATE_TEST_SUITE_P(AllJournals, JournalConformanceTest, ::testing::ValuesIn(kJournals),
                         [](const ::testing::TestParamInfo<JournalFactory>& info) {
                           return info.param.name;
                         });

}  // namespace
}  // namespace quotad
