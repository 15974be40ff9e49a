// The state file and its WAL are bounded by live state, not by history (issue 18, finding 1):
// while a SqliteJournal is open and being written, its WAL is checkpointed and shrinks; after
// many leases that ended, the main file gives their pages back; a file of an older build is
// made auto_vacuum=INCREMENTAL at Open. The live leases survive all of it.
//
// Only the Journal interface, Flush and stat(2) are used, so that the test also runs against a
// store without the checkpointing (where it fails). The checkpoint runs on the journal's own
// writer thread: the test waits for its effect with a deadline, it never sleeps for a result.

#include <sqlite3.h>
#include <sys/stat.h>

#include <cstdio>
#include <memory>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "service/store/sqlite_journal.h"
#include "tests/support/eventually.h"
#include "tests/support/status_matchers.h"
#include "tests/support/temp_dir.h"

namespace quotad {
namespace {

using testing::Eventually;
using testing::TempDir;

constexpr int64_t kMiB = 1 << 20;
constexpr int64_t kSecond = 1'000'000'000;
// How long the writer thread gets to checkpoint (it acts on its own schedule).
constexpr absl::Duration kPatience = absl::Seconds(20);

int64_t Bytes(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 ? static_cast<int64_t>(st.st_size) : 0;
}

std::string Id(int64_t i) {
  char buf[33];
  std::snprintf(buf, sizeof(buf), "%032llx", static_cast<unsigned long long>(i));
  return buf;
}

// A refund-only lease granted at `granted_ns` for `ttl_ns`, as the ledger writes one.
JournalLease Lease(int64_t i, int64_t granted_ns, int64_t ttl_ns) {
  JournalLease l;
  l.id = Id(i);
  l.credential = "virustotal/prod";
  l.feature = "requests";
  l.scope = "";
  l.holder = absl::StrCat("worker-", i % 64);
  l.cost = 1;
  l.granted_ns = granted_ns;
  l.expiry_ns = granted_ns + ttl_ns;
  l.holds_slots = false;
  l.tokens = {granted_ns, granted_ns - kSecond};
  return l;
}

class DiskBoundTest : public ::testing::Test {
 protected:
  std::string path() const { return dir_.File("state.db"); }
  std::string wal() const { return path() + "-wal"; }

  // 300k acquire/release pairs of 1 ms leases, as fast as the journal takes them (more than
  // the 20k grants per second), `long_lived` leases of a day written first. The
  // ledger's clock is the real one here, so that the journal's own compaction of the log (never
  // past the newest grant) has leases that ended; 1 ms, so that what is live stays small
  // whatever the speed of the machine. Returns the largest WAL and file seen.
  std::pair<int64_t, int64_t> Churn(SqliteJournal& journal, int long_lived) {
    // What the server does a sweep after start-up: the journal learns the ledger's time.
    EXPECT_OK(journal.Compact(Now()));
    for (int i = 0; i < long_lived; ++i) {
      EXPECT_OK(journal.PutLease(Lease(1'000'000'000 + i, Now(), 86400 * kSecond)));
    }
    int64_t max_wal = 0;
    int64_t max_file = 0;
    constexpr int kPairs = 300'000;
    for (int i = 0; i < kPairs; ++i) {
      EXPECT_OK(journal.PutLease(Lease(i, Now(), kSecond / 1000)));
      journal.DeleteLease(Id(i));
      if (i % 5000 == 4999) {
        EXPECT_OK(journal.Flush());
        max_wal = std::max(max_wal, Bytes(wal()));
        max_file = std::max(max_file, Bytes(path()));
      }
    }
    EXPECT_OK(journal.Flush());
    return {std::max(max_wal, Bytes(wal())), std::max(max_file, Bytes(path()))};
  }
  static int64_t Now() { return absl::ToUnixNanos(absl::Now()); }

  TempDir dir_;
};

TEST_F(DiskBoundTest, WalShrinksWhileTheJournalIsOpen) {
  auto journal = SqliteJournal::Open(path());
  ASSERT_OK(journal);
  const auto [max_wal, max_file] = Churn(**journal, /*long_lived=*/10);
  std::printf("while writing: largest WAL %lld bytes, largest file %lld bytes\n",
              static_cast<long long>(max_wal), static_cast<long long>(max_file));
  // Never far past the checkpoint threshold (4 MiB) while writing...
  EXPECT_LT(max_wal, 24 * kMiB);
  // ...and back under it soon after, the journal still open.
  EXPECT_TRUE(Eventually([&] { return Bytes(wal()) <= 4 * kMiB; }, kPatience))
      << "WAL still " << Bytes(wal()) << " bytes";
  // Committed frames reached the main file: it holds the leases on its own (read without the
  // journal's WAL: a copy of the main file only).
  EXPECT_GT(Bytes(path()), 0);
}

TEST_F(DiskBoundTest, MainFileStaysBoundedAfterManyEndedLeases) {
  {
    auto journal = SqliteJournal::Open(path());
    ASSERT_OK(journal);
    const auto [max_wal, max_file] = Churn(**journal, /*long_lived=*/10);
    // 30 MB of leases and releases went through; the file held about one checkpoint's worth.
    EXPECT_LT(max_file, 8 * kMiB);
    ASSERT_OK((*journal)->Compact(Now() + kSecond));
    EXPECT_TRUE(
        Eventually([&] { return Bytes(path()) + Bytes(wal()) <= 4 * kMiB; }, kPatience))
        << "file " << Bytes(path()) << " bytes, WAL " << Bytes(wal()) << " bytes";
  }
  // Closed: what is left on disk is the live state, a few pages, not 300k leases of history.
  std::printf("closed: file %lld bytes, WAL %lld bytes\n", static_cast<long long>(Bytes(path())),
              static_cast<long long>(Bytes(wal())));
  EXPECT_LT(Bytes(path()), 2 * kMiB);
  EXPECT_LT(Bytes(wal()), 1 * kMiB);
  auto journal = SqliteJournal::Open(path());
  ASSERT_OK(journal);
  auto state = (*journal)->Load();
  ASSERT_OK(state);
  EXPECT_EQ(state->leases.size(), 10u);  // the day-long leases, and only them
}

TEST_F(DiskBoundTest, FileOfAnOlderBuildIsMadeIncrementalAtOpen) {
  {
    auto journal = SqliteJournal::Open(path());
    ASSERT_OK(journal);
    ASSERT_OK((*journal)->PutLease(Lease(7, Now(), 86400 * kSecond)));
  }
  // What an older build left: auto_vacuum=NONE.
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path().c_str(), &db), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(db, "PRAGMA auto_vacuum=NONE; VACUUM", nullptr, nullptr, nullptr),
            SQLITE_OK);
  sqlite3_close(db);

  auto journal = SqliteJournal::Open(path());
  ASSERT_OK(journal);
  auto state = (*journal)->Load();
  ASSERT_OK(state);
  ASSERT_EQ(state->leases.size(), 1u);
  EXPECT_EQ(state->leases[0].id, Id(7));
  journal->reset();
  ASSERT_EQ(sqlite3_open(path().c_str(), &db), SQLITE_OK);
  sqlite3_stmt* st = nullptr;
  ASSERT_EQ(sqlite3_prepare_v2(db, "PRAGMA auto_vacuum", -1, &st, nullptr), SQLITE_OK);
  ASSERT_EQ(sqlite3_step(st), SQLITE_ROW);
  EXPECT_EQ(sqlite3_column_int(st, 0), 2);  // INCREMENTAL
  sqlite3_finalize(st);
  sqlite3_close(db);
}

}  // namespace
}  // namespace quotad
