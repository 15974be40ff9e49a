#ifndef QUOTAD_SERVICE_STORE_SQLITE_SCHEMA_H_
#define QUOTAD_SERVICE_STORE_SQLITE_SCHEMA_H_

// Opening the SQLite state file: the pragmas (WAL, synchronous, no auto-checkpoint, cache),
// the schema of a new file, the upgrade of an older one, and the start-up checks that refuse a
// corrupt or foreign file (see "Start-up safety" in sqlite_journal.h). Internal to service/store.
//
// Thread-safety: runs before the journal exists, on a connection nobody else holds.

#include <sqlite3.h>

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "service/store/sqlite_journal.h"

namespace quotad::sqlite_internal {

// Opens the file at `path`, checks it is ours and sound, creates or upgrades the schema.
// `*bad_file` is set when the file itself is corrupt or foreign (what reset_corrupt may move
// aside), as opposed to unreachable. The caller owns the returned connection.
absl::StatusOr<sqlite3*> OpenChecked(const std::string& path, const SqliteOptions& options,
                                     bool* bad_file);

// Moves the file at `path` (and its -wal) to `<path>.corrupt-<UTC timestamp>`.
absl::Status MoveAside(const std::string& path);

}  // namespace quotad::sqlite_internal

#endif  // QUOTAD_SERVICE_STORE_SQLITE_SCHEMA_H_
