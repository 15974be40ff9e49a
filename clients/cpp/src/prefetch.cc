#include "quotad/client/prefetch.h"

#include <algorithm>
#include <limits>
#include <utility>

namespace quotad {
namespace client {

PrefetchPool::PrefetchPool(QuotaClient* client, std::string credential, std::string feature,
                           Options options)
    : client_(client),
      credential_(std::move(credential)),
      feature_(std::move(feature)),
      options_(std::move(options)) {}

PrefetchPool::~PrefetchPool() { (void)Shutdown(); }

absl::Status PrefetchPool::CommitBlock() {
  if (!block_.has_value()) return absl::OkStatus();
  absl::Status status = absl::OkStatus();
  if (block_->held()) status = block_->Commit(block_taken_).status();
  block_.reset();
  block_taken_ = 0;
  return status;
}

absl::StatusOr<bool> PrefetchPool::Take() {
  absl::MutexLock lock(&mu_);
  if (shut_down_) return absl::FailedPreconditionError("the prefetch pool was shut down");
  if (block_.has_value() && block_->held() && block_taken_ < block_->cost()) {
    ++block_taken_;
    ++handed_out_;
    return true;
  }
  // The block is used up (or lost): it was fully used, commit it and take the next one.
  if (absl::Status s = CommitBlock(); !s.ok()) return s;
  AcquireOptions acquire = options_.acquire;
  acquire.cost = std::max<int64_t>(1, options_.block_size);
  acquire.request_id.clear();  // every block is its own decision
  for (int round = 0; round < 2; ++round) {
    absl::StatusOr<Lease> lease = client_->Acquire(credential_, feature_, acquire);
    if (!lease.ok()) return lease.status();
    if (lease->granted()) {
      granted_ += lease->cost();
      block_ = std::move(*lease);
      block_taken_ = 1;
      ++handed_out_;
      return true;
    }
    retry_after_ = lease->retry_after();
    // Fewer than a block left: ask for exactly what every limit still has.
    int64_t left = std::numeric_limits<int64_t>::max();
    for (const LimitState& l : lease->limits()) {
      if (l.capacity > 0) left = std::min(left, l.remaining);
    }
    if (round > 0 || left <= 0 || left >= acquire.cost) return false;
    acquire.cost = left;
  }
  return false;
}

absl::Duration PrefetchPool::retry_after() const {
  absl::MutexLock lock(&mu_);
  return retry_after_;
}

PrefetchPool::Counts PrefetchPool::counts() const {
  absl::MutexLock lock(&mu_);
  return {handed_out_, granted_};
}

int64_t PrefetchPool::handed_out() const {
  absl::MutexLock lock(&mu_);
  return handed_out_;
}

int64_t PrefetchPool::granted() const {
  absl::MutexLock lock(&mu_);
  return granted_;
}

absl::Status PrefetchPool::Shutdown() {
  absl::MutexLock lock(&mu_);
  if (shut_down_) return absl::OkStatus();
  shut_down_ = true;
  return CommitBlock();
}

}  // namespace client
}  // namespace quotad
