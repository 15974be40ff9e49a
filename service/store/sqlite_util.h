#ifndef QUOTAD_SERVICE_STORE_SQLITE_UTIL_H_
#define QUOTAD_SERVICE_STORE_SQLITE_UTIL_H_

// Small helpers of the SQLite store, shared by its files: errors that name the state file,
// one-shot queries, column and binding shorthands, file sizes. Internal to service/store.
//
// Thread-safety: none of their own. A helper that takes a connection must be called by the
// holder of that connection's lock (SqliteJournal::db_mu_, or before the journal exists).

#include <sqlite3.h>

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace quotad::sqlite_internal {

// A status for SQLite result code `rc` (kDataLoss for a corrupt file, kResourceExhausted for a
// full one, ...), its message naming the state file, `what` failed and SQLite's message
// (from `db` when not null).
absl::Status DbError(const std::string& path, sqlite3* db, int rc, absl::string_view what);

// Column `col` of the current row as text ("" for NULL).
std::string Text(sqlite3_stmt* st, int col);
// Binds `s` without a copy: `s` must outlive the step.
void BindText(sqlite3_stmt* st, int i, const std::string& s);

// Runs one statement and stores the first column of its first row in `*out` ("" when none).
// Returns SQLite's result code (SQLITE_OK on success).
int QueryText(sqlite3* db, const char* sql, std::string* out);
// The first column of the first row as a number (0 when none or on error).
int64_t QueryInt(sqlite3* db, const char* sql);

bool FileExists(const std::string& path);
// The size of the file at `path` (0 when it does not exist).
int64_t FileBytes(const std::string& path);

// A lease's refund tokens as the `tokens` blob of `leases`: int64 little-endian, one per limit.
std::string EncodeTokens(const std::vector<int64_t>& tokens);
std::vector<int64_t> DecodeTokens(const void* data, int bytes);

}  // namespace quotad::sqlite_internal

#endif  // QUOTAD_SERVICE_STORE_SQLITE_UTIL_H_
