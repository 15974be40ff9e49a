#ifndef QUOTAD_SERVICE_STORE_DEDUP_STORE_H_
#define QUOTAD_SERVICE_STORE_DEDUP_STORE_H_

// Idempotent requests: the first answer given to a request_id, kept until it expires, so that a
// retried Acquire or Release gets that answer again and charges nothing twice, also after a
// restart within the dedup window.
//
// Design: answers live in memory (sharded maps; Get never touches the disk) and, when a
// SqliteJournal is given, in its `dedup` table of the same file, written asynchronously by the
// journal's group commit. A crash can lose the answers of the last few milliseconds (one
// commit interval): a retry of such a request is then served as new. The caller chooses the key
// (e.g. "acquire/<credential>/<request_id>") and the bytes (e.g. a serialized response).
//
// Usage by the server: Get(); on a miss, decide, then Put() the answer and send what Put()
// returns. When two copies of a request race, Put() returns the first answer to both; the
// loser should undo its own grant (Release without refund) and answer with the first.

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"

namespace quotad {

class SqliteJournal;

// Thread-safe. Does not own `journal`, which (when not null) must outlive *this.
class DedupStore {
 public:
  // Reads the answers still live at `now_ns` from the journal's file. A null journal keeps
  // answers in memory only (memory-only mode).
  static absl::StatusOr<std::unique_ptr<DedupStore>> Open(SqliteJournal* journal,
                                                          int64_t now_ns);

  DedupStore(const DedupStore&) = delete;
  DedupStore& operator=(const DedupStore&) = delete;

  // The answer first recorded for `request_id`, or nullopt when none is live at `now_ns`.
  std::optional<std::string> Get(absl::string_view request_id, int64_t now_ns) const;

  // Records `answer` for `request_id` until `expiry_ns`, unless a live answer is already there.
  // Returns the answer that stands (the first). kInvalidArgument for an empty request_id or an
  // expiry not after now_ns.
  absl::StatusOr<std::string> Put(absl::string_view request_id, absl::string_view answer,
                                  int64_t expiry_ns, int64_t now_ns);

  // Forgets answers expired at `now_ns` from memory (the journal's Compact drops them from the
  // file). Returns how many.
  int64_t Sweep(int64_t now_ns);

  int64_t size() const;

 private:
  static constexpr int kShards = 16;
  struct Entry {
    std::string answer;
    int64_t expiry_ns = 0;
  };
  struct Shard {
    mutable absl::Mutex mu;
    absl::flat_hash_map<std::string, Entry> entries ABSL_GUARDED_BY(mu);
  };

  explicit DedupStore(SqliteJournal* journal) : journal_(journal) {}
  Shard& ShardFor(absl::string_view request_id) const;

  SqliteJournal* const journal_;
  mutable Shard shards_[kShards];
};

}  // namespace quotad

#endif  // QUOTAD_SERVICE_STORE_DEDUP_STORE_H_
