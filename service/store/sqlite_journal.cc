// SqliteJournal: Open, the prepared statements, the destructor, and the synchronous writes
// (Reserve, PutLease of a lease that holds slots, RenewLease, PutCooldown, PutOutside), each one
// transaction under db_mu_ that does not wait for the queue; Flush and the counters.
//
// Locking contract: a synchronous write takes db_mu_ only (never write_mu_, so it does not wait
// for a drain of the queue, only for one short transaction of it); it touches queue_mu_ after
// db_mu_ is released (PutLease) or in the documented order. Flush takes write_mu_, then db_mu_.

#include "service/store/sqlite_journal.h"

#include <sqlite3.h>

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "service/core/status_macros.h"
#include "service/store/lease_log_codec.h"
#include "service/store/sqlite_schema.h"
#include "service/store/sqlite_util.h"
#include "spdlog/spdlog.h"

namespace quotad {

using sqlite_internal::BindText;
using sqlite_internal::DbError;
using sqlite_internal::EncodeLease;
using sqlite_internal::EncodeTokens;
using sqlite_internal::FileBytes;
using sqlite_internal::MoveAside;
using sqlite_internal::OpenChecked;
using sqlite_internal::QueryInt;
using sqlite_internal::Text;

absl::StatusOr<std::unique_ptr<SqliteJournal>> SqliteJournal::Open(const std::string& path,
                                                                    SqliteOptions options) {
  bool bad_file = false;
  absl::StatusOr<sqlite3*> db = OpenChecked(path, options, &bad_file);
  if (!db.ok() && bad_file && options.reset_corrupt && !options.read_only) {
    QUOTAD_RETURN_IF_ERROR(MoveAside(path));
    db = OpenChecked(path, options, &bad_file);
  }
  if (!db.ok()) {
    if (bad_file) {
      return absl::Status(db.status().code(),
                          absl::StrCat(db.status().message(),
                                       " (refusing to start over it; move it aside, or start quotad "
                                       "with --reset_corrupt_state to have it moved aside)"));
    }
    return db.status();
  }
  if (!options.read_only && QueryInt(*db, "PRAGMA auto_vacuum") != 2) {
    // A file of an older build (auto_vacuum=NONE) never gives pages back: one VACUUM makes it
    // INCREMENTAL. It rewrites the live rows only; a failure (a full disk) leaves the file as
    // it was, which still works.
    const absl::Time start = absl::Now();
    const int64_t before = FileBytes(path);
    const int rc =
        sqlite3_exec(*db, "PRAGMA auto_vacuum=INCREMENTAL; VACUUM", nullptr, nullptr, nullptr);
    if (rc == SQLITE_OK) {
      sqlite3_wal_checkpoint_v2(*db, "main", SQLITE_CHECKPOINT_TRUNCATE, nullptr, nullptr);
      spdlog::info(
          "component=store event=converted_to_incremental_vacuum path={} bytes_before={} "
          "bytes_after={} ms={}",
          path, before, FileBytes(path), absl::ToInt64Milliseconds(absl::Now() - start));
    } else {
      spdlog::warn("component=store event=vacuum_failed path={} error=\"{}\"", path,
                   sqlite3_errmsg(*db));
    }
  }
  std::unique_ptr<SqliteJournal> journal(new SqliteJournal(path, options, *db));
  QUOTAD_RETURN_IF_ERROR(journal->Prepare());
  if (!options.read_only) {
    journal->incremental_vacuum_ = QueryInt(*db, "PRAGMA auto_vacuum") == 2;
    const int64_t page_size = std::max<int64_t>(512, QueryInt(*db, "PRAGMA page_size"));
    journal->checkpoint_frames_ = std::max<int64_t>(1, options.checkpoint_wal_bytes / page_size);
    // A WAL left by an earlier run (or a crash) goes into the file before serving starts.
    sqlite3_wal_checkpoint_v2(*db, "main", SQLITE_CHECKPOINT_TRUNCATE, nullptr, nullptr);
    const int rc = sqlite3_open_v2(path.c_str(), &journal->checkpoint_db_,
                                   SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, nullptr);
    if (rc != SQLITE_OK) {
      return DbError(path, journal->checkpoint_db_, rc, "cannot open the checkpoint connection");
    }
    // No busy handler: the TRUNCATE step runs under db_mu_ and must not wait for a reader of
    // another process (it gives up, and the next checkpoint tries again).
    sqlite3_busy_timeout(journal->checkpoint_db_, 0);
    sqlite3_exec(journal->checkpoint_db_,
                 options.synchronous_full ? "PRAGMA synchronous=FULL" : "PRAGMA synchronous=NORMAL",
                 nullptr, nullptr, nullptr);
    sqlite3_wal_hook(
        *db,
        +[](void* self, sqlite3*, const char*, int pages) {
          // Runs in every commit on db_ (under db_mu_): takes queue_mu_ only when the WAL gets
          // its first frame or crosses the threshold, once per checkpoint.
          auto* j = static_cast<SqliteJournal*>(self);
          const int64_t before = j->wal_frames_.exchange(pages, std::memory_order_relaxed);
          const bool first = before == 0 && pages > 0;
          const bool full = before < j->checkpoint_frames_ && pages >= j->checkpoint_frames_;
          if (first || full) {
            absl::MutexLock l(&j->queue_mu_);
            if (first) j->wal_since_ = absl::Now();
            if (full) j->checkpoint_wanted_ = true;
            j->writer_cv_.Signal();
          }
          return SQLITE_OK;
        },
        journal.get());
  }
  journal->writer_ = std::thread([j = journal.get()] { j->WriterLoop(); });
  return journal;
}

SqliteJournal::SqliteJournal(std::string path, SqliteOptions options, sqlite3* db)
    : path_(std::move(path)), options_(options), db_(db) {}


absl::Status SqliteJournal::Prepare() {
  absl::MutexLock l(&db_mu_);
  struct {
    sqlite3_stmt** stmt;
    const char* sql;
  } const statements[] = {
      {&put_reservation_,
       "INSERT OR REPLACE INTO reservations (credential, limit_name, scope, window_start_ns, "
       "until_ns, units) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"},
      {&extend_reservation_,
       "UPDATE reservations SET until_ns = ?5 WHERE credential = ?1 AND limit_name = ?2 AND "
       "scope = ?3 AND window_start_ns = ?4"},
      {&put_lease_,
       "INSERT OR REPLACE INTO leases (id, credential, feature, scope, holder, cost, granted_ns, "
       "expiry_ns, holds_slots, tokens) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"},
      {&renew_lease_, "UPDATE leases SET expiry_ns = ?2 WHERE id = ?1"},
      {&delete_lease_, "DELETE FROM leases WHERE id = ?1"},
      {&put_dedup_,
       "INSERT OR REPLACE INTO dedup (request_id, answer, expiry_ns) VALUES (?1, ?2, ?3)"},
      {&put_log_,
       "INSERT INTO lease_log (until_ns, min_expiry_ns, records, data) VALUES (?1, ?4, ?2, ?3)"},
  };
  for (const auto& s : statements) {
    const int rc = sqlite3_prepare_v3(db_, s.sql, -1, SQLITE_PREPARE_PERSISTENT, s.stmt, nullptr);
    if (rc != SQLITE_OK) return DbError(path_, db_, rc, "cannot prepare a statement");
  }
  // Which leases are rows of `leases` (their releases delete the row), and how long the
  // releases already in lease_log may matter.
  sqlite3_stmt* st = nullptr;
  if (sqlite3_prepare_v2(db_, "SELECT id FROM leases", -1, &st, nullptr) != SQLITE_OK) {
    return Error("cannot read leases");
  }
  int rc;
  {
    absl::MutexLock q(&queue_mu_);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) lease_rows_.insert(Text(st, 0));
  }
  sqlite3_finalize(st);
  if (rc != SQLITE_DONE) return Error("cannot read leases");
  if (sqlite3_prepare_v2(db_, "SELECT max(until_ns) FROM lease_log", -1, &st,
                         nullptr) != SQLITE_OK) {
    return Error("cannot read the lease log");
  }
  rc = sqlite3_step(st);
  if (rc == SQLITE_ROW) {
    log_max_expiry_ns_ = sqlite3_column_int64(st, 0);
  }
  sqlite3_finalize(st);
  if (rc != SQLITE_ROW) return Error("cannot read the lease log");
  return absl::OkStatus();
}

SqliteJournal::~SqliteJournal() {
  {
    absl::MutexLock l(&queue_mu_);
    stopping_ = true;
    writer_cv_.SignalAll();
  }
  if (writer_.joinable()) writer_.join();
  {
    absl::MutexLock w(&write_mu_);
    if (absl::Status s = WriteQueued(); !s.ok()) {
      spdlog::error("component=store event=final_flush_failed error=\"{}\"",
                    std::string(s.message()));
    }
  }
  absl::MutexLock l(&db_mu_);
  for (sqlite3_stmt* st : {put_reservation_, extend_reservation_, put_lease_, renew_lease_,
                           delete_lease_, put_dedup_, put_log_}) {
    sqlite3_finalize(st);
  }
  sqlite3_close_v2(db_);
  if (checkpoint_db_ != nullptr) sqlite3_close_v2(checkpoint_db_);
}

absl::Status SqliteJournal::Error(const char* what) const {
  return DbError(path_, db_, sqlite3_extended_errcode(db_), what);
}

absl::Status SqliteJournal::BeginLocked(const char* what) {
  const int rc = sqlite3_exec(db_, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr);
  if (rc != SQLITE_OK) return DbError(path_, db_, rc, what);
  return absl::OkStatus();
}

absl::Status SqliteJournal::EndLocked(absl::Status body, const char* what) {
  if (body.ok()) {
    const int rc = sqlite3_exec(db_, "COMMIT", nullptr, nullptr, nullptr);
    if (rc == SQLITE_OK) return absl::OkStatus();
    body = DbError(path_, db_, rc, what);
  }
  sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
  return body;
}

absl::Status SqliteJournal::StepLocked(sqlite3_stmt* st, const char* what) {
  const int rc = sqlite3_step(st);
  absl::Status s;
  if (rc != SQLITE_DONE) s = DbError(path_, db_, rc, what);
  sqlite3_reset(st);
  sqlite3_clear_bindings(st);
  return s;
}

absl::Status SqliteJournal::WriteLeaseLocked(const JournalLease& lease) {
  sqlite3_stmt* st = put_lease_;
  BindText(st, 1, lease.id);
  BindText(st, 2, lease.credential);
  BindText(st, 3, lease.feature);
  BindText(st, 4, lease.scope);
  BindText(st, 5, lease.holder);
  sqlite3_bind_int64(st, 6, lease.cost);
  sqlite3_bind_int64(st, 7, lease.granted_ns);
  sqlite3_bind_int64(st, 8, lease.expiry_ns);
  sqlite3_bind_int(st, 9, lease.holds_slots ? 1 : 0);
  const std::string tokens = EncodeTokens(lease.tokens);
  sqlite3_bind_blob(st, 10, tokens.data(), static_cast<int>(tokens.size()), SQLITE_STATIC);
  return StepLocked(st, "cannot write a lease");
}

absl::Status SqliteJournal::Reserve(const std::vector<Reservation>& reservations) {
  static constexpr char kWhat[] = "cannot write reservations";
  absl::MutexLock l(&db_mu_);
  QUOTAD_RETURN_IF_ERROR(BeginLocked(kWhat));
  return EndLocked(WriteReservationsLocked(reservations), kWhat);
}

absl::Status SqliteJournal::WriteReservationsLocked(const std::vector<Reservation>& reservations) {
  for (const Reservation& r : reservations) {
    sqlite3_stmt* st = r.units < 0 ? extend_reservation_ : put_reservation_;
    BindText(st, 1, r.key.credential);
    BindText(st, 2, r.key.limit);
    BindText(st, 3, r.key.scope);
    sqlite3_bind_int64(st, 4, r.window_start_ns);
    sqlite3_bind_int64(st, 5, r.until_ns);
    if (r.units >= 0) sqlite3_bind_int64(st, 6, r.units);
    QUOTAD_RETURN_IF_ERROR(StepLocked(st, "cannot write a reservation"));
  }
  return absl::OkStatus();
}

absl::Status SqliteJournal::PutLease(const JournalLease& lease) {
  if (!lease.holds_slots) {
    // Encoded by the caller, off every lock; the queue only appends the bytes.
    thread_local std::string record;
    record.clear();
    EncodeLease(lease, &record);
    EnqueueRecord(record, lease.expiry_ns, lease.granted_ns, /*release=*/false);
    return absl::OkStatus();
  }
  static constexpr char kWhat[] = "cannot write a lease";
  absl::Status s;
  {
    absl::MutexLock l(&db_mu_);
    s = BeginLocked(kWhat);
    if (s.ok()) s = EndLocked(WriteLeaseLocked(lease), kWhat);
  }
  if (s.ok()) {
    absl::MutexLock q(&queue_mu_);
    lease_rows_.insert(lease.id);
  }
  return s;
}

absl::Status SqliteJournal::RenewLease(const std::string& id, int64_t expiry_ns) {
  static constexpr char kWhat[] = "cannot renew a lease";
  absl::MutexLock l(&db_mu_);
  QUOTAD_RETURN_IF_ERROR(BeginLocked(kWhat));
  return EndLocked(RenewLeaseLocked(id, expiry_ns), kWhat);
}

absl::Status SqliteJournal::RenewLeaseLocked(const std::string& id, int64_t expiry_ns) {
  BindText(renew_lease_, 1, id);
  sqlite3_bind_int64(renew_lease_, 2, expiry_ns);
  return StepLocked(renew_lease_, "cannot renew a lease");
}

absl::Status SqliteJournal::PutCooldown(const JournalCooldown& cooldown) {
  static constexpr char kWhat[] = "cannot write a cooldown";
  absl::MutexLock l(&db_mu_);
  QUOTAD_RETURN_IF_ERROR(BeginLocked(kWhat));
  return EndLocked(WriteCooldownLocked(cooldown), kWhat);
}

absl::Status SqliteJournal::WriteCooldownLocked(const JournalCooldown& cooldown) {
  sqlite3_stmt* st = nullptr;
  if (sqlite3_prepare_v2(db_,
                         "INSERT OR REPLACE INTO cooldowns (credential, feature, until_ns) "
                         "VALUES (?1, ?2, ?3)",
                         -1, &st, nullptr) != SQLITE_OK) {
    return Error("cannot write a cooldown");
  }
  sqlite3_bind_text(st, 1, cooldown.credential.data(),
                    static_cast<int>(cooldown.credential.size()), SQLITE_TRANSIENT);
  sqlite3_bind_text(st, 2, cooldown.feature.data(), static_cast<int>(cooldown.feature.size()),
                    SQLITE_TRANSIENT);
  sqlite3_bind_int64(st, 3, cooldown.until_ns);
  const int rc = sqlite3_step(st);
  sqlite3_finalize(st);
  if (rc != SQLITE_DONE) return Error("cannot write a cooldown");
  return absl::OkStatus();
}

absl::Status SqliteJournal::PutOutside(const JournalOutside& outside) {
  static constexpr char kWhat[] = "cannot write an outside estimate";
  absl::MutexLock l(&db_mu_);
  QUOTAD_RETURN_IF_ERROR(BeginLocked(kWhat));
  return EndLocked(WriteOutsideLocked(outside), kWhat);
}

absl::Status SqliteJournal::WriteOutsideLocked(const JournalOutside& o) {
  sqlite3_stmt* st = nullptr;
  if (sqlite3_prepare_v2(db_,
                         "INSERT OR REPLACE INTO outside (credential, limit_name, outside_milli, "
                         "at_ns, cooldown_until_ns, consecutive, until_ns) "
                         "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                         -1, &st, nullptr) != SQLITE_OK) {
    return Error("cannot write an outside estimate");
  }
  sqlite3_bind_text(st, 1, o.credential.data(), static_cast<int>(o.credential.size()),
                    SQLITE_TRANSIENT);
  sqlite3_bind_text(st, 2, o.limit.data(), static_cast<int>(o.limit.size()), SQLITE_TRANSIENT);
  sqlite3_bind_int64(st, 3, o.outside_milli);
  sqlite3_bind_int64(st, 4, o.at_ns);
  sqlite3_bind_int64(st, 5, o.cooldown_until_ns);
  sqlite3_bind_int64(st, 6, o.consecutive);
  sqlite3_bind_int64(st, 7, o.until_ns);
  const int rc = sqlite3_step(st);
  sqlite3_finalize(st);
  if (rc != SQLITE_DONE) return Error("cannot write an outside estimate");
  return absl::OkStatus();
}

SqliteFileSizes SqliteJournal::FileSizes() const {
  return SqliteFileSizes{FileBytes(path_), FileBytes(path_ + "-wal")};
}

absl::Status SqliteJournal::Flush() {
  absl::MutexLock w(&write_mu_);
  absl::Status s = WriteQueued();
  absl::MutexLock l(&db_mu_);
  if (!async_error_.ok()) {
    s = std::move(async_error_);
    async_error_ = absl::OkStatus();
  }
  return s;
}

SqliteJournalStats SqliteJournal::stats() const {
  absl::MutexLock l(&db_mu_);
  return stats_;
}

}  // namespace quotad
