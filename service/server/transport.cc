#include "service/server/transport.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "service/server/grpc_status.h"
#include "service/server/server.h"

namespace quotad {
namespace {

constexpr int kArmedHotCalls = 16;  // requested Acquire/Release/Renew calls per queue
constexpr int kArmedBatchCalls = 4;  // requested AcquireBatch/ReleaseBatch calls per queue
constexpr int kArmedAdminCalls = 2;
constexpr int kMaxMessageBytes = 1 << 20;

}  // namespace

std::string BoundAddress(const std::string& listen, int port) {
  const size_t colon = listen.rfind(':');
  const std::string host = colon == std::string::npos ? listen : listen.substr(0, colon);
  return absl::StrCat(host, ":", port);
}

GrpcTransport::GrpcTransport(const TransportOptions& options, QuotaService* quota,
                             AdminService* admin, const ConfigInForce* config, Metrics* metrics,
                             LogSampler* sampler)
    : options_(options),
      quota_(quota),
      admin_(admin),
      config_(config),
      metrics_(metrics),
      sampler_(sampler),
      log_(ServerLogger()),
      health_({v1::Quota::service_full_name(), v1::Admin::service_full_name()},
              options.max_health_watchers, [metrics] { metrics->OnLimitHit("health_watchers"); }) {}

GrpcTransport::~GrpcTransport() = default;

absl::StatusOr<std::unique_ptr<GrpcTransport>> GrpcTransport::Start(
    const TransportOptions& options, QuotaService* quota, AdminService* admin,
    const ConfigInForce* config, Metrics* metrics, LogSampler* sampler) {
  std::unique_ptr<GrpcTransport> transport(
      new GrpcTransport(options, quota, admin, config, metrics, sampler));
  if (absl::Status s = transport->Listen(); !s.ok()) return s;
  return transport;
}

absl::Status GrpcTransport::Listen() {
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  // Without this a second quotad could bind the same port and split the traffic.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.SetMaxReceiveMessageSize(kMaxMessageBytes);
  // quotad accepts connections itself (cap, EMFILE, self-probe: listener.h) and hands them to
  // gRPC.
  ListenerOptions listener_options;
  listener_options.address = options_.listen_address;
  listener_options.max_connections = options_.max_connections;
  listener_options.probe_interval = options_.listener_probe_interval;
  listener_options.probe_timeout = std::min(
      absl::Seconds(5), std::max(absl::Milliseconds(100), options_.listener_probe_interval));
  listener_options.probe_failures = std::max(1, options_.listener_probe_failures);
  listener_options.on_refused = [this](const char* reason) { metrics_->OnLimitHit(reason); };
  listener_options.on_wedged = [this] { OnListenerWedged(); };
  absl::StatusOr<std::unique_ptr<Listener>> listener = Listener::Bind(listener_options);
  if (!listener.ok()) return listener.status();
  listener_ = *std::move(listener);
  port_ = listener_->port();
  std::unique_ptr<grpc::experimental::ExternalConnectionAcceptor> acceptor =
      builder.experimental().AddExternalConnectionAcceptor(
          grpc::ServerBuilder::experimental_type::ExternalConnectionType::FROM_FD,
          options_.credentials);
  builder.RegisterService(&quota_async_);
  builder.RegisterService(&admin_async_);
  builder.RegisterService(health_.service());
  int queues = options_.cq_threads > 0 ? options_.cq_threads
                                       : static_cast<int>(std::thread::hardware_concurrency());
  queues = std::max(queues, 1);
  for (int i = 0; i < queues; ++i) cqs_.push_back(builder.AddCompletionQueue());
  server_ = builder.BuildAndStart();
  if (server_ == nullptr || port_ == 0) {
    if (server_ != nullptr) server_->Shutdown();
    for (auto& cq : cqs_) {
      cq->Shutdown();
      void* tag;
      bool ok;
      while (cq->Next(&tag, &ok)) {
      }
    }
    return absl::UnavailableError(
        absl::StrCat("cannot listen on ", options_.listen_address,
                     ": the address is in use, not local, or malformed (expected host:port)"));
  }
  address_ = BoundAddress(options_.listen_address, port_);
  listener_->Start(std::move(acceptor));
  DefineMethods();
  for (auto& cq : cqs_) {
    health_.Arm(cq.get(), &gate_);
    for (int i = 0; i < kArmedHotCalls; ++i) {
      acquire_.Arm(cq.get());
      release_.Arm(cq.get());
      renew_.Arm(cq.get());
    }
    for (int i = 0; i < kArmedBatchCalls; ++i) {
      acquire_batch_.Arm(cq.get());
      release_batch_.Arm(cq.get());
    }
    for (int i = 0; i < kArmedAdminCalls; ++i) {
      report_.Arm(cq.get());
      usage_.Arm(cq.get());
      leases_.Arm(cq.get());
      credentials_.Arm(cq.get());
      reset_.Arm(cq.get());
      reload_.Arm(cq.get());
    }
  }
  for (auto& cq : cqs_) {
    grpc::ServerCompletionQueue* q = cq.get();
    threads_.emplace_back([q] {
      void* tag;
      bool ok;
      while (q->Next(&tag, &ok)) static_cast<CallTag*>(tag)->Proceed(ok);
    });
  }
  health_.SetAll(grpc::health::v1::HealthCheckResponse::SERVING);
  return absl::OkStatus();
}

// The method table. Every call first learns who calls (Identify); the service method then
// checks the access rules before it touches the ledger.
void GrpcTransport::DefineMethods() {
  acquire_ = {&quota_async_, &QuotaAsync::RequestAcquire,
              [this](AcquireCall* c) { HandleAcquire(c); }, &gate_};
  Define(&report_, &quota_async_, &QuotaAsync::RequestReport, "Report", quota_,
         &QuotaService::Report);
  Define(&release_, &quota_async_, &QuotaAsync::RequestRelease, "Release", quota_,
         &QuotaService::Release);
  Define(&acquire_batch_, &quota_async_, &QuotaAsync::RequestAcquireBatch, "AcquireBatch", quota_,
         &QuotaService::AcquireBatch);
  Define(&release_batch_, &quota_async_, &QuotaAsync::RequestReleaseBatch, "ReleaseBatch", quota_,
         &QuotaService::ReleaseBatch);
  Define(&renew_, &quota_async_, &QuotaAsync::RequestRenew, "Renew", quota_,
         &QuotaService::Renew);
  Define(&usage_, &admin_async_, &AdminAsync::RequestGetUsage, "GetUsage", admin_,
         &AdminService::GetUsage);
  Define(&leases_, &admin_async_, &AdminAsync::RequestListLeases, "ListLeases", admin_,
         &AdminService::ListLeases);
  Define(&credentials_, &admin_async_, &AdminAsync::RequestListCredentials, "ListCredentials",
         admin_, &AdminService::ListCredentials);
  Define(&reset_, &admin_async_, &AdminAsync::RequestResetCredential, "ResetCredential", admin_,
         &AdminService::ResetCredential);
  // Reading the file may block: not on a completion-queue thread. A reload still queued at
  // shutdown is answered UNAVAILABLE instead (BlockingWorker::Stop), before the completion
  // queues close.
  Define(&reload_, &admin_async_, &AdminAsync::RequestReloadConfig, "ReloadConfig", admin_,
         &AdminService::ReloadConfig,
         "quotad is shutting down; the configuration was not reloaded");
}

template <typename Async, typename Request, typename Response, typename Target>
void GrpcTransport::Define(Unary<Async, Request, Response>* method, Async* service,
                           typename UnaryCall<Async, Request, Response>::Method::RequestFn request,
                           const char* name, Target* target,
                           absl::StatusOr<Response> (Target::*handle)(const Caller&,
                                                                      const Request&),
                           const char* if_shut_down) {
  using Call = UnaryCall<Async, Request, Response>;
  method->service = service;
  method->request = request;
  method->gate = &gate_;
  method->handler = [this, name, target, handle, if_shut_down](Call* c) {
    const absl::Time start = absl::Now();
    absl::StatusOr<Caller> caller = Identify(c->context());
    if (!caller.ok()) return Respond(c, name, caller.status(), start);
    if (if_shut_down == nullptr) return Serve(c, name, *caller, target, handle, start);
    worker_->Schedule(
        [this, c, name, caller = *std::move(caller), target, handle, start] {
          Serve(c, name, caller, target, handle, start);
        },
        [this, c, name, if_shut_down, start] {
          Respond(c, name, absl::UnavailableError(if_shut_down), start);
        });
  };
}

template <typename Call, typename Target, typename Response, typename Request>
void GrpcTransport::Serve(Call* call, const char* name, const Caller& caller, Target* target,
                          absl::StatusOr<Response> (Target::*handle)(const Caller&,
                                                                     const Request&),
                          absl::Time start) {
  absl::StatusOr<Response> answer = (target->*handle)(caller, call->request());
  if (!answer.ok()) return Respond(call, name, answer.status(), start);
  *call->response() = *std::move(answer);
  Respond(call, name, absl::OkStatus(), start);
}

absl::StatusOr<Caller> GrpcTransport::Identify(const grpc::ServerContext* context) {
  std::optional<absl::string_view> header;
  const auto& metadata = context->client_metadata();
  if (auto it = metadata.find("authorization"); it != metadata.end()) {
    header = absl::string_view(it->second.data(), it->second.size());
  }
  absl::StatusOr<Caller> caller = config_->Authenticate(header);
  if (!caller.ok()) metrics_->OnAuthFailure("unauthenticated");
  return caller;
}

// Runs on a completion-queue thread; never blocks. A call that waits is parked in the ledger
// (its callback holds a reference to the call) and answered by the thread that serves it.
void GrpcTransport::HandleAcquire(AcquireCall* c) {
  absl::StatusOr<Caller> caller = Identify(c->context());
  if (!caller.ok()) return FinishAcquire(c, caller.status());
  if (const auto deadline = c->context()->deadline();
      deadline != std::chrono::system_clock::time_point::max()) {
    caller->deadline = absl::FromChrono(deadline);
  }
  std::optional<WaitTicket> ticket = quota_->Acquire(
      *caller, c->request(),
      [this, ref = c->Ref()](absl::StatusOr<v1::AcquireResponse> answer) {
        if (answer.ok()) *ref->response() = *std::move(answer);
        FinishAcquire(ref.get(), answer.status());
      });
  if (!ticket.has_value()) return;
  // A client that leaves (cancel, deadline) takes its request out of the queue. When the
  // callback above already ran, or runs now, CancelWait() is false and it answers.
  c->OnCancel([this, c, ticket = *ticket] {
    if (quota_->CancelWait(ticket)) {
      c->TryFinish(
          grpc::Status(grpc::StatusCode::CANCELLED, "the call was cancelled while waiting"));
    }
  });
}

void GrpcTransport::FinishAcquire(AcquireCall* c, const absl::Status& status) {
  LogFailure("Acquire", status);
  c->TryFinish(ToGrpcStatus(status));
}

template <typename Call>
void GrpcTransport::Respond(Call* call, const char* method, const absl::Status& status,
                            absl::Time start) {
  LogFailure(method, status);
  metrics_->OnCall(method, absl::Now() - start);
  if (status.ok() && sampler_->Sample()) {
    Log(*log_, spdlog::level::info, "rpc", {{"method", method}, {"code", "OK"}});
  }
  call->Finish(ToGrpcStatus(status));
}

void GrpcTransport::LogFailure(const char* method, const absl::Status& status) {
  if (status.ok()) return;
  metrics_->OnRequestError(method, absl::StatusCodeToString(status.code()));
  if (sampler_->Sample()) {
    Log(*log_, spdlog::level::info, "rpc",
        {{"method", method},
         {"code", absl::StatusCodeToString(status.code())},
         {"error", status.message()}});
  }
  if (status.code() == absl::StatusCode::kInternal ||
      status.code() == absl::StatusCode::kUnknown) {
    Log(*log_, spdlog::level::err, "rpc failed",
        {{"method", method},
         {"code", absl::StatusCodeToString(status.code())},
         {"error", status.message()}});
  } else if (log_->should_log(spdlog::level::debug)) {
    Log(*log_, spdlog::level::debug, "rpc rejected",
        {{"method", method},
         {"code", absl::StatusCodeToString(status.code())},
         {"error", status.message()}});
  }
}

// The self-probe found the listener taking no connections (listener.h).
void GrpcTransport::OnListenerWedged() {
  Log(*log_, spdlog::level::err, "listener accepts no connections; reporting NOT_SERVING",
      {{"address", address_}, {"probe_failures", listener_->consecutive_probe_failures()}});
  metrics_->OnLimitHit("listener_wedged");
  wedged_.store(true);
  health_.SetAll(grpc::health::v1::HealthCheckResponse::NOT_SERVING);
  if (options_.on_listener_wedged) options_.on_listener_wedged();
}

void GrpcTransport::SetStoreReachable(bool reachable) {
  using grpc::health::v1::HealthCheckResponse;
  health_.SetAll(reachable && !wedged_.load() ? HealthCheckResponse::SERVING
                                              : HealthCheckResponse::NOT_SERVING);
}

void GrpcTransport::Shutdown() {
  health_.Shutdown();
  if (!health_.AwaitWatchersGone(absl::Now() + absl::Seconds(2))) {
    Log(*log_, spdlog::level::warn, "health watchers did not end in time");
  }
  if (options_.drain_delay > absl::ZeroDuration()) absl::SleepFor(options_.drain_delay);
  // New calls are answered UNAVAILABLE from here on; the calls being handled finish.
  // (grpc::Server::Shutdown alone would also wait seconds for idle client connections.)
  gate_.draining.store(true, std::memory_order_release);
  // Waiting Acquire calls are answered now; again in the loop for any that a handler parked
  // while the gate closed.
  options_.answer_waiters();
  // Queued reloads are answered now; the one running (bounded: the file is read without
  // blocking and within --max_config_bytes) finishes and answers. Either way every reload has
  // answered before the completion queues close below: a Finish() on a closed queue aborts the
  // process in grpc_cq_begin_op and skips the final flush.
  worker_->Stop();
  const absl::Time deadline = absl::Now() + options_.shutdown_grace;
  while (gate_.active.load(std::memory_order_acquire) > 0 && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(5));
    options_.answer_waiters();
  }
  const int64_t left = gate_.active.load(std::memory_order_acquire);
  if (left > 0) {
    Log(*log_, spdlog::level::warn, "shutdown grace over", {{"calls_cancelled", left}});
  }
  // Closes the listener and every connection; cancels whatever is still running.
  listener_->Stop();
  server_->Shutdown(absl::ToChronoTime(absl::Now()));
  for (auto& cq : cqs_) cq->Shutdown();
  for (std::thread& t : threads_) t.join();
}

}  // namespace quotad
