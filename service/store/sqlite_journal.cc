#include "service/store/sqlite_journal.h"

#include <sqlite3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "service/core/clock.h"
#include "service/core/status_macros.h"
#include "spdlog/spdlog.h"

namespace quotad {
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
CREATE TABLE lease_log (
  seq INTEGER PRIMARY KEY,
  until_ns INTEGER NOT NULL,
  min_expiry_ns INTEGER NOT NULL,
  records INTEGER NOT NULL,
  data BLOB NOT NULL
);
CREATE TABLE dedup (
  request_id TEXT NOT NULL PRIMARY KEY,
  answer BLOB NOT NULL,
  expiry_ns INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE cooldowns (
  credential TEXT NOT NULL,
  feature TEXT NOT NULL,
  until_ns INTEGER NOT NULL,
  PRIMARY KEY (credential, feature)
) WITHOUT ROWID;
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

// Lease-log records, concatenated in a lease_log row: a lease or a release. The tag says which,
// and whether the id is the ledger's 32 lowercase hex digits (stored as 16 bytes) or any text.
//   lease:   id, str credential, str feature, str scope, str holder, zvarint cost,
//            i64 granted_ns, zvarint (expiry_ns - granted_ns), u8 holds_slots, varint n,
//            n tokens: zvarint (granted_ns - token) (tokens are times near the grant)
//   release: id
// str is a varint length and the bytes; i64 is 8 bytes little-endian; zvarint is a zigzag
// varint (a wrapping difference, so any int64 round-trips).
constexpr char kLeaseTag = 'L';      // id as text
constexpr char kLeaseHexTag = 'H';   // id as 16 bytes
constexpr char kReleaseTag = 'D';    // id as text
constexpr char kReleaseHexTag = 'E';  // id as 16 bytes

void PutVarint(std::string* out, uint64_t v) {
  char b[10];
  int n = 0;
  while (v >= 0x80) {
    b[n++] = static_cast<char>(v | 0x80);
    v >>= 7;
  }
  b[n++] = static_cast<char>(v);
  out->append(b, n);
}

uint64_t Zig(uint64_t v) { return (v << 1) ^ (0 - (v >> 63)); }
uint64_t Unzig(uint64_t v) { return (v >> 1) ^ (0 - (v & 1)); }
// a - b, wrapping.
uint64_t Diff(int64_t a, int64_t b) { return static_cast<uint64_t>(a) - static_cast<uint64_t>(b); }

void PutI64(std::string* out, int64_t v) {
  char b[8];
  const uint64_t u = static_cast<uint64_t>(v);
  for (int i = 0; i < 8; ++i) b[i] = static_cast<char>((u >> (8 * i)) & 0xff);
  out->append(b, 8);
}

void PutStr(std::string* out, const std::string& s) {
  PutVarint(out, s.size());
  out->append(s);
}

int HexDigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

// The id as 16 bytes when it is 32 lowercase hex digits (LeaseId::ToString), else as text.
void PutId(std::string* out, const std::string& id, char hex_tag, char text_tag) {
  if (id.size() == 32) {
    char b[17];
    b[0] = hex_tag;
    bool hex = true;
    for (int i = 0; i < 16 && hex; ++i) {
      const int h = HexDigit(id[2 * i]);
      const int l = HexDigit(id[2 * i + 1]);
      hex = h >= 0 && l >= 0;
      b[1 + i] = static_cast<char>(h * 16 + l);
    }
    if (hex) {
      out->append(b, 17);
      return;
    }
  }
  out->push_back(text_tag);
  PutStr(out, id);
}

void EncodeLease(const JournalLease& l, std::string* out) {
  PutId(out, l.id, kLeaseHexTag, kLeaseTag);
  PutStr(out, l.credential);
  PutStr(out, l.feature);
  PutStr(out, l.scope);
  PutStr(out, l.holder);
  PutVarint(out, Zig(static_cast<uint64_t>(l.cost)));
  PutI64(out, l.granted_ns);
  PutVarint(out, Zig(Diff(l.expiry_ns, l.granted_ns)));
  out->push_back(l.holds_slots ? 1 : 0);
  PutVarint(out, l.tokens.size());
  for (int64_t t : l.tokens) PutVarint(out, Zig(Diff(l.granted_ns, t)));
}

void EncodeRelease(const std::string& id, std::string* out) {
  PutId(out, id, kReleaseHexTag, kReleaseTag);
}

class LogReader {
 public:
  LogReader(const void* data, int bytes)
      : p_(static_cast<const unsigned char*>(data)), end_(p_ + (data == nullptr ? 0 : bytes)) {}
  bool done() const { return p_ == end_; }
  bool ok() const { return ok_; }
  char Tag() { return ok_ && p_ < end_ ? static_cast<char>(*p_++) : Fail(); }
  uint64_t Varint() {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (p_ >= end_) return Fail();
      const unsigned char b = *p_++;
      v |= static_cast<uint64_t>(b & 0x7f) << shift;
      if ((b & 0x80) == 0) return v;
    }
    return Fail();
  }
  int64_t I64() {
    if (end_ - p_ < 8) return Fail();
    uint64_t v = 0;
    for (int b = 0; b < 8; ++b) v |= static_cast<uint64_t>(p_[b]) << (8 * b);
    p_ += 8;
    return static_cast<int64_t>(v);
  }
  void Str(std::string* out) {
    const uint64_t n = Varint();
    if (!ok_ || static_cast<uint64_t>(end_ - p_) < n) {
      Fail();
      return;
    }
    out->assign(reinterpret_cast<const char*>(p_), n);
    p_ += n;
  }
  // The id after a tag: 16 bytes, or text.
  void Id(bool hex, std::string* out) {
    if (!hex) {
      Str(out);
      return;
    }
    if (end_ - p_ < 16) {
      Fail();
      return;
    }
    static constexpr char kDigits[] = "0123456789abcdef";
    out->resize(32);
    for (int i = 0; i < 16; ++i) {
      (*out)[2 * i] = kDigits[p_[i] >> 4];
      (*out)[2 * i + 1] = kDigits[p_[i] & 0xf];
    }
    p_ += 16;
  }
  bool Lease(bool hex_id, JournalLease* l) {
    Id(hex_id, &l->id);
    Str(&l->credential);
    Str(&l->feature);
    Str(&l->scope);
    Str(&l->holder);
    l->cost = static_cast<int64_t>(Unzig(Varint()));
    l->granted_ns = I64();
    l->expiry_ns =
        static_cast<int64_t>(static_cast<uint64_t>(l->granted_ns) + Unzig(Varint()));
    l->holds_slots = ok_ && p_ < end_ && *p_++ != 0;
    const uint64_t n = Varint();
    if (!ok_ || n > static_cast<uint64_t>(end_ - p_)) return Fail() != 0;
    l->tokens.resize(n);
    for (uint64_t i = 0; i < n; ++i) {
      l->tokens[i] =
          static_cast<int64_t>(static_cast<uint64_t>(l->granted_ns) - Unzig(Varint()));
    }
    return ok_;
  }

 private:
  char Fail() {
    ok_ = false;
    p_ = end_;
    return 0;
  }
  const unsigned char* p_;
  const unsigned char* end_;
  bool ok_ = true;
};

std::string Text(sqlite3_stmt* st, int col) {
  const auto* p = reinterpret_cast<const char*>(sqlite3_column_text(st, col));
  return p == nullptr ? std::string() : std::string(p, sqlite3_column_bytes(st, col));
}

void BindText(sqlite3_stmt* st, int i, const std::string& s) {
  sqlite3_bind_text(st, i, s.data(), static_cast<int>(s.size()), SQLITE_STATIC);
}

// Runs one statement and returns the first column of its first row ("" when none).
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

// The first column of the first row as a number (0 when none or on error).
int64_t QueryInt(sqlite3* db, const char* sql) {
  std::string out;
  if (QueryText(db, sql, &out) != SQLITE_OK || out.empty()) return 0;
  return std::strtoll(out.c_str(), nullptr, 10);
}

// Opens the file and checks it is ours and sound. `*bad_file` is set when the file itself is
// corrupt or foreign (what reset_corrupt may move aside), as opposed to unreachable.
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
        absl::StrCat("BEGIN IMMEDIATE;", kSchema, "INSERT INTO schema_version VALUES (",
                     kSchemaVersion, "); COMMIT;");
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

}  // namespace

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

template <typename F>
absl::Status SqliteJournal::TransactionLocked(const char* what, F body) {
  int rc = sqlite3_exec(db_, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr);
  if (rc != SQLITE_OK) return DbError(path_, db_, rc, what);
  absl::Status s = body();
  if (s.ok()) {
    rc = sqlite3_exec(db_, "COMMIT", nullptr, nullptr, nullptr);
    if (rc == SQLITE_OK) return absl::OkStatus();
    s = DbError(path_, db_, rc, what);
  }
  sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
  return s;
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
  const auto& row = std::get<DedupRow>(op);
  BindText(put_dedup_, 1, row.request_id);
  sqlite3_bind_blob(put_dedup_, 2, row.answer.data(), static_cast<int>(row.answer.size()),
                    SQLITE_STATIC);
  sqlite3_bind_int64(put_dedup_, 3, row.expiry_ns);
  return StepLocked(put_dedup_, "cannot write an idempotency answer");
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
    absl::MutexLock l(&db_mu_);
    absl::Status s = TransactionLocked("cannot write queued records", [&]() -> absl::Status {
      if (chunk != nullptr) QUOTAD_RETURN_IF_ERROR(WriteLogRowLocked(*chunk));
      for (size_t i = o; i < o_end; ++i) QUOTAD_RETURN_IF_ERROR(ApplyLocked(ops[i]));
      return absl::OkStatus();
    });
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

void SqliteJournal::AwaitRoomLocked() {
  if (queued_ >= options_.max_queued) {
    queue_mu_.Await(absl::Condition(
        +[](SqliteJournal* j) ABSL_NO_THREAD_SAFETY_ANALYSIS {
          return j->queued_ < j->options_.max_queued || j->stopping_;
        },
        this));
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
        absl::Status s = TransactionLocked("cannot trim the lease log",
                                           [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(db_mu_) {
                                             return CompactLogLocked(now_ns);
                                           });
        if (!s.ok()) {
          spdlog::warn("component=store event=log_trim_failed path={} error=\"{}\"", path_,
                       std::string(s.message()));
        }
        trimmed = stats_.log_rows_trimmed + stats_.log_rewrites > before;
      }
    }
    if (trimmed) VacuumFree().IgnoreError();  // logged
    CheckpointLocked().IgnoreError();              // logged, retried at the next one
  }
}

int64_t SqliteJournal::LogNowLocked() const {
  if (compact_now_ns_ == 0 || trim_now_ns_ == 0) return 0;
  const int64_t since_compact = std::chrono::duration_cast<std::chrono::nanoseconds>(
                                    std::chrono::steady_clock::now() - compact_at_)
                                    .count();
  return std::min(compact_now_ns_ + since_compact, trim_now_ns_);
}

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
  QUOTAD_RETURN_IF_ERROR(FoldLogLocked(&state.leases, &rows));

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

absl::Status SqliteJournal::PutOutside(const JournalOutside& o) {
  absl::MutexLock l(&db_mu_);
  return TransactionLocked("cannot write an outside estimate", [&]() -> absl::Status {
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
  });
}

absl::Status SqliteJournal::PutCooldown(const JournalCooldown& cooldown) {
  absl::MutexLock l(&db_mu_);
  return TransactionLocked("cannot write a cooldown", [&]() -> absl::Status {
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
  });
}

absl::Status SqliteJournal::Reserve(const std::vector<Reservation>& reservations) {
  absl::MutexLock l(&db_mu_);
  return TransactionLocked("cannot write reservations", [&]() -> absl::Status {
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
  });
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
  absl::Status s;
  {
    absl::MutexLock l(&db_mu_);
    s = TransactionLocked("cannot write a lease", [&] { return WriteLeaseLocked(lease); });
  }
  if (s.ok()) {
    absl::MutexLock q(&queue_mu_);
    lease_rows_.insert(lease.id);
  }
  return s;
}

absl::Status SqliteJournal::RenewLease(const std::string& id, int64_t expiry_ns) {
  absl::MutexLock l(&db_mu_);
  return TransactionLocked("cannot renew a lease", [&]() -> absl::Status {
    BindText(renew_lease_, 1, id);
    sqlite3_bind_int64(renew_lease_, 2, expiry_ns);
    return StepLocked(renew_lease_, "cannot renew a lease");
  });
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
  auto write = [&]() -> absl::Status {
    if (chunk.records == 0) return absl::OkStatus();
    QUOTAD_RETURN_IF_ERROR(WriteLogRowLocked(chunk));
    chunk = Chunk();
    return absl::OkStatus();
  };
  for (const JournalLease& lease : leases) {
    if (lease.expiry_ns <= now_ns) continue;
    EncodeLease(lease, &chunk.data);
    ++chunk.records;
    chunk.max_expiry_ns = std::max(chunk.max_expiry_ns, lease.expiry_ns);
    chunk.min_expiry_ns = std::min(chunk.min_expiry_ns, lease.expiry_ns);
    if (chunk.data.size() >= kChunkBytes) QUOTAD_RETURN_IF_ERROR(write());
  }
  QUOTAD_RETURN_IF_ERROR(write());
  ++stats_.log_rewrites;
  return absl::OkStatus();
}

absl::Status SqliteJournal::Compact(int64_t now_ns) {
  absl::MutexLock w(&write_mu_);
  WriteQueued().IgnoreError();
  absl::ReleasableMutexLock l(&db_mu_);
  std::vector<std::string> ended;  // rows of `leases` that Compact deletes
  absl::Status s = TransactionLocked("cannot compact", [&]() -> absl::Status {
    {
      sqlite3_stmt* st = nullptr;
      if (sqlite3_prepare_v2(db_, "SELECT id FROM leases WHERE expiry_ns <= ?1", -1, &st,
                             nullptr) != SQLITE_OK) {
        return Error("cannot compact");
      }
      sqlite3_bind_int64(st, 1, now_ns);
      int rc;
      while ((rc = sqlite3_step(st)) == SQLITE_ROW) ended.push_back(Text(st, 0));
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
  });
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

absl::StatusOr<std::vector<SqliteJournal::DedupRow>> SqliteJournal::LoadDedup(int64_t now_ns) {
  absl::MutexLock w(&write_mu_);
  WriteQueued().IgnoreError();
  absl::MutexLock l(&db_mu_);
  std::vector<DedupRow> rows;
  sqlite3_stmt* st = nullptr;
  if (sqlite3_prepare_v2(db_, "SELECT request_id, answer, expiry_ns FROM dedup WHERE expiry_ns > ?1",
                         -1, &st, nullptr) != SQLITE_OK) {
    return Error("cannot read idempotency answers");
  }
  sqlite3_bind_int64(st, 1, now_ns);
  int rc;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    DedupRow& row = rows.emplace_back();
    row.request_id = Text(st, 0);
    const auto* blob = static_cast<const char*>(sqlite3_column_blob(st, 1));
    row.answer.assign(blob == nullptr ? "" : blob, sqlite3_column_bytes(st, 1));
    row.expiry_ns = sqlite3_column_int64(st, 2);
  }
  sqlite3_finalize(st);
  if (rc != SQLITE_DONE) return Error("cannot read idempotency answers");
  return rows;
}

void SqliteJournal::QueueDedup(std::string request_id, std::string answer, int64_t expiry_ns) {
  Enqueue(DedupRow{std::move(request_id), std::move(answer), expiry_ns});
}

}  // namespace quotad
