// SqliteJournal's disk bound: the WAL emptied into the file (PASSIVE on checkpoint_db_, then
// TRUNCATE), and free pages given back to the file system (incremental_vacuum); see "Disk bounded
// by live state" in sqlite_journal.h.
//
// Locking contract: CheckpointLocked runs under write_mu_ (no drain of the queue meanwhile) and
// takes db_mu_ only for the TRUNCATE step (no commit of ours under way), queue_mu_ inside it.
// VacuumFree takes db_mu_ per step, released in between so that synchronous writes go on.

#include <algorithm>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "service/store/sqlite_journal.h"
#include "service/store/sqlite_util.h"
#include "spdlog/spdlog.h"

namespace quotad {

using sqlite_internal::DbError;
using sqlite_internal::QueryInt;

absl::Status SqliteJournal::VacuumFree() {
  if (!incremental_vacuum_) return absl::OkStatus();
  for (;;) {
    absl::MutexLock l(&db_mu_);
    const int64_t free_pages = QueryInt(db_, "PRAGMA freelist_count");
    const int64_t pages = QueryInt(db_, "PRAGMA page_count");
    if (free_pages <= kVacuumMinFreePages || free_pages * 4 <= pages) return absl::OkStatus();
    const int64_t step = std::min(kVacuumStepPages, free_pages);
    const std::string sql = absl::StrCat("PRAGMA incremental_vacuum(", step, ")");
    if (sqlite3_exec(db_, sql.c_str(), nullptr, nullptr, nullptr) != SQLITE_OK) {
      absl::Status s = Error("cannot give free pages back");
      spdlog::warn("component=store event=vacuum_failed path={} error=\"{}\"", path_,
                   std::string(s.message()));
      return s;
    }
    stats_.pages_vacuumed += free_pages - QueryInt(db_, "PRAGMA freelist_count");
  }
}

absl::Status SqliteJournal::CheckpointLocked() {
  if (checkpoint_db_ == nullptr) return absl::OkStatus();
  // A connection that has not read the file has not opened the WAL, and its checkpoint
  // returns at once having done nothing: read once first.
  int rc = sqlite3_exec(checkpoint_db_, "SELECT count(*) FROM schema_version", nullptr, nullptr,
                        nullptr);
  int log = -1;
  int done = -1;
  // The bulk of the copy and its fsyncs, while callers keep committing on db_; again while
  // synchronous writes added frames meanwhile (a few rounds at most), so that the step under
  // db_mu_ below has little or nothing left to copy and sync.
  for (int round = 0; round < 3 && rc == SQLITE_OK; ++round) {
    rc = sqlite3_wal_checkpoint_v2(checkpoint_db_, "main", SQLITE_CHECKPOINT_PASSIVE, &log,
                                   &done);
    if (rc == SQLITE_OK && wal_frames_.load(std::memory_order_relaxed) <= done) break;
  }
  if (rc == SQLITE_OK || (rc & 0xff) == SQLITE_BUSY) {
    // What was committed meanwhile, then the WAL cut to zero bytes. Under db_mu_ no commit of
    // ours is under way; a reader of another process makes it give up at once (BUSY).
    absl::MutexLock l(&db_mu_);
    rc = sqlite3_wal_checkpoint_v2(checkpoint_db_, "main", SQLITE_CHECKPOINT_TRUNCATE, &log,
                                   &done);
    absl::MutexLock q(&queue_mu_);
    if (rc == SQLITE_OK) {
      ++stats_.checkpoints;
      wal_frames_.store(0, std::memory_order_relaxed);  // no commit runs: db_mu_ is held
      wal_since_ = absl::InfiniteFuture();
      return absl::OkStatus();
    }
    if ((rc & 0xff) == SQLITE_BUSY) {
      ++stats_.checkpoints_busy;
      wal_since_ = absl::Now();  // again after checkpoint_interval, not at once
      return absl::UnavailableError(absl::StrCat(
          "sqlite state file ", path_, ": checkpoint left partial by a reader of the WAL"));
    }
  }
  absl::Status s = DbError(path_, checkpoint_db_, rc, "cannot checkpoint");
  spdlog::warn("component=store event=checkpoint_failed path={} error=\"{}\"", path_,
               std::string(s.message()));
  absl::MutexLock q(&queue_mu_);
  wal_since_ = absl::Now();
  return s;
}

absl::Status SqliteJournal::Checkpoint() {
  absl::MutexLock w(&write_mu_);
  WriteQueued().IgnoreError();  // remembered for Flush
  return CheckpointLocked();
}


}  // namespace quotad
