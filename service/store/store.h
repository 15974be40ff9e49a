#ifndef QUOTAD_SERVICE_STORE_STORE_H_
#define QUOTAD_SERVICE_STORE_STORE_H_

// The store behind its interfaces: what the server opens and holds. The server names no
// implementation type; OpenStore picks one from the options: a SQLite file (SqliteJournal and a
// DurableDedupStore over it) or memory only (no journal, a MemoryDedupStore). Redis joins here.

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "service/core/journal.h"
#include "service/store/dedup_store.h"

namespace quotad {

struct StoreOptions {
  // The SQLite state file. Empty: memory only (nothing survives a restart; journal() is null).
  std::string path;
  // fsync every commit (survives power loss). Off: survives kill -9 of the process only.
  bool synchronous_full = false;
  // Move a corrupt or foreign state file aside and start empty instead of failing.
  bool reset_corrupt = false;
};

// Sizes on disk, for metrics (zero for a store without files).
struct StoreFiles {
  int64_t file_bytes = 0;
  int64_t wal_bytes = 0;
};

// An opened store: the ledger's journal and the request_id answers. Thread-safe. Owns both.
class Store {
 public:
  virtual ~Store() = default;
  // The ledger's journal; null when memory only.
  virtual Journal* journal() = 0;
  virtual DedupStore& dedup() = 0;
  // Where the state lives, for logs and errors: the file's path, or "memory-only".
  virtual std::string description() const = 0;
  // Writes what is queued now (at shutdown). Returns the first error of a queued write.
  virtual absl::Status Flush() = 0;
  virtual StoreFiles Files() const = 0;
};

// Opens the store `options` name and reads the request_id answers still live at `now_ns`.
// Errors name the path and the problem (kDataLoss, kFailedPrecondition, ...).
absl::StatusOr<std::unique_ptr<Store>> OpenStore(const StoreOptions& options, int64_t now_ns);

}  // namespace quotad

#endif  // QUOTAD_SERVICE_STORE_STORE_H_
