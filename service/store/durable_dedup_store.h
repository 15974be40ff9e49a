#ifndef QUOTAD_SERVICE_STORE_DURABLE_DEDUP_STORE_H_
#define QUOTAD_SERVICE_STORE_DURABLE_DEDUP_STORE_H_

// The request_id answers in memory (Get never touches the disk) and written behind to durable
// storage through its DedupLog (the SQLite file's `dedup` table, by the journal's group commit),
// so that they survive a restart within the dedup window. A crash can lose the answers of the
// last few milliseconds (one commit interval): a retry of such a request is then served as new.

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "service/store/dedup_store.h"
#include "service/store/memory_dedup_store.h"

namespace quotad {

// Thread-safe (the memory is a MemoryDedupStore; the log is thread-safe). Does not own `log`,
// which must outlive *this.
class DurableDedupStore : public DedupStore {
 public:
  // Reads the answers still live at `now_ns` from `log`.
  static absl::StatusOr<std::unique_ptr<DurableDedupStore>> Open(DedupLog* log, int64_t now_ns);

  DurableDedupStore(const DurableDedupStore&) = delete;
  DurableDedupStore& operator=(const DurableDedupStore&) = delete;

  std::optional<std::string> Get(absl::string_view request_id, int64_t now_ns) const override;
  // Queues the answer on the log when it is the first (never waits for the disk).
  absl::StatusOr<std::string> Put(absl::string_view request_id, absl::string_view answer,
                                  int64_t expiry_ns, int64_t now_ns) override;
  int64_t Sweep(int64_t now_ns) override;
  int64_t size() const override;

 private:
  explicit DurableDedupStore(DedupLog* log) : log_(log) {}

  DedupLog* const log_;
  MemoryDedupStore memory_;
};

}  // namespace quotad

#endif  // QUOTAD_SERVICE_STORE_DURABLE_DEDUP_STORE_H_
