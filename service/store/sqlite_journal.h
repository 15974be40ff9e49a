#ifndef QUOTAD_SERVICE_STORE_SQLITE_JOURNAL_H_
#define QUOTAD_SERVICE_STORE_SQLITE_JOURNAL_H_

// The embedded default store: the ledger's Journal in one local SQLite file (WAL mode).
//
// What is written when:
//   Reserve, PutLease of a lease that holds slots, RenewLease, Compact: one transaction each,
//     committed before the call returns. They do not wait for the queued records (below): those
//     only lose refunds or apply a release late when lost, whatever the order.
//   PutLease of a lease that only allows a refund, DeleteLease, QueueAnswer (the answers of a
//     DurableDedupStore): queued and
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
// Disk bounded by live state:
//   - The WAL is checkpointed while serving, by the writer thread, once it holds
//     `checkpoint_wal_bytes` or `checkpoint_interval` after its first frame: first PASSIVE on a
//     connection of its own (the bulk of the copy and the fsync, while callers keep
//     committing), then TRUNCATE under db_mu_ (only what was committed meanwhile; no busy wait:
//     a reader in another process makes it give up until the next time). The WAL file goes back
//     to zero bytes; journal_size_limit bounds it should only a restart of the log happen.
//   - Before each checkpoint the writer thread compacts the lease log as Compact does (rows
//     that ended deleted; a log mostly of dead weight rewritten), at a time that is surely
//     past: the `now_ns` of the last Compact carried forward by the steady clock, and never
//     later than the newest grant written (the ledger's clock). Nothing is trimmed before the
//     first Compact (the server runs its first one a sweep after start-up).
//   - New files are auto_vacuum=INCREMENTAL (an older file is converted by one VACUUM at Open);
//     when the free list passes a quarter of the file, a few pages per step are given back to
//     the file system (incremental_vacuum, db_mu_ released between steps), so the main file
//     tracks leases and windows in force, not history.
//
// Durability: synchronous=NORMAL (the default) makes a committed transaction survive a crash of
// the process (kill -9): the WAL frame is in the OS page cache. synchronous_full also survives
// power loss, at the price of an fsync per commit.
//
// Start-up safety: a file that is not a SQLite database, fails `PRAGMA quick_check`, or carries
// another schema version makes Open fail with kDataLoss / kFailedPrecondition naming the path
// and the problem. Only `reset_corrupt` moves such a file aside (to
// `<path>.corrupt-<UTC timestamp>`, with its -wal) and starts empty.
//
// Where the code is, and its locks (write_mu_ before db_mu_ before queue_mu_):
//   sqlite_schema.cc             pragmas, schema, upgrade, start-up checks: before the journal
//                                exists, no lock.
//   sqlite_journal.cc            Open, the statements, the synchronous writes (Reserve, PutLease
//                                of a slot, RenewLease, PutCooldown, PutOutside): db_mu_ for one
//                                transaction each; Flush: write_mu_ then db_mu_.
//   sqlite_journal_writer.cc     the queue (queue_mu_ only, on the hot path) and the writer
//                                thread: write_mu_ for a drain, db_mu_ per short transaction.
//   sqlite_journal_load.cc       Load, LoadAnswers, Compact and the lease log's fold and
//                                rewrite: write_mu_ (drain first), then db_mu_.
//   sqlite_journal_checkpoint.cc checkpoint and incremental vacuum: write_mu_ held by the
//                                caller; db_mu_ only for the short TRUNCATE step / per step.
//   lease_log_codec.*, sqlite_util.*: the record bytes and small helpers; no state.

#include <atomic>
#include <chrono>
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
#include "service/store/dedup_store.h"

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
  // The writer thread checkpoints the WAL once it holds this many bytes...
  int64_t checkpoint_wal_bytes = 4 << 20;
  // ...or this long after the first frame written since the last checkpoint.
  absl::Duration checkpoint_interval = absl::Seconds(1);
  // PRAGMA journal_size_limit: the size the WAL file is cut back to when the log restarts.
  int64_t journal_size_limit = 8 << 20;
};

// Sizes of the state file and its WAL on disk (0 for a file that does not exist).
struct SqliteFileSizes {
  int64_t file_bytes = 0;
  int64_t wal_bytes = 0;
};

// Counters of the group-commit writer, for metrics and tests.
struct SqliteJournalStats {
  int64_t commits = 0;         // transactions of queued records
  int64_t records = 0;         // queued records written
  int64_t failed_records = 0;  // queued records lost to a failed write
  int64_t log_rows = 0;        // rows of lease_log written (group commits and rewrites)
  int64_t log_rewrites = 0;    // times Compact rewrote the live leases of the log
  int64_t checkpoints = 0;      // checkpoints that emptied the WAL (TRUNCATE)
  int64_t checkpoints_busy = 0;  // checkpoints left partial by a reader of another process
  int64_t log_rows_trimmed = 0;  // lease_log rows deleted as ended (Compact, writer thread)
  int64_t pages_vacuumed = 0;   // free pages given back to the file system
};

// A Journal in a SQLite file, plus the queue and thread that write the deferred records. Also
// the DedupLog of the request_id answers (`dedup` table), written by the same queue.
//
// Thread-safe: one connection, used under db_mu_; callers on the hot path only touch the queue.
// Owns the connection and the writer thread; the destructor writes what is queued and stops the
// thread. Used by at most one process at a time (SQLite's own lock guards the file).
class SqliteJournal : public Journal, public DedupLog {
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

  // DedupLog: the live answers, after writing what is queued; an answer goes to the queue.
  absl::StatusOr<std::vector<DedupAnswer>> LoadAnswers(int64_t now_ns) override;
  void QueueAnswer(DedupAnswer answer) override;

  // Writes what is queued now. Returns the first error of a queued write since the last Flush,
  // if any, else the status of this write.
  absl::Status Flush();

  // Writes what is queued and empties the WAL into the file now (TRUNCATE). kUnavailable when a
  // reader of another process holds part of the WAL.
  absl::Status Checkpoint();

  SqliteJournalStats stats() const;
  // Sizes of the file and its WAL, from stat(2): no lock, cheap enough for every scrape.
  SqliteFileSizes FileSizes() const;
  const std::string& path() const { return path_; }

 private:
  struct DeleteOp {
    std::string id;
  };
  // Row operations: releases of leases that are rows of `leases`, idempotency answers.
  using Op = std::variant<DeleteOp, DedupAnswer>;
  // Encoded lease-log records (refund-only leases and releases) bound for one lease_log row.
  struct Chunk {
    std::string data;
    int64_t records = 0;
    int64_t max_expiry_ns = 0;          // of the leases in it
    int64_t min_expiry_ns = INT64_MAX;  // of the leases in it
    bool releases = false;      // holds releases
    int64_t max_granted_ns = 0;  // of the leases in it: the ledger's time when it was written
  };
  // Free pages kept before incremental_vacuum gives them back (and at most a quarter of the
  // file), and pages given back per step (db_mu_ is released between steps).
  static constexpr int64_t kVacuumMinFreePages = 256;
  static constexpr int64_t kVacuumStepPages = 512;
  // Row operations per transaction of the writer thread.
  static constexpr size_t kChunk = 256;
  // Bytes of lease-log records per lease_log row (and per transaction of the writer thread).
  static constexpr size_t kChunkBytes = 32 * 1024;
  // Compact rewrites the log when more than this many rows, holding half of its bytes, are
  // partly dead weight.
  static constexpr int64_t kRewriteRows = 64;

  SqliteJournal(std::string path, SqliteOptions options, sqlite3* db);
  absl::Status Prepare();
  void Enqueue(Op op);
  // Appends an encoded lease-log record to the queue.
  void EnqueueRecord(const std::string& record, int64_t expiry_ns, int64_t granted_ns,
                     bool release);
  // Waits while the queue is full. Returns with queue_mu_ held.
  void AwaitRoomLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(queue_mu_);
  // The condition AwaitRoomLocked waits for.
  bool HasRoomLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(queue_mu_);
  void WriterLoop();
  // Writes everything queued, one short transaction per chunk (db_mu_ is taken per chunk, so a
  // synchronous write waits for one chunk at most). Errors are remembered for Flush.
  absl::Status WriteQueued() ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu_)
      ABSL_LOCKS_EXCLUDED(db_mu_);
  // A transaction is BeginLocked, the body's writes, then EndLocked(body's status), all under
  // one hold of db_mu_: BEGIN IMMEDIATE, then COMMIT when the body succeeded, else ROLLBACK.
  // Errors name `what`.
  absl::Status BeginLocked(const char* what) ABSL_EXCLUSIVE_LOCKS_REQUIRED(db_mu_);
  absl::Status EndLocked(absl::Status body, const char* what)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(db_mu_);
  // Bodies of transactions (see BeginLocked).
  absl::Status WriteReservationsLocked(const std::vector<Reservation>& reservations)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(db_mu_);
  absl::Status WriteLeaseLocked(const JournalLease& lease) ABSL_EXCLUSIVE_LOCKS_REQUIRED(db_mu_);
  absl::Status RenewLeaseLocked(const std::string& id, int64_t expiry_ns)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(db_mu_);
  absl::Status WriteCooldownLocked(const JournalCooldown& cooldown)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(db_mu_);
  absl::Status WriteOutsideLocked(const JournalOutside& outside)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(db_mu_);
  // One group commit: `chunk` (when not null) and ops[begin, end).
  absl::Status WriteBatchLocked(const Chunk* chunk, const std::vector<Op>& ops, size_t begin,
                                size_t end) ABSL_EXCLUSIVE_LOCKS_REQUIRED(db_mu_);
  // Compact's deletions; the ids of the rows of `leases` it deletes go to `*ended`.
  absl::Status CompactLocked(int64_t now_ns, std::vector<std::string>* ended)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(db_mu_);
  absl::Status WriteLogRowLocked(const Chunk& chunk) ABSL_EXCLUSIVE_LOCKS_REQUIRED(db_mu_);
  absl::Status ApplyLocked(const Op& op) ABSL_EXCLUSIVE_LOCKS_REQUIRED(db_mu_);
  // PASSIVE on checkpoint_db_ without db_mu_, then TRUNCATE under it (see the file comment).
  absl::Status CheckpointLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu_)
      ABSL_LOCKS_EXCLUDED(db_mu_);
  // Deletes the lease_log rows that ended by `now_ns` and, when most rows are partly dead
  // weight, rewrites the live leases. Runs inside the caller's transaction.
  absl::Status CompactLogLocked(int64_t now_ns) ABSL_EXCLUSIVE_LOCKS_REQUIRED(db_mu_);
  // The time up to which the writer thread may compact the log (0: not yet; see above).
  int64_t LogNowLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(db_mu_);
  // Gives free pages back to the file system while they are more than a quarter of the file,
  // a step at a time, taking db_mu_ per step.
  absl::Status VacuumFree() ABSL_LOCKS_EXCLUDED(db_mu_);
  // Reads lease_log folded: the leases no release names, and the rows read.
  absl::Status FoldLogLocked(std::vector<JournalLease>* leases, int64_t* rows)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(db_mu_);
  // Steps a statement that returns no rows and resets it for reuse.
  absl::Status StepLocked(sqlite3_stmt* st, const char* what) ABSL_EXCLUSIVE_LOCKS_REQUIRED(db_mu_);
  absl::Status Error(const char* what) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(db_mu_);

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
  // Set by the WAL hook when the WAL has grown past checkpoint_wal_bytes.
  bool checkpoint_wanted_ ABSL_GUARDED_BY(queue_mu_) = false;
  // Frames in the WAL after the last commit on db_ (set by the WAL hook, zeroed by a
  // checkpoint, both under db_mu_; read anywhere), and since when it has any.
  std::atomic<int64_t> wal_frames_{0};
  absl::Time wal_since_ ABSL_GUARDED_BY(queue_mu_) = absl::InfiniteFuture();
  // The ledger's time of the newest group-committed grant, not yet used to trim the log
  // (0: none). Set by WriteLogRowLocked, taken by the writer thread.
  int64_t trim_now_ns_ ABSL_GUARDED_BY(db_mu_) = 0;
  // The `now_ns` of the last Compact, and when (steady clock) it ran.
  int64_t compact_now_ns_ ABSL_GUARDED_BY(db_mu_) = 0;
  std::chrono::steady_clock::time_point compact_at_ ABSL_GUARDED_BY(db_mu_);
  // PRAGMA auto_vacuum is INCREMENTAL (the file can give pages back). Set by Open.
  bool incremental_vacuum_ = false;
  // checkpoint_wal_bytes in WAL frames (pages). Set by Open.
  int64_t checkpoint_frames_ = 1024;

  // The connection for checkpoints (null when read-only); used under write_mu_.
  sqlite3* checkpoint_db_ ABSL_PT_GUARDED_BY(write_mu_) = nullptr;

  std::thread writer_;
};

}  // namespace quotad

#endif  // QUOTAD_SERVICE_STORE_SQLITE_JOURNAL_H_
