// The lease log of SqliteJournal: refund-only leases and releases are group-committed as rows of
// many records (lease_log). They round-trip with every field across rows, releases drop the
// leases they name (and releases of slot leases delete their rows), Compact drops rows that
// ended and rewrites a grown log, a version 1 file is upgraded, and a SIGKILL in the middle of
// the writer's batches keeps every flushed lease with its expiry and a prefix of the rest.

#include <fcntl.h>
#include <signal.h>
#include <sqlite3.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <map>
#include <memory>
#include <random>
#include <string>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "service/store/sqlite_journal.h"
#include "tests/store/journal_records.h"
#include "tests/support/status_matchers.h"
#include "tests/support/temp_dir.h"

namespace quotad {
namespace {

using testing::Lease;
using testing::Res;
using testing::TempDir;

bool SameLease(const JournalLease& a, const JournalLease& b) {
  return a.id == b.id && a.credential == b.credential && a.feature == b.feature &&
         a.scope == b.scope && a.holder == b.holder && a.cost == b.cost &&
         a.granted_ns == b.granted_ns && a.expiry_ns == b.expiry_ns &&
         a.holds_slots == b.holds_slots && a.tokens == b.tokens;
}

std::map<std::string, JournalLease> ById(const JournalState& s) {
  std::map<std::string, JournalLease> out;
  for (const JournalLease& l : s.leases) {
    EXPECT_TRUE(out.emplace(l.id, l).second) << "twice: " << l.id;
  }
  return out;
}

int64_t Count(const std::string& path, const char* sql) {
  sqlite3* db = nullptr;
  EXPECT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  sqlite3_stmt* st = nullptr;
  EXPECT_EQ(sqlite3_prepare_v2(db, sql, -1, &st, nullptr), SQLITE_OK) << sqlite3_errmsg(db);
  int64_t n = -1;
  if (sqlite3_step(st) == SQLITE_ROW) n = sqlite3_column_int64(st, 0);
  sqlite3_finalize(st);
  sqlite3_close(db);
  return n;
}

class LeaseLogTest : public ::testing::Test {
 protected:
  std::unique_ptr<SqliteJournal> Open(SqliteOptions options = {}) {
    auto j = SqliteJournal::Open(path_, options);
    EXPECT_OK(j);
    return j.ok() ? std::move(*j) : nullptr;
  }
  JournalState Reload() {
    journal_.reset();
    journal_ = Open();
    auto s = journal_->Load();
    EXPECT_OK(s);
    return s.ok() ? *s : JournalState{};
  }
  TempDir dir_;
  const std::string path_ = dir_.File("state.db");
  std::unique_ptr<SqliteJournal> journal_;
};

TEST_F(LeaseLogTest, BatchesRoundTripEveryFieldAcrossRows) {
  journal_ = Open();
  std::map<std::string, JournalLease> want;
  for (int i = 0; i < 3000; ++i) {  // ~100 bytes each: several rows of kChunkBytes
    // Ids as the ledger writes them (32 hex digits, stored as 16 bytes), and any other text.
    std::string id = absl::StrCat(absl::Hex(i * 7919, absl::kZeroPad16),
                                  absl::Hex(i, absl::kZeroPad16));
    if (i % 3 == 1) id = absl::StrCat("lease-", i);
    if (i % 3 == 2) id[5] = 'A';  // not lowercase hex: stored as text
    JournalLease l = Lease(id, false, 1'000'000 + i);
    l.holder = std::string(i % 50, 'h');
    l.scope = i % 7 == 0 ? "" : absl::StrCat("scope-", i % 13);
    l.tokens.resize(i % 6);
    l.cost = i;
    want.emplace(l.id, l);
    ASSERT_OK(journal_->PutLease(l));
  }
  ASSERT_OK(journal_->Flush());
  EXPECT_GT(journal_->stats().log_rows, 3);
  EXPECT_EQ(journal_->stats().records, 3000);
  EXPECT_EQ(Count(path_, "SELECT count(*) FROM leases"), 0);  // none as a row of its own
  const auto got = ById(Reload());
  ASSERT_EQ(got.size(), want.size());
  for (const auto& [id, l] : want) {
    auto it = got.find(id);
    ASSERT_NE(it, got.end()) << id;
    EXPECT_TRUE(SameLease(it->second, l)) << id;
  }
}

TEST_F(LeaseLogTest, ReleasesDropTheirLeasesInAnyLaterRow) {
  SqliteOptions options;
  options.commit_interval = absl::Hours(1);
  options.commit_batch = 1'000'000;
  journal_ = Open(options);
  for (int i = 0; i < 10; ++i) {
    ASSERT_OK(journal_->PutLease(Lease(absl::StrCat("r", i), false, 5000)));
  }
  ASSERT_OK(journal_->PutLease(Lease("slot", true, 5000)));
  ASSERT_OK(journal_->Flush());
  journal_->DeleteLease("r0");  // a later row than its lease
  ASSERT_OK(journal_->PutLease(Lease("r10", false, 5000)));
  journal_->DeleteLease("r10");  // the same row as its lease
  journal_->DeleteLease("never-written");
  journal_->DeleteLease("slot");  // a row of `leases`: deleted there
  ASSERT_OK(journal_->Flush());
  EXPECT_EQ(Count(path_, "SELECT count(*) FROM leases"), 0);
  const auto got = ById(Reload());
  EXPECT_EQ(got.size(), 9u);
  EXPECT_EQ(got.count("r0"), 0u);
  EXPECT_EQ(got.count("r10"), 0u);
  EXPECT_EQ(got.count("slot"), 0u);
  EXPECT_EQ(got.count("r9"), 1u);
  // After a reopen, releases still find their leases (rows of either kind).
  ASSERT_OK(journal_->PutLease(Lease("slot2", true, 5000)));
  journal_.reset();
  journal_ = Open();
  journal_->DeleteLease("r1");
  journal_->DeleteLease("slot2");
  const auto after = ById(Reload());
  EXPECT_EQ(after.size(), 8u);
  EXPECT_EQ(after.count("r1"), 0u);
  EXPECT_EQ(after.count("slot2"), 0u);
}

TEST_F(LeaseLogTest, CompactDropsRowsThatEndedAndKeepsReleasesWhileTheirLeasesLive) {
  SqliteOptions options;
  options.commit_interval = absl::Hours(1);
  options.commit_batch = 1'000'000;
  journal_ = Open(options);
  ASSERT_OK(journal_->PutLease(Lease("short", false, 100)));
  ASSERT_OK(journal_->Flush());
  ASSERT_OK(journal_->PutLease(Lease("long", false, 1000)));
  ASSERT_OK(journal_->PutLease(Lease("released", false, 1000)));
  ASSERT_OK(journal_->Flush());
  journal_->DeleteLease("released");  // a row of its own, needed until 1000
  ASSERT_OK(journal_->Flush());
  EXPECT_EQ(Count(path_, "SELECT count(*) FROM lease_log"), 3);
  ASSERT_OK(journal_->Compact(100));
  EXPECT_EQ(Count(path_, "SELECT count(*) FROM lease_log"), 2);
  auto got = ById(Reload());
  EXPECT_EQ(got.size(), 1u);
  ASSERT_EQ(got.count("long"), 1u);
  EXPECT_EQ(got["long"].expiry_ns, 1000);
  ASSERT_OK(journal_->Compact(999));
  EXPECT_EQ(ById(Reload()).size(), 1u);  // the release still hides "released"
  ASSERT_OK(journal_->Compact(1000));
  EXPECT_EQ(Count(path_, "SELECT count(*) FROM lease_log"), 0);
  EXPECT_TRUE(Reload().leases.empty());
}

TEST_F(LeaseLogTest, CompactRewritesALogThatOutgrewItsLiveLeases) {
  SqliteOptions options;
  options.commit_interval = absl::Hours(1);
  options.commit_batch = 1'000'000;
  journal_ = Open(options);
  // One long lease, then many rows of short leases, each released: the long lease's expiry
  // keeps every release row, and the short leases' rows, until a rewrite.
  ASSERT_OK(journal_->PutLease(Lease("long", false, 1'000'000)));
  for (int row = 0; row < 400; ++row) {
    const std::string id = absl::StrCat("s", row);
    ASSERT_OK(journal_->PutLease(Lease(id, false, 10 + row)));
    ASSERT_OK(journal_->PutLease(Lease(id + "-kept", false, 500'000)));
    journal_->DeleteLease(id);
    ASSERT_OK(journal_->Flush());
  }
  EXPECT_EQ(Count(path_, "SELECT count(*) FROM lease_log"), 400);
  ASSERT_OK(journal_->Compact(500));  // every row outlives it, each with a lease that ended
  EXPECT_EQ(journal_->stats().log_rewrites, 1);
  EXPECT_LE(Count(path_, "SELECT count(*) FROM lease_log"), 3);
  auto got = ById(Reload());
  EXPECT_EQ(got.size(), 401u);
  ASSERT_EQ(got.count("long"), 1u);
  EXPECT_EQ(got["long"].expiry_ns, 1'000'000);
  EXPECT_TRUE(SameLease(got["s7-kept"], Lease("s7-kept", false, 500'000)));
  EXPECT_EQ(got.count("s7"), 0u);
  // Releases after the rewrite still find their leases; expiry still ends them.
  journal_->DeleteLease("s8-kept");
  ASSERT_OK(journal_->Compact(500'000));
  got = ById(Reload());
  EXPECT_EQ(got.count("s8-kept"), 0u);
  EXPECT_EQ(got.count("long"), 1u);
  // Leases that ended may still come back from a row that has not (Restore skips them).
  for (const auto& [id, l] : got) {
    if (id != "long") {
      EXPECT_LE(l.expiry_ns, 500'000) << id;
    }
  }
}

TEST_F(LeaseLogTest, VersionOneFileIsUpgradedAndKeepsItsLeases) {
  journal_ = Open();
  ASSERT_OK(journal_->PutLease(Lease("old-refund", true, 5000)));
  journal_.reset();
  {
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open(path_.c_str(), &db), SQLITE_OK);
    ASSERT_EQ(sqlite3_exec(db,
                           "DROP TABLE lease_log; DROP TABLE cooldowns; DROP TABLE outside; "
                           "UPDATE leases SET holds_slots = 0; "
                           "UPDATE schema_version SET version = 1",
                           nullptr, nullptr, nullptr),
              SQLITE_OK);
    sqlite3_close(db);
  }
  auto got = ById(Reload());
  ASSERT_EQ(got.count("old-refund"), 1u);
  EXPECT_EQ(Count(path_, "SELECT version FROM schema_version"), 4);
  EXPECT_EQ(Count(path_, "SELECT count(*) FROM cooldowns"), 0);
  journal_->DeleteLease("old-refund");
  ASSERT_OK(journal_->Flush());
  EXPECT_EQ(Count(path_, "SELECT count(*) FROM leases"), 0);
  EXPECT_TRUE(Reload().leases.empty());
}

TEST_F(LeaseLogTest, VersionTwoFileIsUpgradedAndKeepsItsCooldownsFromThenOn) {
  journal_ = Open();
  ASSERT_OK(journal_->PutLease(Lease("slot", true, 5000)));
  journal_.reset();
  {
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open(path_.c_str(), &db), SQLITE_OK);
    ASSERT_EQ(sqlite3_exec(db, "DROP TABLE cooldowns; DROP TABLE outside; UPDATE schema_version SET version = 2",
                           nullptr, nullptr, nullptr),
              SQLITE_OK);
    sqlite3_close(db);
  }
  EXPECT_EQ(ById(Reload()).count("slot"), 1u);
  EXPECT_EQ(Count(path_, "SELECT version FROM schema_version"), 4);
  ASSERT_OK(journal_->PutCooldown(JournalCooldown{"vt/prod", "requests", 7000}));
  const JournalState state = Reload();
  ASSERT_EQ(state.cooldowns.size(), 1u);
  EXPECT_EQ(state.cooldowns[0].feature, "requests");
  EXPECT_EQ(state.cooldowns[0].until_ns, 7000);
  ASSERT_OK(journal_->Compact(7000));
  EXPECT_TRUE(Reload().cooldowns.empty());
}

// A child writes refund-only leases as fast as it can, releasing every third, with a writer
// that commits often (many small rows), and reports each Flush through a pipe; the parent
// SIGKILLs it after a random number of its flushes. After each kill: the file opens, every lease
// flushed before the last report is there with its expiry (unless released), and what was not
// flushed is a prefix.
TEST_F(LeaseLogTest, SigkillMidBatchKeepsFlushedLeasesAndAPrefixOfTheRest) {
  constexpr int kRounds = 10;
  std::mt19937 rng(42);
  for (int round = 0; round < kRounds; ++round) {
    int fds[2];
    ASSERT_EQ(pipe(fds), 0);
    const pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      close(fds[0]);
      SqliteOptions o;
      o.commit_interval = absl::Microseconds(200);
      o.commit_batch = 64;
      auto j = SqliteJournal::Open(path_, o);
      if (!j.ok()) _exit(3);
      for (int i = 0;; ++i) {
        const std::string id = absl::StrCat("r", round, "-", i);
        if (!(*j)->PutLease(Lease(id, false, 1'000'000'000 + i)).ok()) _exit(4);
        if (i % 3 == 0) (*j)->DeleteLease(id);
        if (i % 500 == 499) {
          if (!(*j)->Flush().ok()) _exit(5);
          const int32_t done = i;
          if (write(fds[1], &done, sizeof(done)) != sizeof(done)) _exit(6);
        }
      }
    }
    close(fds[1]);
    // Killed after a random number of its flushes (1 to 4), while it writes the next batch.
    int32_t flushed = -1;
    const int kill_after = 1 + static_cast<int>(rng() % 4);
    for (int reports = 0; reports < kill_after;) {
      int32_t v;
      if (read(fds[0], &v, sizeof(v)) != sizeof(v)) break;
      flushed = v;
      ++reports;
    }
    kill(pid, SIGKILL);
    int status = 0;
    waitpid(pid, &status, 0);
    ASSERT_TRUE(WIFSIGNALED(status)) << "child exited with " << WEXITSTATUS(status);
    for (int32_t v; read(fds[0], &v, sizeof(v)) == sizeof(v);) flushed = v;
    close(fds[0]);

    auto j = SqliteJournal::Open(path_);
    ASSERT_OK(j);
    auto state = (*j)->Load();
    ASSERT_OK(state);
    std::map<int, int64_t> expiry;  // this round's leases by index
    const std::string prefix = absl::StrCat("r", round, "-");
    for (const JournalLease& l : state->leases) {
      if (l.id.rfind(prefix, 0) != 0) continue;
      expiry[std::stoi(l.id.substr(prefix.size()))] = l.expiry_ns;
    }
    int last = -1;
    for (const auto& [i, e] : expiry) {
      EXPECT_EQ(e, 1'000'000'000 + i) << i;
      last = i;
    }
    for (int i = 0; i <= last; ++i) {
      if (i % 3 == 0) continue;  // released (the release may or may not have been written)
      EXPECT_EQ(expiry.count(i), 1u) << "round " << round << ": lease " << i
                                     << " missing before " << last << " (not a prefix)";
    }
    EXPECT_GE(last, flushed - 2) << "round " << round << ": flushed leases lost";
    for (int i = 0; i <= flushed; i += 3) {
      EXPECT_EQ(expiry.count(i), 0u) << "round " << round << ": flushed release lost: " << i;
    }
    std::printf("round %d: flushed through %d, loaded through %d\n", round, flushed, last);
  }
}

}  // namespace
TEST_F(LeaseLogTest, VersionThreeFileIsUpgradedAndKeepsWhatReportLearntPerLimit) {
  journal_ = Open();
  ASSERT_OK(journal_->PutCooldown(JournalCooldown{"vt/prod", "requests", 7000}));
  journal_.reset();
  {
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open(path_.c_str(), &db), SQLITE_OK);
    ASSERT_EQ(sqlite3_exec(db, "DROP TABLE outside; UPDATE schema_version SET version = 3",
                           nullptr, nullptr, nullptr),
              SQLITE_OK);
    sqlite3_close(db);
  }
  EXPECT_EQ(Reload().cooldowns.size(), 1u);  // the version 3 cooldowns are kept
  EXPECT_EQ(Count(path_, "SELECT version FROM schema_version"), 4);
  ASSERT_OK(journal_->PutOutside(
      JournalOutside{"vt/prod", "requests.per_minute", 1500, 100, 9000, 2, 20000}));
  const JournalState state = Reload();
  ASSERT_EQ(state.outside.size(), 1u);
  EXPECT_EQ(state.outside[0].limit, "requests.per_minute");
  EXPECT_EQ(state.outside[0].outside_milli, 1500);
  EXPECT_EQ(state.outside[0].cooldown_until_ns, 9000);
  EXPECT_EQ(state.outside[0].consecutive, 2);
  ASSERT_OK(journal_->Compact(20000));  // until_ns reached: dropped
  EXPECT_TRUE(Reload().outside.empty());
}

}  // namespace quotad
