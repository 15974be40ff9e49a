#ifndef QUOTAD_SERVICE_SERVER_TRANSPORT_H_
#define QUOTAD_SERVICE_SERVER_TRANSPORT_H_

// The gRPC face of the services: the builder, the listener, the completion queues and their
// threads, the method table, health and reflection, drain and shutdown. Per call it maps the
// `authorization` metadata to a Caller (ConfigInForce::Authenticate), calls one service
// method, and maps its absl::Status to the wire (ToGrpcStatus). No service logic lives here.

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "quotad/v1/quotad.grpc.pb.h"
#include "service/server/admin_service.h"
#include "service/server/async_call.h"
#include "service/server/background.h"
#include "service/server/health.h"
#include "service/server/listener.h"
#include "service/server/logging.h"
#include "service/server/metrics.h"
#include "service/server/quota_service.h"
#include "service/server/serving_config.h"

namespace quotad {

struct TransportOptions {
  // host:port; port 0 picks a free one.
  std::string listen_address;
  std::shared_ptr<grpc::ServerCredentials> credentials;  // MakeServerCredentials
  // Completion queues, one thread each. 0: one per hardware thread.
  int cq_threads = 0;
  // Connections open at once (see listener.h), and the listener's self-probe.
  int64_t max_connections = 10000;
  absl::Duration listener_probe_interval = absl::Seconds(10);
  int listener_probe_failures = 3;
  // Called after health went NOT_SERVING because the listener takes no connections.
  std::function<void()> on_listener_wedged;
  int64_t max_health_watchers = 1000;
  // Shutdown(): how long health reports NOT_SERVING before calls are refused, and how long the
  // calls in flight then get to finish.
  absl::Duration drain_delay = absl::ZeroDuration();
  absl::Duration shutdown_grace = absl::Seconds(10);
  // Shutdown(): answers every parked call (Ledger::AnswerAllWaiters); called again while the
  // calls in flight finish, for any that a handler parked as the gate closed.
  std::function<void()> answer_waiters;
};

// Thread-safe. Owns its threads, the gRPC server and the listener; does not own the services,
// config, metrics or sampler, which must outlive it.
class GrpcTransport {
 public:
  // Binds, builds and starts serving (health SERVING). kUnavailable when the address cannot be
  // bound; nothing is left running on failure.
  static absl::StatusOr<std::unique_ptr<GrpcTransport>> Start(
      const TransportOptions& options, QuotaService* quota, AdminService* admin,
      const ConfigInForce* config, Metrics* metrics, LogSampler* sampler);
  ~GrpcTransport();

  GrpcTransport(const GrpcTransport&) = delete;
  GrpcTransport& operator=(const GrpcTransport&) = delete;

  // Health NOT_SERVING, new calls refused, parked calls answered UNAVAILABLE, calls in flight
  // finished (cancelled after shutdown_grace), then the listener, the server and the queues are
  // closed and their threads joined. Call once, not from a completion-queue thread.
  void Shutdown();

  int port() const { return port_; }
  const std::string& address() const { return address_; }
  int completion_queues() const { return static_cast<int>(cqs_.size()); }
  int64_t open_connections() const { return listener_->OpenConnections(); }
  int64_t health_watchers() { return health_.watchers(); }
  void PauseAcceptingForTest(bool paused) { listener_->PauseAcceptingForTest(paused); }
  // Shared mode: health follows the store, NOT_SERVING while it cannot be reached and SERVING
  // again once it can (unless the listener was found wedged). A no-op after Shutdown().
  void SetStoreReachable(bool reachable);

 private:
  using QuotaAsync = v1::Quota::AsyncService;
  using AdminAsync = v1::Admin::AsyncService;
  using AcquireCall = ParkableCall<QuotaAsync, v1::AcquireRequest, v1::AcquireResponse>;

  template <typename Async, typename Request, typename Response>
  using Unary = typename UnaryCall<Async, Request, Response>::Method;

  GrpcTransport(const TransportOptions& options, QuotaService* quota, AdminService* admin,
                const ConfigInForce* config, Metrics* metrics, LogSampler* sampler);
  absl::Status Listen();
  void DefineMethods();
  // Defines `m` as `name`, answered by (target->*handle)(caller, request): on the
  // completion-queue thread, or on the blocking worker when `if_shut_down` (the answer of a
  // call still queued at shutdown) is given.
  template <typename Async, typename Request, typename Response, typename Target>
  void Define(Unary<Async, Request, Response>* method, Async* service,
              typename UnaryCall<Async, Request, Response>::Method::RequestFn request,
              const char* name, Target* target,
              absl::StatusOr<Response> (Target::*handle)(const Caller&, const Request&),
              const char* if_shut_down = nullptr);
  template <typename Call, typename Target, typename Response, typename Request>
  void Serve(Call* call, const char* name, const Caller& caller, Target* target,
             absl::StatusOr<Response> (Target::*handle)(const Caller&, const Request&),
             absl::Time start);
  void HandleAcquire(AcquireCall* call);
  // The caller of a call, from its `authorization` metadata.
  absl::StatusOr<Caller> Identify(const grpc::ServerContext* context);
  template <typename Call>
  void Respond(Call* call, const char* method, const absl::Status& status, absl::Time start);
  void FinishAcquire(AcquireCall* call, const absl::Status& status);
  void LogFailure(const char* method, const absl::Status& status);
  void OnListenerWedged();

  const TransportOptions options_;
  QuotaService* const quota_;
  AdminService* const admin_;
  const ConfigInForce* const config_;
  Metrics* const metrics_;
  LogSampler* const sampler_;
  const std::shared_ptr<spdlog::logger> log_;

  CallGate gate_;
  QuotaAsync quota_async_;
  AdminAsync admin_async_;
  HealthService health_;
  AcquireCall::Method acquire_;
  Unary<QuotaAsync, v1::ReportRequest, v1::ReportResponse> report_;
  Unary<QuotaAsync, v1::ReleaseRequest, v1::ReleaseResponse> release_;
  Unary<QuotaAsync, v1::AcquireBatchRequest, v1::AcquireBatchResponse> acquire_batch_;
  Unary<QuotaAsync, v1::ReleaseBatchRequest, v1::ReleaseBatchResponse> release_batch_;
  Unary<QuotaAsync, v1::RenewRequest, v1::RenewResponse> renew_;
  Unary<AdminAsync, v1::GetUsageRequest, v1::GetUsageResponse> usage_;
  Unary<AdminAsync, v1::ListLeasesRequest, v1::ListLeasesResponse> leases_;
  Unary<AdminAsync, v1::ListCredentialsRequest, v1::ListCredentialsResponse> credentials_;
  Unary<AdminAsync, v1::ResetCredentialRequest, v1::ResetCredentialResponse> reset_;
  Unary<AdminAsync, v1::ReloadConfigRequest, v1::ReloadConfigResponse> reload_;

  std::vector<std::unique_ptr<grpc::ServerCompletionQueue>> cqs_;
  std::unique_ptr<Listener> listener_;  // destroyed after server_
  std::unique_ptr<grpc::Server> server_;
  std::vector<std::thread> threads_;
  int port_ = 0;
  std::string address_;
  std::atomic<bool> wedged_{false};  // OnListenerWedged ran: NOT_SERVING for good
  // Handlers that may block (ReloadConfig reads a file).
  std::unique_ptr<BlockingWorker> worker_ = std::make_unique<BlockingWorker>();
};

}  // namespace quotad

#endif  // QUOTAD_SERVICE_SERVER_TRANSPORT_H_
