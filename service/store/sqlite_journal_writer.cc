// SqliteJournal's deferred writes: the queue that refund-only leases, releases and idempotency
// answers go to on the hot path, and the writer thread that group-commits it (and, at most once
// per checkpoint, trims the lease log before sqlite_journal_checkpoint.cc empties the WAL).
//
// Locking contract: callers that queue take queue_mu_ only (and wait on it while the queue is
// full). A drain (WriteQueued) runs under write_mu_, takes the queue under queue_mu_, then
// writes it in short transactions, taking db_mu_ per transaction so that a synchronous write
// waits for one of them at most. Order: write_mu_, db_mu_, queue_mu_.

#include <algorithm>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "absl/time/clock.h"
#include "service/core/status_macros.h"
#include "service/store/lease_log_codec.h"
#include "service/store/sqlite_journal.h"
#include "service/store/sqlite_util.h"
#include "spdlog/spdlog.h"

namespace quotad {

using sqlite_internal::BindText;
using sqlite_internal::EncodeRelease;

absl::Status SqliteJournal::WriteLogRowLocked(const Chunk& chunk) {
  log_max_expiry_ns_ = std::max(log_max_expiry_ns_, chunk.max_expiry_ns);
  // A release names a lease of this row or of an earlier one, which ends by log_max_expiry_ns_.
  const int64_t until = chunk.releases ? log_max_expiry_ns_ : chunk.max_expiry_ns;
  sqlite3_bind_int64(put_log_, 1, until);
  sqlite3_bind_int64(put_log_, 2, chunk.records);
  sqlite3_bind_int64(put_log_, 4, chunk.min_expiry_ns == INT64_MAX ? 0 : chunk.min_expiry_ns);
  sqlite3_bind_blob(put_log_, 3, chunk.data.data(), static_cast<int>(chunk.data.size()),
                    SQLITE_STATIC);
  QUOTAD_RETURN_IF_ERROR(StepLocked(put_log_, "cannot write the lease log"));
  ++stats_.log_rows;
  if (chunk.max_granted_ns > 0) trim_now_ns_ = chunk.max_granted_ns;
  return absl::OkStatus();
}

absl::Status SqliteJournal::ApplyLocked(const Op& op) {
  if (const auto* del = std::get_if<DeleteOp>(&op)) {
    BindText(delete_lease_, 1, del->id);
    return StepLocked(delete_lease_, "cannot delete a lease");
  }
  const auto& row = std::get<DedupAnswer>(op);
  BindText(put_dedup_, 1, row.request_id);
  sqlite3_bind_blob(put_dedup_, 2, row.answer.data(), static_cast<int>(row.answer.size()),
                    SQLITE_STATIC);
  sqlite3_bind_int64(put_dedup_, 3, row.expiry_ns);
  return StepLocked(put_dedup_, "cannot write an idempotency answer");
}

absl::Status SqliteJournal::WriteBatchLocked(const Chunk* chunk, const std::vector<Op>& ops,
                                             size_t begin, size_t end) {
  if (chunk != nullptr) QUOTAD_RETURN_IF_ERROR(WriteLogRowLocked(*chunk));
  for (size_t i = begin; i < end; ++i) QUOTAD_RETURN_IF_ERROR(ApplyLocked(ops[i]));
  return absl::OkStatus();
}

absl::Status SqliteJournal::WriteQueued() {
  std::vector<Chunk> chunks;
  std::vector<Op> ops;
  {
    absl::MutexLock q(&queue_mu_);
    chunks.swap(chunks_);
    ops.swap(ops_);
    queued_ = 0;
  }
  absl::Status first;
  size_t c = 0;
  size_t o = 0;
  // One short transaction per chunk of lease-log records and per kChunk row operations, db_mu_
  // released in between: a synchronous write waits for one of them at most.
  while (c < chunks.size() || o < ops.size()) {
    const Chunk* chunk = c < chunks.size() ? &chunks[c++] : nullptr;
    const size_t o_end = std::min(ops.size(), o + kChunk);
    const int64_t n = (chunk != nullptr ? chunk->records : 0) + static_cast<int64_t>(o_end - o);
    static constexpr char kWhat[] = "cannot write queued records";
    absl::MutexLock l(&db_mu_);
    absl::Status s = BeginLocked(kWhat);
    if (s.ok()) s = EndLocked(WriteBatchLocked(chunk, ops, o, o_end), kWhat);
    o = o_end;
    if (s.ok()) {
      ++stats_.commits;
      stats_.records += n;
    } else {
      stats_.failed_records += n;
      if (async_error_.ok()) async_error_ = s;
      if (first.ok()) first = s;
      spdlog::error("component=store event=group_commit_failed records={} error=\"{}\"", n,
                    std::string(s.message()));
    }
  }
  absl::MutexLock q(&queue_mu_);
  for (Chunk& chunk : chunks) {
    if (spare_.size() >= 64) break;
    chunk.data.clear();
    spare_.push_back(std::move(chunk.data));
  }
  return first;
}

bool SqliteJournal::HasRoomLocked() const {
  return queued_ < options_.max_queued || stopping_;
}

void SqliteJournal::AwaitRoomLocked() {
  if (queued_ >= options_.max_queued) {
    // Await evaluates the condition with queue_mu_ held.
    queue_mu_.Await(absl::Condition(this, &SqliteJournal::HasRoomLocked));
  }
}

void SqliteJournal::Enqueue(Op op) {
  absl::MutexLock l(&queue_mu_);
  AwaitRoomLocked();
  ops_.push_back(std::move(op));
  if (++queued_ == 1 || queued_ == options_.commit_batch) writer_cv_.Signal();
}

void SqliteJournal::EnqueueRecord(const std::string& record, int64_t expiry_ns,
                                  int64_t granted_ns, bool release) {
  absl::MutexLock l(&queue_mu_);
  AwaitRoomLocked();
  if (chunks_.empty() || chunks_.back().data.size() >= kChunkBytes) {
    Chunk& chunk = chunks_.emplace_back();
    if (!spare_.empty()) {
      chunk.data.swap(spare_.back());
      spare_.pop_back();
    } else {
      chunk.data.reserve(kChunkBytes + 256);
    }
  }
  Chunk& chunk = chunks_.back();
  chunk.data.append(record);
  ++chunk.records;
  if (release) {
    chunk.releases = true;
  } else {
    chunk.max_expiry_ns = std::max(chunk.max_expiry_ns, expiry_ns);
    chunk.min_expiry_ns = std::min(chunk.min_expiry_ns, expiry_ns);
    chunk.max_granted_ns = std::max(chunk.max_granted_ns, granted_ns);
  }
  if (++queued_ == 1 || queued_ == options_.commit_batch) writer_cv_.Signal();
}

void SqliteJournal::WriterLoop() {
  for (;;) {
    bool checkpoint = false;
    {
      absl::MutexLock l(&queue_mu_);
      // Sleeps until something is queued, a checkpoint is wanted, or the WAL's first frame is
      // checkpoint_interval old.
      while (!stopping_ && queued_ == 0 && !checkpoint_wanted_) {
        if (wal_since_ == absl::InfiniteFuture()) {
          writer_cv_.Wait(&queue_mu_);
        } else if (writer_cv_.WaitWithDeadline(&queue_mu_,
                                               wal_since_ + options_.checkpoint_interval)) {
          break;  // timed out: the WAL is due
        }
      }
      if (stopping_) return;  // the destructor writes the rest
      if (queued_ > 0) {
        const absl::Time deadline = absl::Now() + options_.commit_interval;
        while (!stopping_ && queued_ < options_.commit_batch) {
          if (writer_cv_.WaitWithDeadline(&queue_mu_, deadline)) break;  // timed out
        }
      }
      if (stopping_) return;
      checkpoint = checkpoint_wanted_ || absl::Now() - wal_since_ >= options_.checkpoint_interval;
      checkpoint_wanted_ = false;
    }
    absl::MutexLock w(&write_mu_);
    WriteQueued().IgnoreError();  // remembered for Flush, logged
    if (!checkpoint || checkpoint_db_ == nullptr) continue;
    // At most once per checkpoint: drop the lease_log rows that ended, give pages back when
    // the free list is large, then empty the WAL (which holds those deletions too).
    bool trimmed = false;
    {
      absl::MutexLock l(&db_mu_);
      const int64_t now_ns = LogNowLocked();
      if (now_ns > 0) {
        trim_now_ns_ = 0;  // until a newer grant is written
        const int64_t before = stats_.log_rows_trimmed + stats_.log_rewrites;
        static constexpr char kWhat[] = "cannot trim the lease log";
        absl::Status s = BeginLocked(kWhat);
        if (s.ok()) s = EndLocked(CompactLogLocked(now_ns), kWhat);
        if (!s.ok()) {
          spdlog::warn("component=store event=log_trim_failed path={} error=\"{}\"", path_,
                       std::string(s.message()));
        }
        trimmed = stats_.log_rows_trimmed + stats_.log_rewrites > before;
      }
    }
    if (trimmed) VacuumFree().IgnoreError();  // logged
    CheckpointLocked().IgnoreError();         // logged, retried at the next one
  }
}

void SqliteJournal::DeleteLease(const std::string& id) {
  {
    absl::MutexLock l(&queue_mu_);
    if (lease_rows_.erase(id) > 0) {
      AwaitRoomLocked();
      ops_.push_back(DeleteOp{id});
      if (++queued_ == 1 || queued_ == options_.commit_batch) writer_cv_.Signal();
      return;
    }
  }
  thread_local std::string record;
  record.clear();
  EncodeRelease(id, &record);
  EnqueueRecord(record, 0, 0, /*release=*/true);
}


void SqliteJournal::QueueAnswer(DedupAnswer answer) { Enqueue(std::move(answer)); }

}  // namespace quotad
