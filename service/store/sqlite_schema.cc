#include "service/store/sqlite_schema.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"
#include "service/core/clock.h"
#include "service/store/sqlite_util.h"
#include "spdlog/spdlog.h"

namespace quotad::sqlite_internal {
namespace {


// 1: reservations, leases, dedup. 2: and lease_log. 3: and cooldowns. 4: and outside (what
// Report learns per limit). Older files are upgraded at Open.
constexpr int kSchemaVersion = 4;

constexpr const char* kOutsideSchema = R"sql(
CREATE TABLE outside (
  credential TEXT NOT NULL,
  limit_name TEXT NOT NULL,
  outside_milli INTEGER NOT NULL,
  at_ns INTEGER NOT NULL,
  cooldown_until_ns INTEGER NOT NULL,
  consecutive INTEGER NOT NULL,
  until_ns INTEGER NOT NULL,
  PRIMARY KEY (credential, limit_name)
) WITHOUT ROWID;
)sql";

constexpr const char* kCooldownSchema = R"sql(
CREATE TABLE cooldowns (
  credential TEXT NOT NULL,
  feature TEXT NOT NULL,
  until_ns INTEGER NOT NULL,
  PRIMARY KEY (credential, feature)
) WITHOUT ROWID;
)sql";

constexpr const char* kLeaseLogSchema = R"sql(
CREATE TABLE lease_log (
  seq INTEGER PRIMARY KEY,   -- order of the group commits
  until_ns INTEGER NOT NULL, -- the row no longer matters from then on
  min_expiry_ns INTEGER NOT NULL, -- from then on some of it is dead weight (0: releases only)
  records INTEGER NOT NULL,
  data BLOB NOT NULL         -- lease-log records, see EncodeLease / EncodeRelease
);
)sql";

// Version 1; the tables added since are created after it (kLeaseLogSchema, ...).
constexpr const char* kSchema = R"sql(
CREATE TABLE schema_version (version INTEGER NOT NULL);
CREATE TABLE reservations (
  credential TEXT NOT NULL,
  limit_name TEXT NOT NULL,
  scope TEXT NOT NULL,
  window_start_ns INTEGER NOT NULL,
  until_ns INTEGER NOT NULL,
  units INTEGER NOT NULL,
  PRIMARY KEY (credential, limit_name, scope, window_start_ns)
) WITHOUT ROWID;
CREATE TABLE leases (
  id TEXT NOT NULL PRIMARY KEY,
  credential TEXT NOT NULL,
  feature TEXT NOT NULL,
  scope TEXT NOT NULL,
  holder TEXT NOT NULL,
  cost INTEGER NOT NULL,
  granted_ns INTEGER NOT NULL,
  expiry_ns INTEGER NOT NULL,
  holds_slots INTEGER NOT NULL,
  tokens BLOB NOT NULL  -- int64 little-endian, one per limit of the feature
) WITHOUT ROWID;
CREATE TABLE dedup (
  request_id TEXT NOT NULL PRIMARY KEY,
  answer BLOB NOT NULL,
  expiry_ns INTEGER NOT NULL
) WITHOUT ROWID;
)sql";

}  // namespace

absl::StatusOr<sqlite3*> OpenChecked(const std::string& path, const SqliteOptions& options,
                                     bool* bad_file) {
  *bad_file = false;
  // A new file (none, or empty) is created auto_vacuum=INCREMENTAL: the pragma has to come
  // before anything writes its first page.
  const bool fresh = !options.read_only && FileBytes(path) == 0;
  sqlite3* db = nullptr;
  const int flags = SQLITE_OPEN_NOMUTEX |
                    (options.read_only ? SQLITE_OPEN_READONLY
                                       : SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE);
  int rc = sqlite3_open_v2(path.c_str(), &db, flags, nullptr);
  auto fail = [&](int code, absl::string_view what) {
    absl::Status s = DbError(path, db, code, what);
    sqlite3_close_v2(db);
    return s;
  };
  if (rc != SQLITE_OK) return fail(rc, "cannot open");
  sqlite3_extended_result_codes(db, 1);
  sqlite3_busy_timeout(db, static_cast<int>(absl::ToInt64Milliseconds(options.busy_timeout)));
  if (!options.read_only && sqlite3_db_readonly(db, "main") == 1) {
    sqlite3_close_v2(db);
    return absl::PermissionDeniedError(
        absl::StrCat("sqlite state file ", path, ": the file or its directory is read-only"));
  }

  if (fresh) {
    rc = sqlite3_exec(db, "PRAGMA auto_vacuum=INCREMENTAL", nullptr, nullptr, nullptr);
    if (rc != SQLITE_OK) return fail(rc, "cannot set auto_vacuum");
  }

  std::string result;
  rc = QueryText(db, "PRAGMA quick_check", &result);
  if (rc != SQLITE_OK) {
    *bad_file = (rc & 0xff) == SQLITE_NOTADB || (rc & 0xff) == SQLITE_CORRUPT;
    return fail(rc, *bad_file ? "corrupt or not a SQLite database" : "cannot read");
  }
  if (result != "ok") {
    *bad_file = true;
    sqlite3_close_v2(db);
    return absl::DataLossError(
        absl::StrCat("sqlite state file ", path, ": PRAGMA quick_check failed: ", result));
  }

  if (!options.read_only) {
    rc = QueryText(db, "PRAGMA journal_mode=WAL", &result);
    if (rc != SQLITE_OK) return fail(rc, "cannot switch to WAL mode");
    if (result != "wal") {
      sqlite3_close_v2(db);
      return absl::FailedPreconditionError(absl::StrCat(
          "sqlite state file ", path, ": journal_mode is '", result, "', WAL is required"));
    }
    const std::string sync = options.synchronous_full ? "PRAGMA synchronous=FULL"
                                                      : "PRAGMA synchronous=NORMAL";
    rc = sqlite3_exec(db, sync.c_str(), nullptr, nullptr, nullptr);
    if (rc != SQLITE_OK) return fail(rc, "cannot set synchronous");
    // Checkpoints run on the writer thread's own connection (see WriterLoop), never inside a
    // commit on the Acquire path.
    rc = sqlite3_exec(db, "PRAGMA wal_autocheckpoint=0", nullptr, nullptr, nullptr);
    if (rc != SQLITE_OK) return fail(rc, "cannot set wal_autocheckpoint");
    // Should the log restart rather than be truncated by a checkpoint, the WAL file is cut
    // back to this size at its next commit.
    rc = QueryText(db,
                   absl::StrCat("PRAGMA journal_size_limit=", options.journal_size_limit).c_str(),
                   &result);
    if (rc != SQLITE_OK) return fail(rc, "cannot set journal_size_limit");
    // A page cache large enough for the hot leases, and reads through mmap instead of pread.
    rc = sqlite3_exec(db, "PRAGMA cache_size=-65536; PRAGMA mmap_size=268435456", nullptr,
                      nullptr, nullptr);
    if (rc != SQLITE_OK) return fail(rc, "cannot set the cache size");
    if (options.max_pages > 0) {
      rc = QueryText(db, absl::StrCat("PRAGMA max_page_count=", options.max_pages).c_str(),
                     &result);
      if (rc != SQLITE_OK) return fail(rc, "cannot set max_page_count");
    }
  }

  // Which tables are there: none (new file), ours, or somebody else's.
  std::vector<std::string> tables;
  {
    sqlite3_stmt* st = nullptr;
    rc = sqlite3_prepare_v2(db, "SELECT name FROM sqlite_master WHERE type='table' ORDER BY name",
                            -1, &st, nullptr);
    if (rc != SQLITE_OK) return fail(rc, "cannot read the schema");
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) tables.push_back(Text(st, 0));
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE) return fail(rc, "cannot read the schema");
  }
  if (tables.empty()) {
    const std::string create =
        absl::StrCat("BEGIN IMMEDIATE;", kSchema, kLeaseLogSchema, kCooldownSchema,
                     kOutsideSchema, "INSERT INTO schema_version VALUES (", kSchemaVersion,
                     "); COMMIT;");
    rc = sqlite3_exec(db, create.c_str(), nullptr, nullptr, nullptr);
    if (rc != SQLITE_OK) {
      absl::Status s = DbError(path, db, rc, "cannot create the schema");
      sqlite3_exec(db, "ROLLBACK", nullptr, nullptr, nullptr);
      sqlite3_close_v2(db);
      return s;
    }
    return db;
  }
  if (std::find(tables.begin(), tables.end(), "schema_version") == tables.end()) {
    *bad_file = true;
    sqlite3_close_v2(db);
    return absl::FailedPreconditionError(
        absl::StrCat("sqlite state file ", path, ": not a quotad state file (tables: ",
                     absl::StrJoin(tables, ", "), ")"));
  }
  rc = QueryText(db, "SELECT version FROM schema_version", &result);
  if (rc != SQLITE_OK) return fail(rc, "cannot read the schema version");
  if ((result == "1" || result == "2" || result == "3") && !options.read_only) {
    // Version 1 kept every lease as a row of `leases`; they stay there, new refund-only leases
    // go to lease_log. Versions 1 and 2 had no cooldowns, versions 1 to 3 no outside table.
    const std::string upgrade = absl::StrCat(
        "BEGIN IMMEDIATE;", result == "1" ? kLeaseLogSchema : "",
        result == "3" ? "" : kCooldownSchema, kOutsideSchema,
        "UPDATE schema_version SET version = ", kSchemaVersion, "; COMMIT;");
    rc = sqlite3_exec(db, upgrade.c_str(), nullptr, nullptr, nullptr);
    if (rc != SQLITE_OK) {
      absl::Status s =
          DbError(path, db, rc, absl::StrCat("cannot upgrade the schema from version ", result));
      sqlite3_exec(db, "ROLLBACK", nullptr, nullptr, nullptr);
      sqlite3_close_v2(db);
      return s;
    }
    spdlog::info("component=store event=schema_upgraded path={} from={} to={}", path, result,
                 kSchemaVersion);
    return db;
  }
  if (result != std::to_string(kSchemaVersion)) {
    *bad_file = true;
    sqlite3_close_v2(db);
    return absl::FailedPreconditionError(
        absl::StrCat("sqlite state file ", path, ": schema version '", result,
                     "', this build reads version ", kSchemaVersion));
  }
  return db;
}

absl::Status MoveAside(const std::string& path) {
  const std::string stamp =
      absl::FormatTime("%Y%m%dT%H%M%SZ", Clock::Real()->Now(), absl::UTCTimeZone());
  std::string target = absl::StrCat(path, ".corrupt-", stamp);
  for (int i = 1; FileExists(target); ++i) target = absl::StrCat(path, ".corrupt-", stamp, "-", i);
  if (::rename(path.c_str(), target.c_str()) != 0) {
    return absl::UnavailableError(absl::StrCat("sqlite state file ", path, ": cannot move it to ",
                                               target, ": ", std::strerror(errno)));
  }
  // The WAL belongs to the bad file; a new file must not replay it.
  const std::string wal = path + "-wal";
  if (FileExists(wal)) ::rename(wal.c_str(), (target + "-wal").c_str());
  ::unlink((path + "-shm").c_str());
  spdlog::warn("component=store event=reset_corrupt path={} moved_to={}", path, target);
  return absl::OkStatus();
}

}  // namespace quotad::sqlite_internal
