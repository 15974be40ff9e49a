#include "service/store/durable_dedup_store.h"

#include <utility>
#include <vector>

namespace quotad {

absl::StatusOr<std::unique_ptr<DurableDedupStore>> DurableDedupStore::Open(DedupLog* log,
                                                                           int64_t now_ns) {
  std::unique_ptr<DurableDedupStore> store(new DurableDedupStore(log));
  absl::StatusOr<std::vector<DedupAnswer>> answers = log->LoadAnswers(now_ns);
  if (!answers.ok()) return answers.status();
  for (DedupAnswer& answer : *answers) store->memory_.Restore(std::move(answer));
  return store;
}

std::optional<std::string> DurableDedupStore::Get(absl::string_view request_id,
                                                  int64_t now_ns) const {
  return memory_.Get(request_id, now_ns);
}

absl::StatusOr<std::string> DurableDedupStore::Put(absl::string_view request_id,
                                                   absl::string_view answer, int64_t expiry_ns,
                                                   int64_t now_ns) {
  bool recorded = false;
  absl::StatusOr<std::string> standing =
      memory_.PutFirst(request_id, answer, expiry_ns, now_ns, &recorded);
  if (recorded) {
    log_->QueueAnswer(DedupAnswer{std::string(request_id), std::string(answer), expiry_ns});
  }
  return standing;
}

int64_t DurableDedupStore::Sweep(int64_t now_ns) { return memory_.Sweep(now_ns); }

int64_t DurableDedupStore::size() const { return memory_.size(); }

}  // namespace quotad
