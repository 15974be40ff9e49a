// SqliteJournal on a real SQLite file, what is particular to it: the group-committed writes,
// and start-up safety (corrupt, foreign, read-only and full files). The Journal contract
// (round trips, replace and until-only semantics, compaction, reopen) is journal_conformance_test.

#include "service/store/sqlite_journal.h"

#include <sqlite3.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "service/core/ledger.h"
#include "tests/store/journal_records.h"
#include "tests/support/eventually.h"
#include "tests/support/policy_builders.h"
#include "tests/support/status_matchers.h"
#include "tests/support/temp_dir.h"

namespace quotad {
namespace {

using ::testing::Not;
using testing::Calendar;
using testing::Concurrency;
using testing::Feature;
using testing::IsOk;
using testing::OneCredential;
using testing::StatusIs;
using testing::Lease;
using testing::Res;
using testing::TempDir;
using testing::Utc;

const JournalLease* FindLease(const JournalState& s, const std::string& id) {
  for (const JournalLease& l : s.leases) {
    if (l.id == id) return &l;
  }
  return nullptr;
}

bool Contains(const absl::Status& s, const std::string& text) {
  return std::string(s.message()).find(text) != std::string::npos;
}

class SqliteJournalTest : public ::testing::Test {
 protected:
  std::unique_ptr<SqliteJournal> OpenOk(SqliteOptions options = {}) {
    auto j = SqliteJournal::Open(path_, options);
    EXPECT_OK(j);
    return j.ok() ? std::move(*j) : nullptr;
  }
  JournalState Reload() {
    journal_.reset();
    journal_ = OpenOk();
    auto s = journal_->Load();
    EXPECT_OK(s);
    return s.ok() ? *s : JournalState{};
  }
  void WriteFile(const std::string& bytes) {
    std::ofstream(path_, std::ios::binary | std::ios::trunc) << bytes;
  }

  TempDir dir_;
  const std::string path_ = dir_.File("state.db");
  std::unique_ptr<SqliteJournal> journal_;
};

TEST_F(SqliteJournalTest, NewFileLoadsEmpty) {
  journal_ = OpenOk();
  auto s = journal_->Load();
  ASSERT_OK(s);
  EXPECT_TRUE(s->reservations.empty());
  EXPECT_TRUE(s->leases.empty());
  EXPECT_TRUE(std::filesystem::exists(path_));
}

TEST_F(SqliteJournalTest, QueuedLeasesAreVisibleAfterFlushAndAfterReopen) {
  SqliteOptions options;
  options.commit_interval = absl::Hours(1);  // only Flush or the batch size writes
  options.commit_batch = 1'000'000;
  journal_ = OpenOk(options);
  for (int i = 0; i < 100; ++i) {
    ASSERT_OK(journal_->PutLease(Lease("l" + std::to_string(i), false)));
  }
  for (int i = 0; i < 100; i += 2) journal_->DeleteLease("l" + std::to_string(i));
  EXPECT_EQ(journal_->stats().records, 0);  // nothing written yet: off the hot path
  ASSERT_OK(journal_->Flush());
  EXPECT_EQ(journal_->stats().records, 150);
  EXPECT_EQ(journal_->stats().commits, 1);

  // A second connection sees exactly the flushed state.
  {
    auto other = SqliteJournal::Open(path_);
    ASSERT_OK(other);
    EXPECT_EQ((*other)->Load()->leases.size(), 50u);
  }
  journal_->DeleteLease("l1");
  ASSERT_OK(journal_->PutLease(Lease("late", false)));
  const JournalState s = Reload();  // the destructor writes what is queued
  EXPECT_EQ(s.leases.size(), 50u);
  EXPECT_EQ(FindLease(s, "l1"), nullptr);
  EXPECT_NE(FindLease(s, "late"), nullptr);
  EXPECT_NE(FindLease(s, "l99"), nullptr);
}

// A lease written refund-only (the lease log) and later again as holding slots (a reload made
// its limit a concurrency one; Ledger::Renew first releases the log copy) loads once, as the
// row; and once the row is released, nothing of it comes back.
TEST_F(SqliteJournalTest, ALeaseRewrittenWithSlotsLoadsOnceAndItsReleaseLeavesNothing) {
  journal_ = OpenOk();
  ASSERT_OK(journal_->PutLease(Lease("conv", false)));
  ASSERT_OK(journal_->Flush());
  ASSERT_OK(journal_->PutLease(Lease("conv", true)));  // no release of the log copy (a crash)
  JournalState s = Reload();
  ASSERT_EQ(s.leases.size(), 1u);
  EXPECT_TRUE(s.leases[0].holds_slots);
  // What the ledger does: the log copy released first, then the row written; then released.
  journal_->DeleteLease("conv");  // the row
  journal_->DeleteLease("conv");  // no row now: a release record for the log copy
  ASSERT_OK(journal_->PutLease(Lease("conv2", false)));
  ASSERT_OK(journal_->Flush());
  journal_->DeleteLease("conv2");
  ASSERT_OK(journal_->PutLease(Lease("conv2", true)));
  journal_->DeleteLease("conv2");
  s = Reload();
  EXPECT_EQ(FindLease(s, "conv"), nullptr);
  EXPECT_EQ(FindLease(s, "conv2"), nullptr);
}

// The writer thread commits on its own, when enough records wait or when the interval ends.
// (Waits for the writer's counters, bounded; there is no clock to advance for a real thread.
// The bound only guards against a writer that never commits: a commit's fsync on a shared,
// loaded disk can take seconds.)
bool WaitForRecords(SqliteJournal& j, int64_t n) {
  testing::Eventually([&] { return j.stats().records >= n; }, absl::Seconds(30),
                      absl::Milliseconds(1));
  return j.stats().records == n;
}

TEST_F(SqliteJournalTest, GroupCommitWritesWhenTheBatchIsFull) {
  SqliteOptions options;
  options.commit_interval = absl::Hours(1);
  options.commit_batch = 16;
  journal_ = OpenOk(options);
  for (int i = 0; i < 16; ++i) {
    ASSERT_OK(journal_->PutLease(Lease("l" + std::to_string(i), false)));
  }
  EXPECT_TRUE(WaitForRecords(*journal_, 16));
}

TEST_F(SqliteJournalTest, GroupCommitWritesWhenTheIntervalEnds) {
  SqliteOptions options;
  options.commit_interval = absl::Milliseconds(2);
  options.commit_batch = 1'000'000;
  journal_ = OpenOk(options);
  for (int i = 0; i < 5; ++i) journal_->DeleteLease("l" + std::to_string(i));
  EXPECT_TRUE(WaitForRecords(*journal_, 5));
  EXPECT_EQ(journal_->stats().commits, 1);
}

// A synchronous write does not wait for the queue (losing queued records only loses refunds or
// applies a release late); Flush and Load see the queue in order.
TEST_F(SqliteJournalTest, SynchronousWritesDoNotWaitForTheQueue) {
  SqliteOptions options;
  options.commit_interval = absl::Hours(1);
  options.commit_batch = 1'000'000;
  journal_ = OpenOk(options);
  ASSERT_OK(journal_->PutLease(Lease("refund", false)));
  journal_->DeleteLease("refund");
  ASSERT_OK(journal_->PutLease(Lease("slot", true)));
  ASSERT_OK(journal_->Reserve({Res("c", "f.a", "", 0, 100, 1)}));
  EXPECT_EQ(journal_->stats().records, 0);
  auto other = SqliteJournal::Open(path_);
  ASSERT_OK(other);
  auto s = (*other)->Load();
  ASSERT_EQ(s->leases.size(), 1u);
  EXPECT_EQ(s->leases[0].id, "slot");
  EXPECT_EQ(s->reservations.size(), 1u);
  ASSERT_OK(journal_->Flush());
  EXPECT_EQ(journal_->stats().records, 2);
  s = (*other)->Load();
  ASSERT_EQ(s->leases.size(), 1u);  // the release followed its lease
  EXPECT_EQ(s->leases[0].id, "slot");
}

TEST_F(SqliteJournalTest, GarbageFileFailsOpenNamingThePath) {
  WriteFile(std::string(8192, '\x5a'));
  auto j = SqliteJournal::Open(path_);
  ASSERT_THAT(j, StatusIs(absl::StatusCode::kDataLoss));
  EXPECT_TRUE(Contains(j.status(), path_)) << j.status();
  EXPECT_TRUE(Contains(j.status(), "not a database")) << j.status();
  EXPECT_TRUE(Contains(j.status(), "reset_corrupt")) << j.status();
  // Never a silent reset: the bytes are untouched.
  std::ifstream in(path_, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(bytes, std::string(8192, '\x5a'));
}

TEST_F(SqliteJournalTest, DamagedPagesFailOpen) {
  journal_ = OpenOk();
  std::vector<Reservation> many;
  for (int i = 0; i < 5000; ++i) {
    many.push_back(Res("cred-" + std::to_string(i), "f.per_day", "", 0, 100, i));
  }
  ASSERT_OK(journal_->Reserve(many));
  journal_.reset();  // checkpoints the WAL into the file
  const auto size = std::filesystem::file_size(path_);
  ASSERT_GT(size, 40'000u);
  {
    std::fstream f(path_, std::ios::binary | std::ios::in | std::ios::out);
    f.seekp(static_cast<std::streamoff>(size / 2));
    f << std::string(12'000, '\x33');
  }
  auto j = SqliteJournal::Open(path_);
  ASSERT_THAT(j, StatusIs(absl::StatusCode::kDataLoss));
  EXPECT_TRUE(Contains(j.status(), path_)) << j.status();
}

TEST_F(SqliteJournalTest, ForeignDatabaseAndOtherSchemaVersionFailOpen) {
  {
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open(path_.c_str(), &db), SQLITE_OK);
    sqlite3_exec(db, "CREATE TABLE photos (id INTEGER)", nullptr, nullptr, nullptr);
    sqlite3_close(db);
  }
  auto j = SqliteJournal::Open(path_);
  ASSERT_THAT(j, StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_TRUE(Contains(j.status(), "not a quotad state file (tables: photos)")) << j.status();

  std::filesystem::remove(path_);
  OpenOk().reset();
  {
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open(path_.c_str(), &db), SQLITE_OK);
    sqlite3_exec(db, "UPDATE schema_version SET version = 99", nullptr, nullptr, nullptr);
    sqlite3_close(db);
  }
  j = SqliteJournal::Open(path_);
  ASSERT_THAT(j, Not(IsOk()));
  EXPECT_TRUE(Contains(j.status(), path_)) << j.status();
  EXPECT_TRUE(Contains(j.status(), "schema version '99'")) << j.status();
}

TEST_F(SqliteJournalTest, ResetCorruptMovesTheFileAsideAndStartsEmpty) {
  WriteFile("this is not sqlite at all, but somebody's notes");
  SqliteOptions options;
  options.reset_corrupt = true;
  journal_ = OpenOk(options);
  ASSERT_NE(journal_, nullptr);
  EXPECT_TRUE(journal_->Load()->reservations.empty());
  ASSERT_OK(journal_->Reserve({Res("c", "f.per_day", "", 0, 100, 1)}));
  int moved = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir_.path())) {
    const std::string name = e.path().filename();
    if (name.rfind("state.db.corrupt-", 0) == 0) {
      ++moved;
      std::ifstream in(e.path());
      std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      EXPECT_EQ(text, "this is not sqlite at all, but somebody's notes");
    }
  }
  EXPECT_EQ(moved, 1);
}

TEST_F(SqliteJournalTest, UnreachablePathFailsOpenNamingIt) {
  const std::string path = "/proc/quotad-no-such-dir/state.db";
  auto j = SqliteJournal::Open(path);
  ASSERT_THAT(j, Not(IsOk()));
  EXPECT_TRUE(Contains(j.status(), path)) << j.status();
  EXPECT_TRUE(Contains(j.status(), "unable to open")) << j.status();
}

TEST_F(SqliteJournalTest, ReadOnlyDirectoryIsReportedWithThePath) {
  OpenOk()->Reserve({Res("c", "f.per_day", "", 0, 100, 1)}).IgnoreError();
  ASSERT_EQ(chmod(dir_.path().c_str(), 0555), 0);
  if (access(dir_.path().c_str(), W_OK) == 0) {
    GTEST_SKIP() << "running as root: chmod 0555 does not stop writes; "
                    "ReadOnlyFileFailsEveryWriteClosed covers the write path";
  }
  auto j = SqliteJournal::Open(path_);
  absl::Status s = j.status();
  if (j.ok()) s = (*j)->Reserve({Res("c", "f.per_day", "", 0, 100, 2)});
  ASSERT_THAT(s, Not(IsOk()));
  EXPECT_TRUE(Contains(s, path_)) << s;
}

// The write path when the file cannot be written: every write fails with the path and SQLite's
// message, and a ledger over it fails closed (kUnavailable) instead of granting.
TEST_F(SqliteJournalTest, ReadOnlyFileFailsEveryWriteClosed) {
  OpenOk().reset();
  SqliteOptions options;
  options.read_only = true;
  journal_ = OpenOk(options);
  ASSERT_OK(journal_->Load());
  absl::Status s = journal_->Reserve({Res("c", "f.per_day", "", 0, 100, 1)});
  EXPECT_THAT(s, Not(IsOk()));
  EXPECT_TRUE(Contains(s, path_)) << s;
  EXPECT_TRUE(Contains(s, "readonly")) << s;
  EXPECT_THAT(journal_->PutLease(Lease("slot", true)), Not(IsOk()));
  EXPECT_THAT(journal_->RenewLease("slot", 1), Not(IsOk()));

  FakeClock clock(Utc(2026, 3, 1, 12));
  LedgerOptions lo;
  lo.journal = journal_.get();
  auto ledger = Ledger::Create(
      OneCredential("cred", {Feature("f", {Calendar("per_day", 100, CalendarUnit::kDay)})}),
      &clock, lo);
  ASSERT_OK(ledger);
  ASSERT_OK((*ledger)->Restore());
  AcquireRequest req;
  req.credential = "cred";
  req.feature = "f";
  auto d = (*ledger)->Acquire(req);
  ASSERT_THAT(d, StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_TRUE(Contains(d.status(), path_)) << d.status();
}

TEST_F(SqliteJournalTest, FullDiskFailsWritesAndTheLedgerFailsClosed) {
  SqliteOptions options;
  options.max_pages = 12;  // a tiny "disk"
  journal_ = OpenOk(options);
  FakeClock clock(Utc(2026, 3, 1, 12));
  LedgerOptions lo;
  lo.journal = journal_.get();
  lo.reserve_fraction = 0.0;  // a block of 1: one reservation per grant
  auto ledger = Ledger::Create(
      OneCredential("cred", {Feature("f", {Calendar("per_day", 1'000'000, CalendarUnit::kDay),
                                           Concurrency("jobs", 1'000'000)})}),
      &clock, lo);
  ASSERT_OK(ledger);
  const std::string holder(200, 'h');  // big lease rows fill the pages fast
  AcquireRequest req;
  req.credential = "cred";
  req.feature = "f";
  req.holder = holder;
  absl::Status failure;
  int granted = 0;
  for (int i = 0; i < 10'000 && failure.ok(); ++i) {
    auto d = (*ledger)->Acquire(req);
    if (d.ok()) {
      granted += d->granted;
    } else {
      failure = d.status();
    }
  }
  ASSERT_THAT(failure, Not(IsOk())) << "the tiny file never filled up";
  EXPECT_THAT(failure, StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_TRUE(Contains(failure, path_)) << failure;
  EXPECT_TRUE(Contains(failure, "full")) << failure;
  // Every answered grant holds its slot; the failed one charged nothing.
  auto usage = (*ledger)->Usage("cred");
  ASSERT_OK(usage);
  for (const LimitStatus& l : *usage) EXPECT_EQ(l.used, granted) << l.name;
}

}  // namespace
}  // namespace quotad
