#ifndef QUOTAD_CLIENT_PREFETCH_H_
#define QUOTAD_CLIENT_PREFETCH_H_

#include <cstdint>
#include <optional>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "quotad/client/quota_client.h"

namespace quotad {
namespace client {

// Prefetch for high-rate credentials: takes a block of up to `block_size` units in one Acquire
// (cost N) and hands them out one by one without a round trip. When a block is used up, the next
// Take() commits it (used = N) and acquires the next one; when quotad has fewer than `block_size`
// units left, the block shrinks to what remains, so no unit is ever handed out that quotad did not
// grant. Shutdown() (or the destructor) commits the current block with the number actually handed
// out, and quotad refunds the rest.
//
// Thread-safe. Does not own `client`, which must outlive *this.
class PrefetchPool {
 public:
  struct Options {
    int64_t block_size = 16;
    // Passed to every block's Acquire (cost is set by the pool).
    AcquireOptions acquire;
  };

  PrefetchPool(QuotaClient* client, std::string credential, std::string feature, Options options);
  ~PrefetchPool();  // Shutdown()
  PrefetchPool(const PrefetchPool&) = delete;
  PrefetchPool& operator=(const PrefetchPool&) = delete;

  // One unit: true when handed out, false when quotad denied (see retry_after()). An error when
  // quotad could not be asked, or after Shutdown() (FailedPrecondition).
  absl::StatusOr<bool> Take() ABSL_LOCKS_EXCLUDED(mu_);

  // After a denial: how long quotad said to wait.
  absl::Duration retry_after() const ABSL_LOCKS_EXCLUDED(mu_);

  // Units handed out so far, and units granted by quotad so far (handed_out <= granted).
  struct Counts {
    int64_t handed_out = 0;
    int64_t granted = 0;
  };
  Counts counts() const ABSL_LOCKS_EXCLUDED(mu_);  // both at one instant
  int64_t handed_out() const ABSL_LOCKS_EXCLUDED(mu_);
  int64_t granted() const ABSL_LOCKS_EXCLUDED(mu_);

  // Commits the current block with the units handed out from it (quotad refunds the rest). Later
  // Take() calls fail. Idempotent.
  absl::Status Shutdown() ABSL_LOCKS_EXCLUDED(mu_);

 private:
  absl::Status CommitBlock() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  QuotaClient* const client_;
  const std::string credential_;
  const std::string feature_;
  const Options options_;

  mutable absl::Mutex mu_;
  std::optional<Lease> block_ ABSL_GUARDED_BY(mu_);
  int64_t block_taken_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t handed_out_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t granted_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Duration retry_after_ ABSL_GUARDED_BY(mu_) = absl::ZeroDuration();
  bool shut_down_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace client
}  // namespace quotad

#endif  // QUOTAD_CLIENT_PREFETCH_H_
