#ifndef QUOTAD_SERVICE_STORE_SQLITE_JOURNAL_H_
#define QUOTAD_SERVICE_STORE_SQLITE_JOURNAL_H_

// The embedded default store: the ledger's Journal in one local SQLite file (WAL mode).
//
// What is written when:
//   Reserve, PutLease of a lease that holds slots, RenewLease, Compact: one transaction each,
//     committed before the call returns. They do not wait for the queued records (below): those
//     only lose refunds or apply a release late when lost, whatever the order.
//   PutLease of a lease that only allows a refund, DeleteLease, DedupStore::Put: queued and
//     written by a background group-commit thread, every `commit_interval` or as soon as
//     `commit_batch` records wait, whichever comes first, in order with each other (a crash
//     keeps a prefix of the queue). Load, Flush and Compact first write what is queued.
//
// Refund-only leases and releases are an append-only log: the caller encodes the record (off
// every lock), the queue appends it to a chunk of at most kChunkBytes, and the writer stores
// each chunk as one row of `lease_log` (keyed by sequence, with the time after which the row no
// longer matters) in a short transaction of its own, so a synchronous write waits for one such
// row at most. Load folds the rows (a release drops the lease it names); Compact drops rows
// that no longer matter and, when the log has grown, rewrites the live leases into new rows.
// Leases that hold slots are rows of `leases` (keyed by id, renewed in place); a release of
// one deletes its row (queued).
//
// Durability: synchronous=NORMAL (the default) makes a committed transaction survive a crash of
// the process (kill -9): the WAL frame is in the OS page cache. synchronous_full also survives
// power loss, at the price of an fsync per commit.
//
// Start-up safety: a file that is not a SQLite database, fails `PRAGMA quick_check`, or carries
// another schema version makes Open fail with kDataLoss / kFailedPrecondition naming the path
// and the problem. Only `reset_corrupt` moves such a file aside (to
// `<path>.corrupt-<UTC timestamp>`, with its -wal) and starts empty.

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <variant>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "service/core/journal.h"

struct sqlite3;
struct sqlite3_stmt;

namespace quotad {

struct SqliteOptions {
  // fsync every commit (survives power loss). Off: survives kill -9 of the process only.
  bool synchronous_full = false;
  // How long a write waits for a lock held by another connection (another process).
  absl::Duration busy_timeout = absl::Seconds(5);
  // Move a corrupt or foreign file aside and start empty instead of failing. Explicit only.
  bool reset_corrupt = false;
  // Open the file read-only (SQLITE_OPEN_READONLY): Load works, every write fails. For
  // inspection tools and for tests of the fail-closed path.
  bool read_only = false;
  // Group commit of the queued writes: at most this long after the first one is queued...
  absl::Duration commit_interval = absl::Milliseconds(5);
  // ...or as soon as this many are queued.
  size_t commit_batch = 4096;
  // Callers that queue beyond this many wait for the writer (bounded memory when the disk is
  // slower than the traffic).
  size_t max_queued = 1 << 20;
  // PRAGMA max_page_count when > 0: caps the file size (a "full disk" for tests).
  int64_t max_pages = 0;
};

// Counters of the group-commit writer, for metrics and tests.
struct SqliteJournalStats {
  int64_t commits = 0;         // transactions of queued records
  int64_t records = 0;         // queued records written
  int64_t failed_records = 0;  // queued records lost to a failed write
  int64_t log_rows = 0;        // rows of lease_log written (group commits and rewrites)
  int64_t log_rewrites = 0;    // times Compact rewrote the live leases of the log
};

// A Journal in a SQLite file, plus the queue and thread that write the deferred records.
//
// Thread-safe: one connection, used under db_mu_; callers on the hot path only touch the queue.
// Owns the connection and the writer thread; the destructor writes what is queued and stops the
// thread. Used by at most one process at a time (SQLite's own lock guards the file).
class SqliteJournal : public Journal {
 public:
  // Opens or creates the state file at `path`. kDataLoss for a corrupt or non-SQLite file,
  // kFailedPrecondition for a foreign schema or another schema version, kPermissionDenied or
  // kUnavailable when the file cannot be opened; every message names the path.
  static absl::StatusOr<std::unique_ptr<SqliteJournal>> Open(const std::string& path,
                                                              SqliteOptions options = {});
  ~SqliteJournal() override;

  SqliteJournal(const SqliteJournal&) = delete;
  SqliteJournal& operator=(const SqliteJournal&) = delete;

  // Every reservation and lease, after writing what is queued.
  absl::StatusOr<JournalState> Load() override;
  absl::Status Reserve(const std::vector<Reservation>& reservations) override;
  // Synchronous when lease.holds_slots; otherwise queued and always OK (a later failure is
  // reported by Flush and counted in stats()).
  absl::Status PutLease(const JournalLease& lease) override;
  absl::Status RenewLease(const std::string& id, int64_t expiry_ns) override;
  void DeleteLease(const std::string& id) override;
  absl::Status PutCooldown(const JournalCooldown& cooldown) override;
  absl::Status PutOutside(const JournalOutside& outside) override;
  // Deletes reservations with until_ns <= now_ns, leases with expiry_ns <= now_ns, and expired
  // idempotency answers.
  absl::Status Compact(int64_t now_ns) override;

  // Writes what is queued now. Returns the first error of a queued write since the last Flush,
  // if any, else the status of this write.
  absl::Status Flush();

  SqliteJournalStats stats() const;
  const std::string& path() const { return path_; }

 private:
  friend class DedupStore;

  struct DeleteOp {
    std::string id;
  };
  struct DedupRow {
    std::string request_id;
    std::string answer;
    int64_t expiry_ns = 0;
  };
  // Row operations: releases of leases that are rows of `leases`, idempotency answers.
  using Op = std::variant<DeleteOp, DedupRow>;
  // Encoded lease-log records (refund-only leases and releases) bound for one lease_log row.
  struct Chunk {
    std::string data;
    int64_t records = 0;
    int64_t max_expiry_ns = 0;          // of the leases in it
    int64_t min_expiry_ns = INT64_MAX;  // of the leases in it
    bool releases = false;      // holds releases
  };
  // WAL size (4 KiB pages) past which the writer thread checkpoints.
  static constexpr int kCheckpointPages = 4000;
  // Row operations per transaction of the writer thread.
  static constexpr size_t kChunk = 256;
  // Bytes of lease-log records per lease_log row (and per transaction of the writer thread).
  static constexpr size_t kChunkBytes = 32 * 1024;
  // Compact rewrites the log when more than this many rows, and half of them, are partly dead
  // weight.
  static constexpr int64_t kRewriteRows = 256;

  SqliteJournal(std::string path, SqliteOptions options, sqlite3* db);
  absl::Status Prepare();
  void Enqueue(Op op);
  // Appends an encoded lease-log record to the queue.
  void EnqueueRecord(const std::string& record, int64_t expiry_ns, bool release);
  // Waits while the queue is full. Returns with queue_mu_ held.
  void AwaitRoomLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(queue_mu_);
  void WriterLoop();
  // Writes everything queued, one short transaction per chunk (db_mu_ is taken per chunk, so a
  // synchronous write waits for one chunk at most). Errors are remembered for Flush.
  absl::Status WriteQueued() ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu_)
      ABSL_LOCKS_EXCLUDED(db_mu_);
  // Runs `body` in BEGIN IMMEDIATE ... COMMIT, rolling back on error.
  template <typename F>
  absl::Status TransactionLocked(const char* what, F body) ABSL_EXCLUSIVE_LOCKS_REQUIRED(db_mu_);
  absl::Status WriteLeaseLocked(const JournalLease& lease) ABSL_EXCLUSIVE_LOCKS_REQUIRED(db_mu_);
  absl::Status WriteLogRowLocked(const Chunk& chunk) ABSL_EXCLUSIVE_LOCKS_REQUIRED(db_mu_);
  absl::Status ApplyLocked(const Op& op) ABSL_EXCLUSIVE_LOCKS_REQUIRED(db_mu_);
  // Reads lease_log folded: the leases no release names, and the rows read.
  absl::Status FoldLogLocked(std::vector<JournalLease>* leases, int64_t* rows)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(db_mu_);
  // Steps a statement that returns no rows and resets it for reuse.
  absl::Status StepLocked(sqlite3_stmt* st, const char* what) ABSL_EXCLUSIVE_LOCKS_REQUIRED(db_mu_);
  absl::Status Error(const char* what) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(db_mu_);

  // For DedupStore: live answers at start-up, and the deferred write of one.
  absl::StatusOr<std::vector<DedupRow>> LoadDedup(int64_t now_ns);
  void QueueDedup(std::string request_id, std::string answer, int64_t expiry_ns);

  const std::string path_;
  const SqliteOptions options_;

  // Held by whoever writes the queue (the writer thread, Load, Flush, Compact) for the whole
  // drain, so that they see everything queued before them; synchronous writes skip it.
  mutable absl::Mutex write_mu_ ABSL_ACQUIRED_BEFORE(db_mu_);
  mutable absl::Mutex db_mu_ ABSL_ACQUIRED_BEFORE(queue_mu_);
  sqlite3* const db_ ABSL_PT_GUARDED_BY(db_mu_);
  sqlite3_stmt* put_reservation_ ABSL_GUARDED_BY(db_mu_) = nullptr;
  sqlite3_stmt* extend_reservation_ ABSL_GUARDED_BY(db_mu_) = nullptr;
  sqlite3_stmt* put_lease_ ABSL_GUARDED_BY(db_mu_) = nullptr;
  sqlite3_stmt* renew_lease_ ABSL_GUARDED_BY(db_mu_) = nullptr;
  sqlite3_stmt* delete_lease_ ABSL_GUARDED_BY(db_mu_) = nullptr;
  sqlite3_stmt* put_dedup_ ABSL_GUARDED_BY(db_mu_) = nullptr;
  sqlite3_stmt* put_log_ ABSL_GUARDED_BY(db_mu_) = nullptr;
  absl::Status async_error_ ABSL_GUARDED_BY(db_mu_);
  SqliteJournalStats stats_ ABSL_GUARDED_BY(db_mu_);
  // The latest expiry of a lease written to lease_log: a row with releases matters until then
  // (a release names a lease of that row or of an earlier one).
  int64_t log_max_expiry_ns_ ABSL_GUARDED_BY(db_mu_) = 0;

  mutable absl::Mutex queue_mu_;
  std::vector<Chunk> chunks_ ABSL_GUARDED_BY(queue_mu_);
  std::vector<Op> ops_ ABSL_GUARDED_BY(queue_mu_);
  // Buffers of written chunks, kept for the next ones (no page faults on the hot path).
  std::vector<std::string> spare_ ABSL_GUARDED_BY(queue_mu_);
  size_t queued_ ABSL_GUARDED_BY(queue_mu_) = 0;  // records in chunks_ and ops_
  // Ids of the rows of `leases` (leases that hold slots, and rows of older files): a release
  // of one deletes the row; any other release is a lease_log record.
  absl::flat_hash_set<std::string> lease_rows_ ABSL_GUARDED_BY(queue_mu_);
  // Wakes the writer thread: signalled when the queue stops being empty, when it reaches
  // commit_batch, for a checkpoint and to stop. (A CondVar, not a Mutex::Await condition, so
  // that an enqueue's unlock stays on the fast path.)
  absl::CondVar writer_cv_;
  bool stopping_ ABSL_GUARDED_BY(queue_mu_) = false;
  // Set by the WAL hook when the WAL has grown past kCheckpointPages.
  bool checkpoint_wanted_ ABSL_GUARDED_BY(queue_mu_) = false;

  // The writer thread's connection for checkpoints (null when read-only).
  sqlite3* checkpoint_db_ = nullptr;

  std::thread writer_;
};

}  // namespace quotad

#endif  // QUOTAD_SERVICE_STORE_SQLITE_JOURNAL_H_
