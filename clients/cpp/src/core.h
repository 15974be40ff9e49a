#ifndef QUOTAD_CLIENTS_CPP_SRC_CORE_H_
#define QUOTAD_CLIENTS_CPP_SRC_CORE_H_

// Internals shared by QuotaClient and the leases it made: the stub, the retry loop and the
// renewer thread. Not installed.

#include <grpcpp/grpcpp.h>

#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/random/random.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "quotad/client/quota_client.h"
#include "quotad/v1/quotad.grpc.pb.h"

namespace quotad {
namespace client {
namespace internal {

absl::Status FromGrpc(const grpc::Status& s);

// One granted lease as the renewer sees it. Thread-safe (mu).
struct LeaseState {
  std::string id;
  absl::Duration ttl;  // asked for at Acquire; zero: the feature's default
  std::function<void(const absl::Status&)> on_lost;

  mutable absl::Mutex mu;
  absl::Time expires_at ABSL_GUARDED_BY(mu);
  absl::Time next_renew ABSL_GUARDED_BY(mu);
  absl::Duration period ABSL_GUARDED_BY(mu);  // between renewals: a third of the TTL
  bool released ABSL_GUARDED_BY(mu) = false;
  absl::Status lost ABSL_GUARDED_BY(mu);
};

// Thread-safe. Owns the renewer thread, joined by the destructor (which therefore must not run on
// the renewer thread: on_lost callbacks must not drop the last reference).
class Core {
 public:
  Core(std::shared_ptr<grpc::Channel> channel, ClientOptions options);
  ~Core();

  const ClientOptions& options() const { return options_; }
  v1::Quota::Stub* stub() { return stub_.get(); }

  // Runs `call` (one RPC attempt on a fresh context with a deadline of call_timeout + extra)
  // until it succeeds, fails with a status that is not retried, or the attempts run out.
  // `*attempts` (if given) receives the number of attempts made.
  grpc::Status CallWithRetry(absl::Duration extra,
                             const std::function<grpc::Status(grpc::ClientContext*)>& call,
                             int* attempts = nullptr);

  // Sets up a context: deadline, call credentials.
  void Prepare(grpc::ClientContext* ctx, absl::Duration timeout) const;

  // A random fraction in [1 - jitter, 1 + jitter].
  double Jitter(double jitter) ABSL_LOCKS_EXCLUDED(rng_mu_);

  void StartRenewing(std::shared_ptr<LeaseState> state) ABSL_LOCKS_EXCLUDED(mu_);
  void StopRenewing(const std::shared_ptr<LeaseState>& state) ABSL_LOCKS_EXCLUDED(mu_);

 private:
  void RenewLoop() ABSL_LOCKS_EXCLUDED(mu_);
  void RenewOne(const std::shared_ptr<LeaseState>& state);

  const ClientOptions options_;
  std::unique_ptr<v1::Quota::Stub> stub_;

  absl::Mutex rng_mu_;
  absl::BitGen rng_ ABSL_GUARDED_BY(rng_mu_);

  absl::Mutex mu_;
  std::vector<std::shared_ptr<LeaseState>> renewing_ ABSL_GUARDED_BY(mu_);
  bool changed_ ABSL_GUARDED_BY(mu_) = false;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread renewer_;
};

}  // namespace internal
}  // namespace client
}  // namespace quotad

#endif  // QUOTAD_CLIENTS_CPP_SRC_CORE_H_
