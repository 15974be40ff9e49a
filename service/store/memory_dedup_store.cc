#include "service/store/memory_dedup_store.h"

#include <utility>

#include "absl/hash/hash.h"
#include "absl/strings/str_cat.h"

namespace quotad {

MemoryDedupStore::Shard& MemoryDedupStore::ShardFor(absl::string_view request_id) const {
  return shards_[absl::Hash<absl::string_view>()(request_id) % kShards];
}

std::optional<std::string> MemoryDedupStore::Get(absl::string_view request_id,
                                                 int64_t now_ns) const {
  Shard& shard = ShardFor(request_id);
  absl::MutexLock l(&shard.mu);
  auto it = shard.entries.find(request_id);
  if (it == shard.entries.end() || it->second.expiry_ns <= now_ns) return std::nullopt;
  return it->second.answer;
}

absl::StatusOr<std::string> MemoryDedupStore::Put(absl::string_view request_id,
                                                  absl::string_view answer, int64_t expiry_ns,
                                                  int64_t now_ns) {
  bool recorded = false;
  return PutFirst(request_id, answer, expiry_ns, now_ns, &recorded);
}

absl::StatusOr<std::string> MemoryDedupStore::PutFirst(absl::string_view request_id,
                                                       absl::string_view answer, int64_t expiry_ns,
                                                       int64_t now_ns, bool* recorded) {
  *recorded = false;
  if (request_id.empty()) return absl::InvalidArgumentError("request_id is empty");
  if (expiry_ns <= now_ns) {
    return absl::InvalidArgumentError(
        absl::StrCat("expiry ", expiry_ns, " is not after now ", now_ns));
  }
  Shard& shard = ShardFor(request_id);
  absl::MutexLock l(&shard.mu);
  auto [it, inserted] = shard.entries.try_emplace(request_id);
  if (!inserted && it->second.expiry_ns > now_ns) return it->second.answer;
  it->second = Entry{std::string(answer), expiry_ns};
  *recorded = true;
  return std::string(answer);
}

void MemoryDedupStore::Restore(DedupAnswer answer) {
  Shard& shard = ShardFor(answer.request_id);
  absl::MutexLock l(&shard.mu);
  shard.entries.insert_or_assign(std::move(answer.request_id),
                                 Entry{std::move(answer.answer), answer.expiry_ns});
}

int64_t MemoryDedupStore::Sweep(int64_t now_ns) {
  int64_t dropped = 0;
  for (Shard& shard : shards_) {
    absl::MutexLock l(&shard.mu);
    dropped += absl::erase_if(shard.entries,
                              [now_ns](const auto& e) { return e.second.expiry_ns <= now_ns; });
  }
  return dropped;
}

int64_t MemoryDedupStore::size() const {
  int64_t n = 0;
  for (const Shard& shard : shards_) {
    absl::MutexLock l(&shard.mu);
    n += static_cast<int64_t>(shard.entries.size());
  }
  return n;
}

}  // namespace quotad
