#ifndef QUOTAD_SERVICE_SERVER_IDENTITY_WAITERS_H_
#define QUOTAD_SERVICE_SERVER_IDENTITY_WAITERS_H_

#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "service/server/validation.h"

namespace quotad {

// Acquire calls waiting per identity (finding 5 of issue 18: the per-credential queue cap is
// shared, so one identity could fill it for everyone). Thread-safe. A Slot must not outlive the
// IdentityWaiters that gave it.
class IdentityWaiters {
 public:
  // One waiting call's place; gives it back when destroyed or Release()d, whichever is first.
  class Slot {
   public:
    Slot(IdentityWaiters* owner, std::string identity)
        : owner_(owner), identity_(std::move(identity)) {}
    ~Slot() { Release(); }
    Slot(const Slot&) = delete;
    Slot& operator=(const Slot&) = delete;
    void Release() {
      if (owner_ != nullptr) owner_->Leave(identity_);
      owner_ = nullptr;
    }

   private:
    IdentityWaiters* owner_;
    const std::string identity_;
  };

  explicit IdentityWaiters(int64_t max) : max_(max) {}

  // A place for one more waiting call of `identity`, or RESOURCE_EXHAUSTED naming the identity
  // and the limit.
  absl::StatusOr<std::shared_ptr<Slot>> Enter(const std::string& identity)
      ABSL_LOCKS_EXCLUDED(mu_) {
    {
      absl::MutexLock lock(&mu_);
      int64_t& n = waiting_[identity];
      if (n >= max_) {
        return absl::ResourceExhaustedError(absl::StrCat(
            "identity ", QuoteForError(identity), " has ", n,
            " Acquire calls waiting already; at most ", max_,
            " may wait per identity (--max_waiters_per_identity): retry later, or without "
            "max_wait"));
      }
      ++n;
    }
    return std::make_shared<Slot>(this, identity);
  }

  // The most calls any one identity has waiting now.
  int64_t Largest() ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    int64_t largest = 0;
    for (const auto& [identity, n] : waiting_) largest = std::max(largest, n);
    return largest;
  }

 private:
  void Leave(const std::string& identity) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    auto it = waiting_.find(identity);
    if (it != waiting_.end() && --it->second <= 0) waiting_.erase(it);
  }

  const int64_t max_;
  absl::Mutex mu_;
  absl::flat_hash_map<std::string, int64_t> waiting_ ABSL_GUARDED_BY(mu_);
};

}  // namespace quotad

#endif  // QUOTAD_SERVICE_SERVER_IDENTITY_WAITERS_H_
