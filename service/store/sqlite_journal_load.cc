// SqliteJournal's reads and compaction: Load (the tables, and the lease log folded), the live
// idempotency answers (DedupLog::LoadAnswers), Compact, and the lease log's trim and rewrite
// (also run by the writer thread before a checkpoint).
//
// Locking contract: Load, LoadAnswers and Compact take write_mu_ and first write what is queued
// (so they see every write queued before them), then hold db_mu_ for their reads or their one
// transaction. Compact takes queue_mu_ after releasing db_mu_, and VacuumFree after that.
// The *Locked functions run under db_mu_, inside the caller's transaction where they write.

#include <algorithm>
#include <chrono>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "service/core/status_macros.h"
#include "service/store/lease_log_codec.h"
#include "service/store/sqlite_journal.h"
#include "service/store/sqlite_util.h"

namespace quotad {

using sqlite_internal::DecodeTokens;
using sqlite_internal::EncodeLease;
using sqlite_internal::kLeaseHexTag;
using sqlite_internal::kLeaseTag;
using sqlite_internal::kReleaseHexTag;
using sqlite_internal::kReleaseTag;
using sqlite_internal::LogReader;
using sqlite_internal::Text;

absl::Status SqliteJournal::FoldLogLocked(std::vector<JournalLease>* leases, int64_t* rows) {
  sqlite3_stmt* st = nullptr;
  if (sqlite3_prepare_v2(db_, "SELECT data FROM lease_log ORDER BY seq", -1, &st, nullptr) !=
      SQLITE_OK) {
    return Error("cannot read the lease log");
  }
  const size_t first = leases->size();
  absl::flat_hash_map<std::string, size_t> index;  // id -> position in *leases
  std::vector<bool> released;
  *rows = 0;
  int rc;
  bool bad = false;
  std::string id;
  while (!bad && (rc = sqlite3_step(st)) == SQLITE_ROW) {
    ++*rows;
    LogReader in(sqlite3_column_blob(st, 0), sqlite3_column_bytes(st, 0));
    while (!in.done()) {
      const char tag = in.Tag();
      if (tag == kLeaseTag || tag == kLeaseHexTag) {
        JournalLease lease;
        if (!in.Lease(tag == kLeaseHexTag, &lease)) break;
        auto [it, inserted] = index.try_emplace(lease.id, leases->size());
        if (inserted) {
          leases->push_back(std::move(lease));
          released.push_back(false);
        } else {  // a rewrite's copy; the later one wins
          (*leases)[it->second] = std::move(lease);
          released[it->second - first] = false;
        }
      } else if (tag == kReleaseTag || tag == kReleaseHexTag) {
        in.Id(tag == kReleaseHexTag, &id);
        auto it = index.find(id);
        if (it != index.end()) released[it->second - first] = true;
      } else {
        break;
      }
    }
    bad = !in.ok() || !in.done();
  }
  sqlite3_finalize(st);
  if (bad) {
    return absl::DataLossError(
        absl::StrCat("sqlite state file ", path_, ": a lease_log row does not decode"));
  }
  if (rc != SQLITE_DONE) return Error("cannot read the lease log");
  size_t out = first;
  for (size_t i = first; i < leases->size(); ++i) {
    if (released[i - first]) continue;
    if (out != i) (*leases)[out] = std::move((*leases)[i]);
    ++out;
  }
  leases->resize(out);
  return absl::OkStatus();
}

absl::StatusOr<JournalState> SqliteJournal::Load() {
  absl::MutexLock w(&write_mu_);
  WriteQueued().IgnoreError();
  absl::MutexLock l(&db_mu_);
  JournalState state;
  sqlite3_stmt* st = nullptr;
  int rc = sqlite3_prepare_v2(db_,
                              "SELECT credential, limit_name, scope, window_start_ns, until_ns, "
                              "units FROM reservations",
                              -1, &st, nullptr);
  if (rc != SQLITE_OK) return Error("cannot read reservations");
  // Rows come in key order: a run of rows of one credential and limit shares their strings'
  // bytes, compared before they are copied.
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    Reservation& r = state.reservations.emplace_back();
    r.key.credential = Text(st, 0);
    r.key.limit = Text(st, 1);
    r.key.scope = Text(st, 2);
    r.window_start_ns = sqlite3_column_int64(st, 3);
    r.until_ns = sqlite3_column_int64(st, 4);
    r.units = sqlite3_column_int64(st, 5);
  }
  sqlite3_finalize(st);
  if (rc != SQLITE_DONE) return Error("cannot read reservations");

  rc = sqlite3_prepare_v2(db_,
                          "SELECT id, credential, feature, scope, holder, cost, granted_ns, "
                          "expiry_ns, holds_slots, tokens FROM leases",
                          -1, &st, nullptr);
  if (rc != SQLITE_OK) return Error("cannot read leases");
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    JournalLease& lease = state.leases.emplace_back();
    lease.id = Text(st, 0);
    lease.credential = Text(st, 1);
    lease.feature = Text(st, 2);
    lease.scope = Text(st, 3);
    lease.holder = Text(st, 4);
    lease.cost = sqlite3_column_int64(st, 5);
    lease.granted_ns = sqlite3_column_int64(st, 6);
    lease.expiry_ns = sqlite3_column_int64(st, 7);
    lease.holds_slots = sqlite3_column_int(st, 8) != 0;
    lease.tokens = DecodeTokens(sqlite3_column_blob(st, 9), sqlite3_column_bytes(st, 9));
  }
  sqlite3_finalize(st);
  if (rc != SQLITE_DONE) return Error("cannot read leases");
  int64_t rows = 0;
  const size_t slot_rows = state.leases.size();
  QUOTAD_RETURN_IF_ERROR(FoldLogLocked(&state.leases, &rows));
  // A lease written refund-only and later again as holding slots (a reload made its limit a
  // concurrency one) can be in both places until its release reaches the log: the row is the
  // later write, and the one that holds the slot.
  if (slot_rows > 0 && state.leases.size() > slot_rows) {
    absl::flat_hash_set<std::string> with_row;
    for (size_t i = 0; i < slot_rows; ++i) with_row.insert(state.leases[i].id);
    size_t out = slot_rows;
    for (size_t i = slot_rows; i < state.leases.size(); ++i) {
      if (with_row.contains(state.leases[i].id)) continue;
      if (out != i) state.leases[out] = std::move(state.leases[i]);
      ++out;
    }
    state.leases.resize(out);
  }

  rc = sqlite3_prepare_v2(db_, "SELECT credential, feature, until_ns FROM cooldowns", -1, &st,
                          nullptr);
  if (rc != SQLITE_OK) return Error("cannot read cooldowns");
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    state.cooldowns.push_back(
        JournalCooldown{Text(st, 0), Text(st, 1), sqlite3_column_int64(st, 2)});
  }
  sqlite3_finalize(st);
  if (rc != SQLITE_DONE) return Error("cannot read cooldowns");

  rc = sqlite3_prepare_v2(db_,
                          "SELECT credential, limit_name, outside_milli, at_ns, cooldown_until_ns, "
                          "consecutive, until_ns FROM outside",
                          -1, &st, nullptr);
  if (rc != SQLITE_OK) return Error("cannot read outside estimates");
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    state.outside.push_back(JournalOutside{
        Text(st, 0), Text(st, 1), sqlite3_column_int64(st, 2), sqlite3_column_int64(st, 3),
        sqlite3_column_int64(st, 4), sqlite3_column_int64(st, 5), sqlite3_column_int64(st, 6)});
  }
  sqlite3_finalize(st);
  if (rc != SQLITE_DONE) return Error("cannot read outside estimates");
  return state;
}

absl::Status SqliteJournal::CompactLogLocked(int64_t now_ns) {
  {
    sqlite3_stmt* st = nullptr;
    if (sqlite3_prepare_v2(db_, "DELETE FROM lease_log WHERE until_ns <= ?1", -1, &st,
                           nullptr) != SQLITE_OK) {
      return Error("cannot compact the lease log");
    }
    sqlite3_bind_int64(st, 1, now_ns);
    const int rc = sqlite3_step(st);
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE) return Error("cannot compact the lease log");
    stats_.log_rows_trimmed += sqlite3_changes(db_);
  }
  // Rows that are partly dead weight (a lease of them ended, or releases only): when there are
  // many and they hold most of the log's bytes, fold it and write the live leases again, by
  // expiry (so that a row ends as a whole), without the releases. A rewrite costs the live
  // bytes and comes after at least as many bytes of such rows: amortized, each record is
  // written at most about twice. (Bytes, not rows: a group commit at low traffic is a small row,
  // a rewritten row is kChunkBytes.)
  int64_t bytes = 0;
  int64_t partly_dead = 0;
  int64_t partly_dead_bytes = 0;
  {
    // length() of a blob comes from the record header: no overflow page is read.
    sqlite3_stmt* st = nullptr;
    if (sqlite3_prepare_v2(db_,
                           "SELECT coalesce(sum(length(data)), 0), "
                           "coalesce(sum(min_expiry_ns <= ?1), 0), "
                           "coalesce(sum(CASE WHEN min_expiry_ns <= ?1 THEN length(data) END), 0) "
                           "FROM lease_log",
                           -1, &st, nullptr) != SQLITE_OK) {
      return Error("cannot compact the lease log");
    }
    sqlite3_bind_int64(st, 1, now_ns);
    const int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
      bytes = sqlite3_column_int64(st, 0);
      partly_dead = sqlite3_column_int64(st, 1);
      partly_dead_bytes = sqlite3_column_int64(st, 2);
    }
    sqlite3_finalize(st);
    if (rc != SQLITE_ROW) return Error("cannot compact the lease log");
  }
  if (partly_dead <= kRewriteRows || partly_dead_bytes * 2 < bytes) return absl::OkStatus();
  std::vector<JournalLease> leases;
  int64_t read = 0;
  QUOTAD_RETURN_IF_ERROR(FoldLogLocked(&leases, &read));
  std::sort(leases.begin(), leases.end(), [](const JournalLease& a, const JournalLease& b) {
    return a.expiry_ns < b.expiry_ns;
  });
  if (sqlite3_exec(db_, "DELETE FROM lease_log", nullptr, nullptr, nullptr) != SQLITE_OK) {
    return Error("cannot compact the lease log");
  }
  Chunk chunk;
  for (const JournalLease& lease : leases) {
    if (lease.expiry_ns <= now_ns) continue;
    EncodeLease(lease, &chunk.data);
    ++chunk.records;
    chunk.max_expiry_ns = std::max(chunk.max_expiry_ns, lease.expiry_ns);
    chunk.min_expiry_ns = std::min(chunk.min_expiry_ns, lease.expiry_ns);
    if (chunk.data.size() >= kChunkBytes) {
      QUOTAD_RETURN_IF_ERROR(WriteLogRowLocked(chunk));
      chunk = Chunk();
    }
  }
  if (chunk.records > 0) QUOTAD_RETURN_IF_ERROR(WriteLogRowLocked(chunk));
  ++stats_.log_rewrites;
  return absl::OkStatus();
}

absl::Status SqliteJournal::Compact(int64_t now_ns) {
  static constexpr char kWhat[] = "cannot compact";
  absl::MutexLock w(&write_mu_);
  WriteQueued().IgnoreError();
  absl::ReleasableMutexLock l(&db_mu_);
  std::vector<std::string> ended;  // rows of `leases` that Compact deletes
  absl::Status s = BeginLocked(kWhat);
  if (s.ok()) s = EndLocked(CompactLocked(now_ns, &ended), kWhat);
  if (s.ok()) {
    compact_now_ns_ = now_ns;
    compact_at_ = std::chrono::steady_clock::now();
  }
  l.Release();
  if (s.ok() && !ended.empty()) {
    absl::MutexLock q(&queue_mu_);
    for (const std::string& id : ended) lease_rows_.erase(id);
  }
  if (s.ok()) VacuumFree().IgnoreError();  // logged; the file still works at its size
  return s;
}

absl::Status SqliteJournal::CompactLocked(int64_t now_ns, std::vector<std::string>* ended) {
  {
    sqlite3_stmt* st = nullptr;
    if (sqlite3_prepare_v2(db_, "SELECT id FROM leases WHERE expiry_ns <= ?1", -1, &st,
                           nullptr) != SQLITE_OK) {
      return Error("cannot compact");
    }
    sqlite3_bind_int64(st, 1, now_ns);
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) ended->push_back(Text(st, 0));
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE) return Error("cannot compact");
  }
  for (const char* sql : {"DELETE FROM reservations WHERE until_ns <= ?1",
                          "DELETE FROM leases WHERE expiry_ns <= ?1",
                          "DELETE FROM dedup WHERE expiry_ns <= ?1",
                          "DELETE FROM cooldowns WHERE until_ns <= ?1",
                          "DELETE FROM outside WHERE until_ns <= ?1"}) {
    sqlite3_stmt* st = nullptr;
    if (sqlite3_prepare_v2(db_, sql, -1, &st, nullptr) != SQLITE_OK) {
      return Error("cannot compact");
    }
    sqlite3_bind_int64(st, 1, now_ns);
    const int rc = sqlite3_step(st);
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE) return Error("cannot compact");
  }
  return CompactLogLocked(now_ns);
}

absl::StatusOr<std::vector<DedupAnswer>> SqliteJournal::LoadAnswers(int64_t now_ns) {
  absl::MutexLock w(&write_mu_);
  WriteQueued().IgnoreError();
  absl::MutexLock l(&db_mu_);
  std::vector<DedupAnswer> answers;
  sqlite3_stmt* st = nullptr;
  if (sqlite3_prepare_v2(db_,
                         "SELECT request_id, answer, expiry_ns FROM dedup WHERE expiry_ns > ?1",
                         -1, &st, nullptr) != SQLITE_OK) {
    return Error("cannot read idempotency answers");
  }
  sqlite3_bind_int64(st, 1, now_ns);
  int rc;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    DedupAnswer& answer = answers.emplace_back();
    answer.request_id = Text(st, 0);
    const auto* blob = static_cast<const char*>(sqlite3_column_blob(st, 1));
    answer.answer.assign(blob == nullptr ? "" : blob, sqlite3_column_bytes(st, 1));
    answer.expiry_ns = sqlite3_column_int64(st, 2);
  }
  sqlite3_finalize(st);
  if (rc != SQLITE_DONE) return Error("cannot read idempotency answers");
  return answers;
}

int64_t SqliteJournal::LogNowLocked() const {
  if (compact_now_ns_ == 0 || trim_now_ns_ == 0) return 0;
  const int64_t since_compact = std::chrono::duration_cast<std::chrono::nanoseconds>(
                                    std::chrono::steady_clock::now() - compact_at_)
                                    .count();
  return std::min(compact_now_ns_ + since_compact, trim_now_ns_);
}

}  // namespace quotad
