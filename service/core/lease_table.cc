#include "service/core/lease_table.h"

#include <cstddef>

namespace quotad {
namespace ledger_internal {

int64_t LeaseTable::DropExpired(int64_t now) {
  int64_t dropped = 0;
  for (LeaseShard& shard : shards_) {
    absl::MutexLock l(&shard.mu);
    const size_t erased = absl::erase_if(
        shard.leases, [now](const auto& entry) { return entry.second.expiry_ns <= now; });
    // Give the memory of a burst of leases back once it has passed.
    if (erased > 0 && shard.leases.size() * 4 < shard.leases.capacity()) shard.leases.rehash(0);
    dropped += static_cast<int64_t>(erased);
  }
  return dropped;
}

}  // namespace ledger_internal
}  // namespace quotad
