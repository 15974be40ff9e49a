#ifndef QUOTAD_SERVICE_SERVER_HEALTH_H_
#define QUOTAD_SERVICE_SERVER_HEALTH_H_

#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/synchronization/mutex.h"
#include "grpc/health/v1/health.grpc.pb.h"

namespace quotad {

// The standard grpc.health.v1.Health service, built from the health.proto compiled into the
// binary so that reflection can describe it. Check and Watch for "" (the whole server) and
// each registered service name. Health traffic is light, so it runs on the callback API and
// never occupies the completion-queue threads of the quota services.
//
// Thread-safe. Watch reactors are owned by gRPC and unregister themselves when done.
class HealthService final : public grpc::health::v1::Health::CallbackService {
 public:
  using ServingStatus = grpc::health::v1::HealthCheckResponse::ServingStatus;

  // Every name in `services`, and "", start NOT_SERVING.
  explicit HealthService(const std::vector<std::string>& services);
  ~HealthService() override;

  // Sets every known service (and "") to `status` and tells the watchers.
  void SetAll(ServingStatus status) ABSL_LOCKS_EXCLUDED(mu_);
  // Sets everything NOT_SERVING, sends that to every watcher and then ends their streams, and
  // refuses new watches. Called before the server stops so that Shutdown() is not held up.
  void Shutdown() ABSL_LOCKS_EXCLUDED(mu_);

  grpc::ServerUnaryReactor* Check(grpc::CallbackServerContext* context,
                                  const grpc::health::v1::HealthCheckRequest* request,
                                  grpc::health::v1::HealthCheckResponse* response) override;
  grpc::ServerWriteReactor<grpc::health::v1::HealthCheckResponse>* Watch(
      grpc::CallbackServerContext* context,
      const grpc::health::v1::HealthCheckRequest* request) override;

 private:
  class WatchReactor;

  void Unregister(WatchReactor* reactor) ABSL_LOCKS_EXCLUDED(mu_);

  absl::Mutex mu_;
  absl::flat_hash_map<std::string, ServingStatus> statuses_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_set<WatchReactor*> watchers_ ABSL_GUARDED_BY(mu_);
  bool shut_down_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace quotad

#endif  // QUOTAD_SERVICE_SERVER_HEALTH_H_
