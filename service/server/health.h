#ifndef QUOTAD_SERVICE_SERVER_HEALTH_H_
#define QUOTAD_SERVICE_SERVER_HEALTH_H_

#include <grpcpp/grpcpp.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "service/server/async_call.h"

namespace quotad {

// The standard grpc.health.v1.Health service, built from the health.proto compiled into the
// binary so that reflection can describe it: Check and Watch for "" (the whole server) and each
// registered service name.
//
// It runs on the same asynchronous completion queues as the quota services. (The callback API
// would be simpler for Watch, but a callback service adds gRPC threads that poll the same
// connections and cost a quarter of the server's CPU under load.)
//
// Thread-safe. Owns nothing of gRPC's; the calls it arms own themselves.
class HealthService {
 public:
  using ServingStatus = grpc::health::v1::HealthCheckResponse::ServingStatus;
  using AsyncService = grpc::health::v1::Health::AsyncService;

  // Every name in `services`, and "", start NOT_SERVING. At most `max_watchers` Watch streams
  // are open at once; one more is answered RESOURCE_EXHAUSTED naming the limit, after
  // `on_rejected` (for the metric) was called.
  explicit HealthService(const std::vector<std::string>& services, int64_t max_watchers = 1000,
                         std::function<void()> on_rejected = nullptr);
  ~HealthService();

  // To pass to grpc::ServerBuilder::RegisterService().
  AsyncService* service() { return &service_; }

  // Requests Check and Watch calls on `cq`. Call after the server started, once per queue.
  void Arm(grpc::ServerCompletionQueue* cq, CallGate* gate);

  // Sets every known service (and "") to `status` and tells the watchers.
  void SetAll(ServingStatus status) ABSL_LOCKS_EXCLUDED(mu_);
  // Sets everything NOT_SERVING, sends that to every watcher and then ends their streams, and
  // ends new watches at once. Called before the server stops so that it is not held up.
  void Shutdown() ABSL_LOCKS_EXCLUDED(mu_);
  // After Shutdown(): waits until every Watch stream has ended, or `deadline`. True if they did.
  bool AwaitWatchersGone(absl::Time deadline) ABSL_LOCKS_EXCLUDED(mu_);
  // Watch streams open now.
  int64_t watchers() ABSL_LOCKS_EXCLUDED(mu_);

 private:
  class WatchCall;
  using CheckCall = UnaryCall<AsyncService, grpc::health::v1::HealthCheckRequest,
                              grpc::health::v1::HealthCheckResponse>;

  void HandleCheck(CheckCall* call) ABSL_LOCKS_EXCLUDED(mu_);
  // A started Watch: registers it and sends the current status, or ends it with
  // RESOURCE_EXHAUSTED when max_watchers_ are open.
  void StartWatch(WatchCall* call) ABSL_LOCKS_EXCLUDED(mu_);
  void Unregister(WatchCall* call) ABSL_LOCKS_EXCLUDED(mu_);

  const int64_t max_watchers_;
  const std::function<void()> on_rejected_;
  AsyncService service_;
  CheckCall::Method check_;

  absl::Mutex mu_;
  absl::flat_hash_map<std::string, ServingStatus> statuses_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_set<WatchCall*> watchers_ ABSL_GUARDED_BY(mu_);
  bool shut_down_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace quotad

#endif  // QUOTAD_SERVICE_SERVER_HEALTH_H_
