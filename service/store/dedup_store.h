#ifndef QUOTAD_SERVICE_STORE_DEDUP_STORE_H_
#define QUOTAD_SERVICE_STORE_DEDUP_STORE_H_

// Idempotent requests: the first answer given to a request_id, kept until it expires, so that a
// retried Acquire or Release gets that answer again and charges nothing twice, also after a
// restart within the dedup window (when the store is durable).
//
// The caller chooses the key (e.g. "acquire/<credential>/<request_id>") and the bytes (e.g. a
// serialized response). Usage by the server: Get(); on a miss, decide, then Put() the answer and
// send what Put() returns. When two copies of a request race, Put() returns the first answer to
// both; the loser should undo its own grant (Release without refund) and answer with the first.
//
// Implementations (OpenStore picks one): MemoryDedupStore (memory-only mode) and
// DurableDedupStore (answers in memory, written behind to a DedupLog such as the SQLite file).

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace quotad {

// The request_id answers. Implementations are thread-safe.
class DedupStore {
 public:
  virtual ~DedupStore() = default;

  // The answer first recorded for `request_id`, or nullopt when none is live at `now_ns`.
  virtual std::optional<std::string> Get(absl::string_view request_id, int64_t now_ns) const = 0;

  // Records `answer` for `request_id` until `expiry_ns`, unless a live answer is already there.
  // Returns the answer that stands (the first). kInvalidArgument for an empty request_id or an
  // expiry not after now_ns.
  virtual absl::StatusOr<std::string> Put(absl::string_view request_id, absl::string_view answer,
                                          int64_t expiry_ns, int64_t now_ns) = 0;

  // Forgets answers expired at `now_ns` from memory (durable storage drops them at its own
  // compaction). Returns how many.
  virtual int64_t Sweep(int64_t now_ns) = 0;

  // Answers held in memory.
  virtual int64_t size() const = 0;
};

// One answer as durable storage keeps it.
struct DedupAnswer {
  std::string request_id;
  std::string answer;
  int64_t expiry_ns = 0;
};

// What a DurableDedupStore needs of durable storage: the answers still live at start-up, and a
// deferred write of each new one. The storage drops expired answers when it compacts
// (SqliteJournal::Compact). Implementations are thread-safe.
class DedupLog {
 public:
  virtual ~DedupLog() = default;

  // The answers whose expiry is after `now_ns`, including every answer queued before the call.
  virtual absl::StatusOr<std::vector<DedupAnswer>> LoadAnswers(int64_t now_ns) = 0;

  // Writes `answer` later (group commit): a crash can lose the answers of the last moments, and
  // a retry of such a request is then served as new. A failed write is reported by the
  // storage (e.g. SqliteJournal::Flush), not here.
  virtual void QueueAnswer(DedupAnswer answer) = 0;
};

}  // namespace quotad

#endif  // QUOTAD_SERVICE_STORE_DEDUP_STORE_H_
