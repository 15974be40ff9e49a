#include "service/store/sqlite_util.h"

#include <sys/stat.h>

#include <cstdlib>

#include "absl/strings/str_cat.h"

namespace quotad::sqlite_internal {
namespace {

absl::StatusCode CodeFor(int rc) {
  switch (rc & 0xff) {
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
      return absl::StatusCode::kDataLoss;
    case SQLITE_READONLY:
    case SQLITE_PERM:
    case SQLITE_AUTH:
      return absl::StatusCode::kPermissionDenied;
    case SQLITE_FULL:
      return absl::StatusCode::kResourceExhausted;
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
    case SQLITE_CANTOPEN:
    case SQLITE_IOERR:
      return absl::StatusCode::kUnavailable;
    default:
      return absl::StatusCode::kInternal;
  }
}

}  // namespace

absl::Status DbError(const std::string& path, sqlite3* db, int rc, absl::string_view what) {
  const char* msg = db != nullptr ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
  return absl::Status(CodeFor(rc), absl::StrCat("sqlite state file ", path, ": ", what, ": ", msg));
}

std::string EncodeTokens(const std::vector<int64_t>& tokens) {
  std::string out(tokens.size() * 8, '\0');
  for (size_t i = 0; i < tokens.size(); ++i) {
    const uint64_t v = static_cast<uint64_t>(tokens[i]);
    for (int b = 0; b < 8; ++b) out[i * 8 + b] = static_cast<char>((v >> (8 * b)) & 0xff);
  }
  return out;
}

std::vector<int64_t> DecodeTokens(const void* data, int bytes) {
  const auto* p = static_cast<const unsigned char*>(data);
  std::vector<int64_t> out(bytes / 8);
  for (size_t i = 0; i < out.size(); ++i) {
    uint64_t v = 0;
    for (int b = 0; b < 8; ++b) v |= static_cast<uint64_t>(p[i * 8 + b]) << (8 * b);
    out[i] = static_cast<int64_t>(v);
  }
  return out;
}

std::string Text(sqlite3_stmt* st, int col) {
  const auto* p = reinterpret_cast<const char*>(sqlite3_column_text(st, col));
  return p == nullptr ? std::string() : std::string(p, sqlite3_column_bytes(st, col));
}

void BindText(sqlite3_stmt* st, int i, const std::string& s) {
  sqlite3_bind_text(st, i, s.data(), static_cast<int>(s.size()), SQLITE_STATIC);
}

int QueryText(sqlite3* db, const char* sql, std::string* out) {
  sqlite3_stmt* st = nullptr;
  int rc = sqlite3_prepare_v2(db, sql, -1, &st, nullptr);
  if (rc != SQLITE_OK) return rc;
  rc = sqlite3_step(st);
  if (rc == SQLITE_ROW) {
    *out = Text(st, 0);
    rc = SQLITE_OK;
  } else if (rc == SQLITE_DONE) {
    out->clear();
    rc = SQLITE_OK;
  }
  sqlite3_finalize(st);
  return rc;
}

bool FileExists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

int64_t FileBytes(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 ? static_cast<int64_t>(st.st_size) : 0;
}

int64_t QueryInt(sqlite3* db, const char* sql) {
  std::string out;
  if (QueryText(db, sql, &out) != SQLITE_OK || out.empty()) return 0;
  return std::strtoll(out.c_str(), nullptr, 10);
}

}  // namespace quotad::sqlite_internal
