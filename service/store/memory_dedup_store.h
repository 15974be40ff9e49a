#ifndef QUOTAD_SERVICE_STORE_MEMORY_DEDUP_STORE_H_
#define QUOTAD_SERVICE_STORE_MEMORY_DEDUP_STORE_H_

// The request_id answers in memory only: sharded maps, so that concurrent Gets and Puts of
// different requests rarely meet on a lock. Nothing survives a restart. The memory-only store's
// DedupStore, and the memory of DurableDedupStore.

#include <cstdint>
#include <optional>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "service/store/dedup_store.h"

namespace quotad {

// Thread-safe: each shard's map under its own mutex, no lock held across shards.
class MemoryDedupStore : public DedupStore {
 public:
  MemoryDedupStore() = default;
  MemoryDedupStore(const MemoryDedupStore&) = delete;
  MemoryDedupStore& operator=(const MemoryDedupStore&) = delete;

  std::optional<std::string> Get(absl::string_view request_id, int64_t now_ns) const override;
  absl::StatusOr<std::string> Put(absl::string_view request_id, absl::string_view answer,
                                  int64_t expiry_ns, int64_t now_ns) override;
  int64_t Sweep(int64_t now_ns) override;
  int64_t size() const override;

  // Put, also telling whether `answer` was recorded (*recorded = true) or a live answer was
  // already there (false; the standing one is returned). *recorded is false on an error.
  absl::StatusOr<std::string> PutFirst(absl::string_view request_id, absl::string_view answer,
                                       int64_t expiry_ns, int64_t now_ns, bool* recorded);

  // Sets the answer for `answer.request_id`, replacing any (restoring from durable storage).
  void Restore(DedupAnswer answer);

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

  Shard& ShardFor(absl::string_view request_id) const;

  mutable Shard shards_[kShards];
};

}  // namespace quotad

#endif  // QUOTAD_SERVICE_STORE_MEMORY_DEDUP_STORE_H_
