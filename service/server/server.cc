#include "service/server/server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <limits>
#include <map>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "quotad/v1/quotad.grpc.pb.h"
#include "service/config/config.h"
#include "service/server/async_call.h"
#include "service/server/auth.h"
#include "service/server/convert.h"
#include "service/server/grpc_status.h"
#include "service/server/health.h"
#include "service/server/logging.h"
#include "service/server/metrics.h"
#include "service/server/validation.h"
#include "service/store/dedup_store.h"
#include "service/store/sqlite_journal.h"

namespace quotad {
namespace {

using QuotaService = v1::Quota::AsyncService;
using AdminService = v1::Admin::AsyncService;

constexpr int kArmedHotCalls = 16;  // requested Acquire/Release/Renew calls per queue
constexpr int kArmedAdminCalls = 2;
constexpr int kMaxMessageBytes = 1 << 20;

std::shared_ptr<spdlog::logger> ServerLogger() {
  static std::shared_ptr<spdlog::logger> logger = [] {
    std::shared_ptr<spdlog::logger> l = spdlog::get("server");
    if (l == nullptr) {
      l = spdlog::default_logger()->clone("server");
      spdlog::register_logger(l);
    }
    return l;
  }();
  return logger;
}

// What the server keeps of a loaded configuration for Admin answers. Immutable once built.
struct ConfigSnapshot {
  absl::flat_hash_map<std::string, std::string> profile_of;  // credential -> profile
  std::vector<v1::Profile> profiles;                         // built-in, then the file's
  absl::flat_hash_set<std::string> builtin;
  // Who may do what (the config's `auth` section); allows everything without one.
  std::unique_ptr<const Authorizer> auth;

  static std::unique_ptr<const ConfigSnapshot> Build(const LoadedConfig& config) {
    auto snapshot = std::make_unique<ConfigSnapshot>();
    absl::StatusOr<std::unique_ptr<const Authorizer>> auth = Authorizer::FromConfig(config.config);
    if (auth.ok()) {
      snapshot->auth = *std::move(auth);
    } else {  // the loader checked the same section; refuse everyone rather than allow all
      ServerLogger()->error("auth section unusable, refusing every call error=\"{}\"",
                            std::string(auth.status().message()));
      snapshot->auth = Authorizer::DenyAll();
    }
    for (const CredentialSpec& c : config.policy.credentials) {
      snapshot->profile_of[c.name] = c.profile;
    }
    snapshot->profiles = config.profiles;
    for (const std::string& name : BuiltinProfileNames()) snapshot->builtin.insert(name);
    return snapshot;
  }
};

// Runs work that may block (file I/O) off the completion-queue threads, one item at a time.
// Thread-safe. Owns its thread; the destructor runs what is queued and joins.
class BlockingWorker {
 public:
  BlockingWorker() : thread_([this] { Run(); }) {}
  ~BlockingWorker() {
    {
      absl::MutexLock lock(&mu_);
      stop_ = true;
    }
    thread_.join();
  }

  void Schedule(std::function<void()> fn) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    queue_.push_back(std::move(fn));
  }

 private:
  void Run() {
    for (;;) {
      std::function<void()> fn;
      {
        absl::MutexLock lock(&mu_);
        mu_.Await(absl::Condition(
            +[](BlockingWorker* w)
                 ABSL_EXCLUSIVE_LOCKS_REQUIRED(w->mu_) { return w->stop_ || !w->queue_.empty(); },
            this));
        if (queue_.empty()) return;
        fn = std::move(queue_.front());
        queue_.pop_front();
      }
      fn();
    }
  }

  absl::Mutex mu_;
  std::deque<std::function<void()>> queue_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

// Runs Ledger::Pump() when the wait queues need it: at the time the last Pump() returned, or
// earlier when the ledger parks a request that must be served sooner (LedgerOptions::wake).
// Sleeps on a condition otherwise (no polling). Thread-safe. Does not own the ledger or clock;
// Stop() must run before the ledger is destroyed.
class Pumper {
 public:
  explicit Pumper(Clock* clock) : clock_(clock) {}
  ~Pumper() { Stop(); }

  // LedgerOptions::wake.
  void WakeBy(absl::Time t) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    if (t < next_) {
      next_ = t;
      changed_ = true;
    }
  }

  void Start(Ledger* ledger) {
    ledger_ = ledger;
    thread_ = std::thread([this] { Run(); });
  }

  void Stop() ABSL_LOCKS_EXCLUDED(mu_) {
    {
      absl::MutexLock lock(&mu_);
      stop_ = true;
    }
    if (thread_.joinable()) thread_.join();
  }

 private:
  void Run() ABSL_LOCKS_EXCLUDED(mu_) {
    for (;;) {
      {
        absl::MutexLock lock(&mu_);
        for (;;) {
          if (stop_) return;
          const absl::Time now = clock_->Now();
          if (next_ <= now) break;
          changed_ = false;
          const absl::Duration left =
              next_ == absl::InfiniteFuture() ? absl::InfiniteDuration() : next_ - now;
          mu_.AwaitWithTimeout(absl::Condition(
                                   +[](Pumper* p) ABSL_EXCLUSIVE_LOCKS_REQUIRED(p->mu_) {
                                     return p->stop_ || p->changed_;
                                   },
                                   this),
                               left);
        }
        next_ = absl::InfiniteFuture();
      }
      const absl::Time next = ledger_->Pump();
      absl::MutexLock lock(&mu_);
      if (next < next_) next_ = next;
    }
  }

  Clock* const clock_;
  Ledger* ledger_ = nullptr;
  absl::Mutex mu_;
  absl::Time next_ ABSL_GUARDED_BY(mu_) = absl::InfiniteFuture();
  bool changed_ ABSL_GUARDED_BY(mu_) = false;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

int64_t ToUnixNs(absl::Time t) { return absl::ToUnixNanos(t); }

}  // namespace

std::string BoundAddress(const std::string& listen, int port) {
  const size_t colon = listen.rfind(':');
  const std::string host = colon == std::string::npos ? listen : listen.substr(0, colon);
  return absl::StrCat(host, ":", port);
}

class QuotadServer::Impl {
 public:
  Impl(const ServerOptions& options, std::unique_ptr<SqliteJournal> journal,
       std::unique_ptr<DedupStore> dedup, std::unique_ptr<Pumper> pumper,
       std::unique_ptr<Ledger> ledger, const LoadedConfig& config)
      : options_(options),
        log_(ServerLogger()),
        journal_(std::move(journal)),
        dedup_(std::move(dedup)),
        pumper_(std::move(pumper)),
        ledger_(std::move(ledger)),
        health_({v1::Quota::service_full_name(), v1::Admin::service_full_name()}) {
    PublishSnapshot(config);
    pumper_->Start(ledger_.get());
    // Leases restored from the state file: their holders name who acquired them.
    if (snapshot_.load()->auth->enabled()) {
      for (const LeaseInfo& l : ledger_->Leases("")) {
        const absl::string_view identity = IdentityOfHolder(l.holder);
        if (!identity.empty()) owners_.Record(l.id.ToString(), identity, l.credential, l.expiry);
      }
    }
  }

  ~Impl() { pumper_->Stop(); }

  absl::Status Listen() {
    absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> creds =
        MakeServerCredentials(options_.tls);
    if (!creds.ok()) return creds.status();
    absl::StatusOr<std::unique_ptr<Metrics>> metrics = Metrics::Create(options_.metrics_listen);
    if (!metrics.ok() && options_.metrics_best_effort) {
      log_->warn("metrics endpoint disabled listen={} error=\"{}\"", options_.metrics_listen,
                 std::string(metrics.status().message()));
      metrics = Metrics::Create("");
    }
    if (!metrics.ok()) return metrics.status();
    metrics_ = *std::move(metrics);
    metrics_->Refresh(*ledger_, ledger_->clock()->Now());
    grpc::reflection::InitProtoReflectionServerBuilderPlugin();
    grpc::ServerBuilder builder;
    // Without this a second quotad could bind the same port and split the traffic.
    builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
    builder.SetMaxReceiveMessageSize(kMaxMessageBytes);
    builder.AddListeningPort(options_.listen_address, *creds, &port_);
    builder.RegisterService(&quota_);
    builder.RegisterService(&admin_);
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
    DefineMethods();
    for (auto& cq : cqs_) {
      health_.Arm(cq.get(), &gate_);
      for (int i = 0; i < kArmedHotCalls; ++i) {
        AcquireCall::Arm(&acquire_, cq.get());
        ReleaseCall::Arm(&release_, cq.get());
        RenewCall::Arm(&renew_, cq.get());
      }
      for (int i = 0; i < kArmedAdminCalls; ++i) ReportCall::Arm(&report_, cq.get());
      for (int i = 0; i < kArmedAdminCalls; ++i) {
        UsageCall::Arm(&usage_, cq.get());
        LeasesCall::Arm(&leases_, cq.get());
        CredentialsCall::Arm(&credentials_, cq.get());
        ResetCall::Arm(&reset_, cq.get());
        ReloadCall::Arm(&reload_, cq.get());
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
    sweeper_ = std::thread([this] { Sweep(); });
    health_.SetAll(grpc::health::v1::HealthCheckResponse::SERVING);
    log_->info(
        "listening address={} completion_queues={} config={} state={} tls={} auth={} "
        "metrics_port={}",
        address_, cqs_.size(), options_.config_path,
        journal_ != nullptr ? journal_->path() : std::string("memory-only"),
        options_.tls.client_ca_path.empty() ? (TlsEnabled(options_.tls) ? "tls" : "off") : "mutual",
        snapshot_.load()->auth->enabled() ? "tokens" : "off", metrics_->port());
    return absl::OkStatus();
  }

  void Shutdown() {
    log_->info("shutting down drain_delay={} grace={}", absl::FormatDuration(options_.drain_delay),
               absl::FormatDuration(options_.shutdown_grace));
    health_.Shutdown();
    if (!health_.AwaitWatchersGone(absl::Now() + absl::Seconds(2))) {
      log_->warn("health watchers did not end in time");
    }
    if (options_.drain_delay > absl::ZeroDuration()) absl::SleepFor(options_.drain_delay);
    // New calls are answered UNAVAILABLE from here on; the calls being handled finish.
    // (grpc::Server::Shutdown alone would also wait seconds for idle client connections.)
    gate_.draining.store(true, std::memory_order_release);
    // Waiting Acquire calls are answered now; again in the loop for any that a handler parked
    // while the gate closed.
    const absl::Status shutting_down = absl::UnavailableError("quotad is shutting down");
    ledger_->AnswerAllWaiters(shutting_down);
    const absl::Time deadline = absl::Now() + options_.shutdown_grace;
    while (gate_.active.load(std::memory_order_acquire) > 0 && absl::Now() < deadline) {
      absl::SleepFor(absl::Milliseconds(5));
      ledger_->AnswerAllWaiters(shutting_down);
    }
    const int64_t left = gate_.active.load(std::memory_order_acquire);
    if (left > 0) log_->warn("shutdown grace over calls_cancelled={}", left);
    // Closes the listener and every connection; cancels whatever is still running.
    server_->Shutdown(absl::ToChronoTime(absl::Now()));
    for (auto& cq : cqs_) cq->Shutdown();
    for (std::thread& t : threads_) t.join();
    {
      absl::MutexLock lock(&sweep_mu_);
      stop_sweeping_ = true;
    }
    sweeper_.join();
    pumper_->Stop();
    worker_.reset();  // runs any queued reload (its call was cancelled) and joins
    if (journal_ != nullptr) {
      if (absl::Status s = journal_->Flush(); !s.ok()) {
        metrics_->OnStoreError("flush");
        log_->error("state file flush failed path={} error=\"{}\"", journal_->path(),
                    std::string(s.message()));
      }
    }
    log_->info("stopped");
  }

  int port() const { return port_; }
  int metrics_port() const { return metrics_ != nullptr ? metrics_->port() : 0; }
  const std::string& address() const { return address_; }
  Ledger* ledger() const { return ledger_.get(); }

 private:
  using AcquireCall = ParkableCall<QuotaService, v1::AcquireRequest, v1::AcquireResponse>;
  using ReportCall = UnaryCall<QuotaService, v1::ReportRequest, v1::ReportResponse>;
  using ReleaseCall = UnaryCall<QuotaService, v1::ReleaseRequest, v1::ReleaseResponse>;
  using RenewCall = UnaryCall<QuotaService, v1::RenewRequest, v1::RenewResponse>;
  using UsageCall = UnaryCall<AdminService, v1::GetUsageRequest, v1::GetUsageResponse>;
  using LeasesCall = UnaryCall<AdminService, v1::ListLeasesRequest, v1::ListLeasesResponse>;
  using CredentialsCall =
      UnaryCall<AdminService, v1::ListCredentialsRequest, v1::ListCredentialsResponse>;
  using ResetCall =
      UnaryCall<AdminService, v1::ResetCredentialRequest, v1::ResetCredentialResponse>;
  using ReloadCall = UnaryCall<AdminService, v1::ReloadConfigRequest, v1::ReloadConfigResponse>;

  void DefineMethods() {
    acquire_ = {&quota_, &QuotaService::RequestAcquire,
                [this](AcquireCall* c) { HandleAcquire(c); }, &gate_};
    // Every handler first learns who calls (Identify) and checks the access rules (Check)
    // before it touches the ledger.
    report_ = {&quota_, &QuotaService::RequestReport,
               [this](ReportCall* c) {
                 const absl::Time start = absl::Now();
                 absl::Status s =
                     Check(c->context(), AccessMethod::kReport, c->request().credential());
                 if (s.ok()) s = HandleReport(c->request(), c->response());
                 Respond(c, "Report", s, start);
               },
               &gate_};
    release_ = {&quota_, &QuotaService::RequestRelease,
                [this](ReleaseCall* c) {
                  const absl::Time start = absl::Now();
                  absl::Status s =
                      CheckLease(c->context(), AccessMethod::kRelease, c->request().lease_id());
                  // The owner stays recorded until the lease's expiry, so that a retried
                  // Release (request_id) is answered the same.
                  if (s.ok()) s = HandleRelease(c->request(), c->response());
                  Respond(c, "Release", s, start);
                },
                &gate_};
    renew_ = {&quota_, &QuotaService::RequestRenew,
              [this](RenewCall* c) {
                const absl::Time start = absl::Now();
                absl::Status s =
                    CheckLease(c->context(), AccessMethod::kRenew, c->request().lease_id());
                if (s.ok()) s = HandleRenew(c->request(), c->response());
                if (s.ok() && c->response()->has_lease_expires_at()) {
                  const auto& t = c->response()->lease_expires_at();
                  owners_.Extend(c->request().lease_id(),
                                 absl::FromUnixSeconds(t.seconds()) + absl::Nanoseconds(t.nanos()));
                }
                Respond(c, "Renew", s, start);
              },
              &gate_};
    usage_ = {&admin_, &AdminService::RequestGetUsage,
              [this](UsageCall* c) {
                const absl::Time start = absl::Now();
                absl::Status s = Check(c->context(), AccessMethod::kAdmin, "");
                if (s.ok()) s = HandleUsage(c->request(), c->response());
                Respond(c, "GetUsage", s, start);
              },
              &gate_};
    leases_ = {&admin_, &AdminService::RequestListLeases,
               [this](LeasesCall* c) {
                 const absl::Time start = absl::Now();
                 absl::Status s = Check(c->context(), AccessMethod::kAdmin, "");
                 if (s.ok()) s = HandleLeases(c->request(), c->response());
                 Respond(c, "ListLeases", s, start);
               },
               &gate_};
    credentials_ = {&admin_, &AdminService::RequestListCredentials,
                    [this](CredentialsCall* c) {
                      const absl::Time start = absl::Now();
                      absl::Status s = Check(c->context(), AccessMethod::kAdmin, "");
                      if (s.ok()) s = HandleCredentials(c->response());
                      Respond(c, "ListCredentials", s, start);
                    },
                    &gate_};
    reset_ = {&admin_, &AdminService::RequestResetCredential,
              [this](ResetCall* c) {
                const absl::Time start = absl::Now();
                absl::Status s = Check(c->context(), AccessMethod::kAdmin, "");
                if (s.ok()) s = HandleReset(c->request(), c->response());
                Respond(c, "ResetCredential", s, start);
              },
              &gate_};
    reload_ = {&admin_, &AdminService::RequestReloadConfig,
               [this](ReloadCall* c) {
                 const absl::Time start = absl::Now();
                 if (absl::Status s = Check(c->context(), AccessMethod::kAdmin, ""); !s.ok()) {
                   return Respond(c, "ReloadConfig", s, start);
                 }
                 // Reading the file may block: not on a completion-queue thread.
                 worker_->Schedule([this, c, start] {
                   absl::Status s = HandleReload(c->response());
                   metrics_->OnConfigReload(s.ok());
                   Respond(c, "ReloadConfig", s, start);
                 });
               },
               &gate_};
  }

  // The caller's identity from `authorization: Bearer <token>` metadata (kAnonymousIdentity
  // without an auth section), or UNAUTHENTICATED.
  absl::StatusOr<std::string> Identify(const grpc::ServerContext* context) {
    const Authorizer& auth = *snapshot_.load(std::memory_order_acquire)->auth;
    if (!auth.enabled()) return std::string(kAnonymousIdentity);
    std::optional<absl::string_view> header;
    const auto& metadata = context->client_metadata();
    if (auto it = metadata.find("authorization"); it != metadata.end()) {
      header = absl::string_view(it->second.data(), it->second.size());
    }
    absl::StatusOr<std::string> identity = auth.Authenticate(header);
    if (!identity.ok()) metrics_->OnAuthFailure("unauthenticated");
    return identity;
  }

  // OK when the caller may call `method` on `credential` (ignored for kAdmin);
  // UNAUTHENTICATED or PERMISSION_DENIED otherwise.
  absl::Status Check(const grpc::ServerContext* context, AccessMethod method,
                     absl::string_view credential, std::string* identity_out = nullptr) {
    absl::StatusOr<std::string> identity = Identify(context);
    if (!identity.ok()) return identity.status();
    const Authorizer& auth = *snapshot_.load(std::memory_order_acquire)->auth;
    absl::Status s = auth.Authorize(*identity, method, credential);
    if (!s.ok()) metrics_->OnAuthFailure("permission_denied");
    if (identity_out != nullptr) *identity_out = *std::move(identity);
    return s;
  }

  // Release and Renew: the lease must be the caller's (or the caller an admin), and the caller
  // must be allowed `method` on the lease's credential. A lease the server does not know of is
  // passed on to the ledger only for admins; others get NOT_FOUND as for an expired lease.
  absl::Status CheckLease(const grpc::ServerContext* context, AccessMethod method,
                          const std::string& lease_id) {
    absl::StatusOr<std::string> identity = Identify(context);
    if (!identity.ok()) return identity.status();
    const Authorizer& auth = *snapshot_.load(std::memory_order_acquire)->auth;
    if (!auth.enabled() || auth.IsAdmin(*identity)) return absl::OkStatus();
    std::optional<LeaseOwner> owner = owners_.Lookup(lease_id);
    if (!owner.has_value()) {
      return absl::NotFoundError(
          absl::StrCat("unknown or expired lease ", QuoteForError(lease_id)));
    }
    absl::Status s = auth.AuthorizeLease(*identity, method, owner->identity);
    if (s.ok()) s = auth.Authorize(*identity, method, owner->credential);
    if (!s.ok()) metrics_->OnAuthFailure("permission_denied");
    return s;
  }

  template <typename Call>
  void Respond(Call* call, const char* method, const absl::Status& status, absl::Time start) {
    LogFailure(method, status);
    metrics_->OnCall(method, absl::Now() - start);
    if (status.ok() && sampler_.Sample()) log_->info("rpc method={} code=OK", method);
    call->Finish(ToGrpcStatus(status));
  }

  void LogFailure(const char* method, const absl::Status& status) {
    if (!status.ok()) {
      metrics_->OnRequestError(method, absl::StatusCodeToString(status.code()));
      if (sampler_.Sample()) {
        log_->info("rpc method={} code={} error=\"{}\"", method,
                   absl::StatusCodeToString(status.code()), std::string(status.message()));
      }
      if (status.code() == absl::StatusCode::kInternal ||
          status.code() == absl::StatusCode::kUnknown) {
        log_->error("rpc failed method={} code={} error=\"{}\"", method,
                    absl::StatusCodeToString(status.code()), std::string(status.message()));
      } else if (log_->should_log(spdlog::level::debug)) {
        log_->debug("rpc rejected method={} code={} error=\"{}\"", method,
                    absl::StatusCodeToString(status.code()), std::string(status.message()));
      }
    }
  }

  // A validated Acquire: the core request (views into the wire request) and how to wait.
  struct AcquireArgs {
    AcquireRequest core;
    absl::Duration max_wait = absl::ZeroDuration();
    int priority = 0;
  };

  static absl::StatusOr<AcquireArgs> ValidateAcquire(const v1::AcquireRequest& req) {
    if (absl::Status s = ValidateName("credential", req.credential()); !s.ok()) return s;
    if (absl::Status s = ValidateName("feature", req.feature()); !s.ok()) return s;
    if (absl::Status s = ValidateText("scope", req.scope(), kMaxNameLength); !s.ok()) return s;
    if (absl::Status s = ValidateText("holder", req.holder(), kMaxNameLength); !s.ok()) return s;
    if (absl::Status s = ValidateText("request_id", req.request_id(), kMaxRequestIdLength);
        !s.ok()) {
      return s;
    }
    if (req.priority() < -kMaxPriority || req.priority() > kMaxPriority) {
      return absl::InvalidArgumentError(absl::StrCat("priority ", req.priority(), " is outside -",
                                                     kMaxPriority, "..", kMaxPriority));
    }
    const int64_t cost = req.has_cost() ? req.cost() : 1;
    if (cost <= 0) {
      return absl::InvalidArgumentError(absl::StrCat("cost must be positive, got ", cost));
    }
    absl::StatusOr<absl::Duration> max_wait = ParseDuration("max_wait", req.max_wait(), kMaxWait);
    if (!max_wait.ok()) return max_wait.status();
    absl::StatusOr<absl::Duration> ttl = ParseDuration("lease_ttl", req.lease_ttl(), kMaxTtl);
    if (!ttl.ok()) return ttl.status();
    // The ledger refuses a cost above what the feature could ever grant (kInvalidArgument).
    AcquireArgs args;
    args.core.credential = req.credential();
    args.core.feature = req.feature();
    args.core.scope = req.scope();
    args.core.cost = cost;
    args.core.lease_ttl = *ttl;
    args.core.holder = req.holder();
    args.core.want_limits = true;
    args.max_wait = *max_wait;
    args.priority = req.priority();
    return args;
  }

  void FinishAcquire(AcquireCall* c, const absl::Status& status) {
    LogFailure("Acquire", status);
    c->TryFinish(ToGrpcStatus(status));
  }

  // Runs on a completion-queue thread; never blocks. A call that waits is parked in the ledger
  // (which holds a reference to it) and answered by the thread that serves it.
  void HandleAcquire(AcquireCall* c) {
    const absl::Time start = absl::Now();
    const v1::AcquireRequest& req = c->request();
    std::string identity;
    if (absl::Status s = Check(c->context(), AccessMethod::kAcquire, req.credential(), &identity);
        !s.ok()) {
      return FinishAcquire(c, s);
    }
    absl::StatusOr<AcquireArgs> args = ValidateAcquire(req);
    if (!args.ok()) return FinishAcquire(c, args.status());
    // With auth, the ledger's holder names the identity, so that ownership survives a restart.
    std::string holder;
    if (snapshot_.load(std::memory_order_acquire)->auth->enabled()) {
      holder = HolderWithIdentity(identity, req.holder());
      args->core.holder = holder;
    }

    std::string dedup_key;
    if (!req.request_id().empty()) {
      // With auth, request_ids are per identity: another one never sees this answer.
      dedup_key = absl::StrCat("acquire/", req.credential(), "/",
                               holder.empty() ? "" : absl::StrCat(identity, "|"), req.request_id());
      const int64_t now_ns = ToUnixNs(ledger_->clock()->Now());
      if (std::optional<std::string> first = dedup_->Get(dedup_key, now_ns)) {
        if (c->response()->ParseFromString(*first)) return FinishAcquire(c, absl::OkStatus());
        log_->error("dedup answer unreadable key={}", dedup_key);
        c->response()->Clear();
      }
    }

    absl::Duration max_wait = args->max_wait;
    const auto deadline = c->context()->deadline();
    if (max_wait > absl::ZeroDuration() &&
        deadline != std::chrono::system_clock::time_point::max()) {
      // Not beyond the call's own deadline: the answer must arrive while the client listens.
      max_wait = std::min(max_wait, absl::FromChrono(deadline) - absl::Now());
    }
    if (max_wait <= absl::ZeroDuration()) {
      absl::StatusOr<Decision> decision = ledger_->Acquire(args->core);
      Observe(c, "Acquire", identity, decision, start);
      return FinishAcquire(c, AnswerAcquire(c, std::move(decision), dedup_key));
    }

    WaitTicket ticket =
        ledger_->AcquireOrWait(args->core, max_wait, args->priority,
                               [this, c, ref = c->Ref(), key = std::move(dedup_key), identity,
                                start](absl::StatusOr<Decision> decision) mutable {
                                 if (decision.ok()) metrics_->OnWait(c->request().credential());
                                 Observe(c, "AcquireWait", identity, decision, start);
                                 FinishAcquire(c, AnswerAcquire(c, std::move(decision), key));
                               });
    // A client that leaves (cancel, deadline) takes its request out of the queue. When the
    // callback above already ran, or runs now, Cancel() is false and it answers.
    c->OnCancel([this, c, ticket = std::move(ticket)] {
      if (ledger_->Cancel(ticket)) {
        c->TryFinish(grpc::Status(grpc::StatusCode::CANCELLED,
                                  "the call was cancelled while "
                                  "waiting"));
      }
    });
  }

  // Metrics, the sampled log line and, for a grant, the lease's owner.
  void Observe(AcquireCall* c, const char* method, const std::string& identity,
               const absl::StatusOr<Decision>& decision, absl::Time start) {
    if (!decision.ok()) return;  // counted by LogFailure; an unknown name is no label
    const v1::AcquireRequest& req = c->request();
    metrics_->OnDecision(method, req.credential(), req.feature(), decision->granted,
                         decision->limited_by, absl::Now() - start);
    if (decision->granted && snapshot_.load(std::memory_order_acquire)->auth->enabled()) {
      owners_.Record(decision->lease_id.ToString(), identity, req.credential(),
                     decision->lease_expiry);
    }
    if (sampler_.Sample()) {
      log_->info("rpc method={} identity={} credential={} feature={} granted={} limited_by={}",
                 method, identity, req.credential(), req.feature(), decision->granted,
                 decision->limited_by.empty() ? "-" : decision->limited_by);
    }
  }

  // Fills the response from a decision; records a grant under its request_id, or answers the
  // standing first grant (undoing this one) when a copy of the request won the race.
  absl::Status AnswerAcquire(AcquireCall* c, absl::StatusOr<Decision> decision,
                             const std::string& dedup_key) {
    if (!decision.ok()) return decision.status();
    v1::AcquireResponse* resp = c->response();
    resp->set_granted(decision->granted);
    if (decision->granted) {
      resp->set_lease_id(decision->lease_id.ToString());
      if (IsFinite(decision->lease_expiry)) {
        TimeToProto(decision->lease_expiry, resp->mutable_lease_expires_at());
      }
    } else {
      resp->set_limited_by(decision->limited_by);
      if (IsFinite(decision->retry_at)) {
        TimeToProto(decision->retry_at, resp->mutable_retry_at());
        const absl::Duration after =
            std::max(absl::ZeroDuration(), decision->retry_at - ledger_->clock()->Now());
        DurationToProto(after, resp->mutable_retry_after());
      }
    }
    resp->mutable_limits()->Reserve(static_cast<int>(decision->limits.size()));
    for (const LimitStatus& l : decision->limits) LimitStatusToProto(l, resp->add_limits());

    // Only grants are recorded: a denial charged nothing, so a retry is simply decided again.
    if (!decision->granted || dedup_key.empty()) return absl::OkStatus();
    const absl::Time now = ledger_->clock()->Now();
    absl::StatusOr<std::string> standing = dedup_->Put(
        dedup_key, resp->SerializeAsString(), ToUnixNs(now + options_.dedup_window), ToUnixNs(now));
    if (!standing.ok()) {
      metrics_->OnStoreError("dedup");
      log_->warn("dedup record failed key={} error=\"{}\"", dedup_key,
                 std::string(standing.status().message()));
      return absl::OkStatus();
    }
    v1::AcquireResponse first;
    if (!first.ParseFromString(*standing) || first.lease_id() == resp->lease_id()) {
      return absl::OkStatus();
    }
    // A copy of this request was granted first: give this grant back whole (used = 0) and
    // answer the first one.
    absl::StatusOr<ReleaseResult> undone = ledger_->Release(decision->lease_id, 0);
    if (!undone.ok()) {
      log_->warn("undo of a duplicate grant failed lease={} error=\"{}\"",
                 decision->lease_id.ToString(), std::string(undone.status().message()));
    }
    *resp = std::move(first);
    return absl::OkStatus();
  }

  absl::Status HandleReport(const v1::ReportRequest& req, v1::ReportResponse* resp) {
    if (absl::Status s = ValidateName("credential", req.credential()); !s.ok()) return s;
    if (absl::Status s = ValidateName("feature", req.feature()); !s.ok()) return s;
    if (req.http_status() < 100 || req.http_status() > 599) {
      return absl::InvalidArgumentError(absl::StrCat("http_status ", req.http_status(),
                                                     " is not an HTTP status code (100..599)"));
    }
    if (req.headers_size() > kMaxReportHeaders) {
      return absl::InvalidArgumentError(absl::StrCat("headers has ", req.headers_size(),
                                                     " entries; at most ", kMaxReportHeaders,
                                                     " are allowed"));
    }
    size_t header_bytes = 0;
    UpstreamHeaders headers;
    headers.reserve(req.headers_size());
    for (int i = 0; i < req.headers_size(); ++i) {
      const v1::Header& h = req.headers(i);
      const std::string field = absl::StrCat("headers[", i, "]");
      if (h.name().empty()) return absl::InvalidArgumentError(field + ".name is required");
      if (absl::Status s = ValidateText(field + ".name", h.name(), kMaxHeaderNameLength); !s.ok()) {
        return s;
      }
      if (h.value().size() > kMaxHeaderValueLength) {
        return absl::InvalidArgumentError(absl::StrCat(
            field, ".value (", QuoteForError(h.name()), ") ", QuoteForError(h.value()), " is ",
            h.value().size(), " bytes long; at most ", kMaxHeaderValueLength, " are allowed"));
      }
      header_bytes += h.name().size() + h.value().size();
      headers.emplace_back(h.name(), h.value());
    }
    if (header_bytes > kMaxReportHeaderBytes) {
      return absl::InvalidArgumentError(absl::StrCat("headers hold ", header_bytes,
                                                     " bytes of names and values; at most ",
                                                     kMaxReportHeaderBytes, " are allowed"));
    }
    if (req.body().size() > kMaxReportBodyBytes) {
      return absl::InvalidArgumentError(
          absl::StrCat("body is ", req.body().size(), " bytes long; at most ", kMaxReportBodyBytes,
                       " are allowed (send the start of a longer body)"));
    }
    const absl::Time now = ledger_->clock()->Now();
    absl::Time observed_at = now;
    if (req.has_observed_at()) {
      const google::protobuf::Timestamp& t = req.observed_at();
      if (t.nanos() < 0 || t.nanos() > 999999999) {
        return absl::InvalidArgumentError(
            absl::StrCat("observed_at {seconds: ", t.seconds(), ", nanos: ", t.nanos(),
                         "} is not a valid timestamp (nanos out of range)"));
      }
      observed_at = absl::FromUnixSeconds(t.seconds()) + absl::Nanoseconds(t.nanos());
      if (observed_at < now - kMaxReportAge || observed_at > now + kMaxReportLead) {
        return absl::InvalidArgumentError(absl::StrCat(
            "observed_at ", absl::FormatTime(absl::RFC3339_full, observed_at, absl::UTCTimeZone()),
            " is more than ", absl::FormatDuration(kMaxReportAge), " before or ",
            absl::FormatDuration(kMaxReportLead), " after the server's clock (",
            absl::FormatTime(absl::RFC3339_full, now, absl::UTCTimeZone()), ")"));
      }
    }
    UpstreamAnswer answer;
    answer.credential = req.credential();
    answer.feature = req.feature();
    answer.http_status = req.http_status();
    answer.headers = std::move(headers);
    answer.body = req.body();
    answer.observed_at = observed_at;
    absl::StatusOr<ReportResult> result = ledger_->Report(answer);
    if (!result.ok()) return result.status();
    for (std::string& a : result->adopted) resp->add_adopted(std::move(a));
    for (std::string& w : result->warnings) resp->add_warnings(std::move(w));
    if (IsFinite(result->cooldown_until)) {
      TimeToProto(result->cooldown_until, resp->mutable_cooldown_until());
      metrics_->OnCooldown(req.credential(), req.feature(), result->cooldown_until);
    }
    if (!result->adopted.empty() || IsFinite(result->cooldown_until)) {
      log_->info("report applied credential={} feature={} http_status={} adopted={} cooldown={}",
                 req.credential(), req.feature(), req.http_status(), resp->adopted_size(),
                 resp->has_cooldown_until() ? absl::FormatTime(result->cooldown_until) : "none");
    }
    return absl::OkStatus();
  }

  absl::Status HandleRelease(const v1::ReleaseRequest& req, v1::ReleaseResponse* resp) {
    absl::StatusOr<LeaseId> id = ParseLeaseId("lease_id", req.lease_id());
    if (!id.ok()) return id.status();
    std::optional<int64_t> used;
    if (req.has_used()) {
      if (req.used() < 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("used must not be negative, got ", req.used()));
      }
      used = req.used();
    }
    if (absl::Status s = ValidateText("request_id", req.request_id(), kMaxRequestIdLength);
        !s.ok()) {
      return s;
    }
    std::string dedup_key;
    if (!req.request_id().empty()) {
      dedup_key = absl::StrCat("release/", req.lease_id(), "/", req.request_id());
      if (std::optional<std::string> first =
              dedup_->Get(dedup_key, ToUnixNs(ledger_->clock()->Now()))) {
        if (resp->ParseFromString(*first)) return absl::OkStatus();
        resp->Clear();
      }
    }
    absl::StatusOr<ReleaseResult> result = ledger_->Release(*id, used);
    if (!result.ok()) return result.status();
    resp->set_refunded(result->refunded);
    resp->set_freed(result->freed);
    if (!dedup_key.empty()) {
      const absl::Time now = ledger_->clock()->Now();
      absl::StatusOr<std::string> standing =
          dedup_->Put(dedup_key, resp->SerializeAsString(), ToUnixNs(now + options_.dedup_window),
                      ToUnixNs(now));
      if (standing.ok()) {
        resp->ParseFromString(*standing);
      } else {
        metrics_->OnStoreError("dedup");
        log_->warn("dedup record failed key={} error=\"{}\"", dedup_key,
                   std::string(standing.status().message()));
      }
    }
    return absl::OkStatus();
  }

  absl::Status HandleRenew(const v1::RenewRequest& req, v1::RenewResponse* resp) {
    absl::StatusOr<LeaseId> id = ParseLeaseId("lease_id", req.lease_id());
    if (!id.ok()) return id.status();
    absl::StatusOr<absl::Duration> ttl = ParseDuration("ttl", req.ttl(), kMaxTtl);
    if (!ttl.ok()) return ttl.status();
    absl::StatusOr<absl::Time> expiry = ledger_->Renew(*id, *ttl);
    if (!expiry.ok()) return expiry.status();
    if (IsFinite(*expiry)) TimeToProto(*expiry, resp->mutable_lease_expires_at());
    return absl::OkStatus();
  }

  absl::Status HandleUsage(const v1::GetUsageRequest& req, v1::GetUsageResponse* resp) {
    if (absl::Status s = ValidateName("credential", req.credential()); !s.ok()) return s;
    absl::StatusOr<std::vector<LimitStatus>> usage = ledger_->Usage(req.credential());
    if (!usage.ok()) return usage.status();
    resp->set_credential(req.credential());
    const ConfigSnapshot* snapshot = snapshot_.load(std::memory_order_acquire);
    if (auto it = snapshot->profile_of.find(req.credential()); it != snapshot->profile_of.end()) {
      resp->set_profile(it->second);
    }
    for (const LimitStatus& l : *usage) LimitStatusToProto(l, resp->add_limits());
    TimeToProto(ledger_->clock()->Now(), resp->mutable_observed_at());
    return absl::OkStatus();
  }

  absl::Status HandleLeases(const v1::ListLeasesRequest& req, v1::ListLeasesResponse* resp) {
    if (!req.credential().empty()) {
      if (absl::Status s = ValidateName("credential", req.credential()); !s.ok()) return s;
      const ConfigSnapshot* snapshot = snapshot_.load(std::memory_order_acquire);
      if (!snapshot->profile_of.contains(req.credential())) {
        return absl::NotFoundError(
            absl::StrCat("unknown credential ", QuoteForError(req.credential())));
      }
    }
    std::vector<LeaseInfo> leases = ledger_->Leases(req.credential());
    std::sort(leases.begin(), leases.end(),
              [](const LeaseInfo& a, const LeaseInfo& b) { return a.expiry < b.expiry; });
    for (const LeaseInfo& l : leases) LeaseToProto(l, resp->add_leases());
    return absl::OkStatus();
  }

  absl::Status HandleCredentials(v1::ListCredentialsResponse* resp) {
    const Policy policy = ledger_->policy();
    std::vector<const CredentialSpec*> sorted;
    for (const CredentialSpec& c : policy.credentials) sorted.push_back(&c);
    std::sort(sorted.begin(), sorted.end(),
              [](const CredentialSpec* a, const CredentialSpec* b) { return a->name < b->name; });
    const ConfigSnapshot* snapshot = snapshot_.load(std::memory_order_acquire);
    std::map<std::string, v1::ProfileEntry> profiles;
    for (const v1::Profile& p : snapshot->profiles) {
      v1::ProfileEntry& e = profiles[p.name()];
      e.set_name(p.name());
      e.set_builtin(snapshot->builtin.contains(p.name()));
      *e.mutable_definition() = p;
    }
    for (const CredentialSpec* c : sorted) {
      CredentialToProto(*c, resp->add_credentials());
      if (c->profile.empty()) continue;
      v1::ProfileEntry& e = profiles[c->profile];
      e.set_name(c->profile);
      e.add_credentials(c->name);
    }
    for (auto& [name, p] : profiles) *resp->add_profiles() = std::move(p);
    return absl::OkStatus();
  }

  absl::Status HandleReset(const v1::ResetCredentialRequest& req,
                           v1::ResetCredentialResponse* resp) {
    if (absl::Status s = ValidateName("credential", req.credential()); !s.ok()) return s;
    if (absl::Status s = ledger_->Reset(req.credential()); !s.ok()) return s;
    log_->info("credential reset credential={}", req.credential());
    resp->set_credential(req.credential());
    absl::StatusOr<std::vector<LimitStatus>> usage = ledger_->Usage(req.credential());
    if (!usage.ok()) return usage.status();
    for (const LimitStatus& l : *usage) LimitStatusToProto(l, resp->add_limits());
    return absl::OkStatus();
  }

  absl::Status HandleReload(v1::ReloadConfigResponse* resp) {
    absl::StatusOr<LoadedConfig> config = LoadConfigFile(options_.config_path);
    if (!config.ok()) {
      log_->warn("reload rejected config={} error=\"{}\"", options_.config_path,
                 std::string(config.status().message()));
      return config.status();
    }
    const Policy* policy = &config->policy;
    if (absl::Status s = ledger_->Reload(*policy); !s.ok()) {
      log_->warn("reload rejected config={} error=\"{}\"", options_.config_path,
                 std::string(s.message()));
      return s;
    }
    PublishSnapshot(*config);
    resp->set_source(options_.config_path);
    resp->set_credentials(static_cast<int32_t>(policy->credentials.size()));
    TimeToProto(ledger_->clock()->Now(), resp->mutable_loaded_at());
    log_->info("config reloaded config={} credentials={}", options_.config_path,
               policy->credentials.size());
    return absl::OkStatus();
  }

  void PublishSnapshot(const LoadedConfig& config) ABSL_LOCKS_EXCLUDED(snapshot_mu_) {
    std::unique_ptr<const ConfigSnapshot> snapshot = ConfigSnapshot::Build(config);
    absl::MutexLock lock(&snapshot_mu_);
    snapshot_.store(snapshot.get(), std::memory_order_release);
    // Readers hold raw pointers without a lock; old snapshots live as long as the server
    // (reloads are rare).
    snapshots_.push_back(std::move(snapshot));
  }

  // What identifies one version of the config file (following symlinks).
  struct FileVersion {
    dev_t dev = 0;
    ino_t ino = 0;
    off_t size = -1;
    int64_t mtime_ns = 0;
    bool operator==(const FileVersion& o) const {
      return dev == o.dev && ino == o.ino && size == o.size && mtime_ns == o.mtime_ns;
    }
  };
  static std::optional<FileVersion> StatConfig(const std::string& path) {
    struct stat st;
    if (::stat(path.c_str(), &st) != 0) return std::nullopt;
    return FileVersion{st.st_dev, st.st_ino, st.st_size,
                       int64_t{st.st_mtim.tv_sec} * 1'000'000'000 + st.st_mtim.tv_nsec};
  }

  // Sweeper thread: reloads the config when its file changed since the last look. A file that
  // fails to load is not tried again until it changes again.
  void WatchConfig() {
    if (options_.config_watch_interval <= absl::ZeroDuration()) return;
    const absl::Time now = absl::Now();
    if (now - last_config_check_ < options_.config_watch_interval) return;
    last_config_check_ = now;
    const std::optional<FileVersion> version = StatConfig(options_.config_path);
    if (!version.has_value() || version == config_version_) {
      return;  // unchanged, or gone for a moment while a ConfigMap update swaps it
    }
    config_version_ = version;
    log_->info("config file changed config={}; reloading", options_.config_path);
    v1::ReloadConfigResponse unused;
    metrics_->OnConfigReload(HandleReload(&unused).ok());
  }

  void Sweep() ABSL_LOCKS_EXCLUDED(sweep_mu_) {
    for (;;) {
      {
        absl::MutexLock lock(&sweep_mu_);
        if (sweep_mu_.AwaitWithTimeout(absl::Condition(&stop_sweeping_), options_.sweep_interval)) {
          return;
        }
      }
      const int64_t dropped = ledger_->Sweep();
      if (dropped > 0 && log_->should_log(spdlog::level::debug)) {
        log_->debug("expired leases dropped count={}", dropped);
      }
      const absl::Time now = ledger_->clock()->Now();
      dedup_->Sweep(ToUnixNs(now));
      owners_.Prune(now);
      if (absl::Now() - last_metrics_refresh_ >= options_.metrics_refresh) {
        last_metrics_refresh_ = absl::Now();
        metrics_->Refresh(*ledger_, now);
        if (journal_ != nullptr) {
          const SqliteFileSizes sizes = journal_->FileSizes();
          metrics_->SetStateFileSizes(sizes.file_bytes, sizes.wal_bytes);
        }
      }
      WatchConfig();
      if (journal_ != nullptr && now - last_compact_ >= options_.compact_interval) {
        last_compact_ = now;
        if (absl::Status s = journal_->Compact(ToUnixNs(now)); !s.ok()) {
          metrics_->OnStoreError("compact");
          log_->warn("state file compaction failed path={} error=\"{}\"", journal_->path(),
                     std::string(s.message()));
        }
      }
    }
  }

  const ServerOptions options_;
  const std::shared_ptr<spdlog::logger> log_;
  // Destroyed in reverse: the ledger before the pumper that it wakes, and both before the
  // journal and dedup store they write to.
  const std::unique_ptr<SqliteJournal> journal_;  // null when memory-only
  const std::unique_ptr<DedupStore> dedup_;
  const std::unique_ptr<Pumper> pumper_;
  const std::unique_ptr<Ledger> ledger_;

  absl::Mutex snapshot_mu_;
  std::atomic<const ConfigSnapshot*> snapshot_{nullptr};
  std::vector<std::unique_ptr<const ConfigSnapshot>> snapshots_ ABSL_GUARDED_BY(snapshot_mu_);

  std::unique_ptr<Metrics> metrics_;  // set by Listen()
  LeaseOwners owners_;                // who holds each lease, when auth is on
  LogSampler sampler_{options_.log_sample};

  CallGate gate_;
  QuotaService quota_;
  AdminService admin_;
  HealthService health_;
  AcquireCall::Method acquire_;
  ReportCall::Method report_;
  ReleaseCall::Method release_;
  RenewCall::Method renew_;
  UsageCall::Method usage_;
  LeasesCall::Method leases_;
  CredentialsCall::Method credentials_;
  ResetCall::Method reset_;
  ReloadCall::Method reload_;

  std::vector<std::unique_ptr<grpc::ServerCompletionQueue>> cqs_;
  std::unique_ptr<grpc::Server> server_;
  std::vector<std::thread> threads_;
  int port_ = 0;
  std::string address_;

  std::unique_ptr<BlockingWorker> worker_ = std::make_unique<BlockingWorker>();
  absl::Mutex sweep_mu_;
  bool stop_sweeping_ ABSL_GUARDED_BY(sweep_mu_) = false;
  absl::Time last_compact_ = absl::InfinitePast();       // sweeper thread only
  absl::Time last_config_check_ = absl::InfinitePast();  // sweeper thread only
  // The version loaded last; set at construction, around the time the config was read.
  std::optional<FileVersion> config_version_ = StatConfig(options_.config_path);  // sweeper only
  absl::Time last_metrics_refresh_ = absl::InfinitePast();  // sweeper thread only
  std::thread sweeper_;
};

absl::StatusOr<std::unique_ptr<QuotadServer>> QuotadServer::Start(const ServerOptions& options) {
  if (options.config_path.empty()) {
    return absl::InvalidArgumentError("a configuration file is required (--config)");
  }
  absl::StatusOr<LoadedConfig> config = LoadConfigFile(options.config_path);
  if (!config.ok()) return config.status();
  if (options.state_path.empty() == !options.memory_only) {
    return absl::InvalidArgumentError(
        options.memory_only ? "--state and --memory_only exclude each other: choose one"
                            : "no state file: give --state=PATH (durable; created when missing) or "
                              "--memory_only (counters and leases are lost on exit)");
  }
  if (!(options.reserve_fraction > 0 && options.reserve_fraction <= 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--reserve_fraction=", options.reserve_fraction, " is outside (0, 1]"));
  }
  if (options.dedup_window <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--dedup_window=", absl::FormatDuration(options.dedup_window), " must be positive"));
  }
  Clock* clock = options.clock != nullptr ? options.clock : Clock::Real();
  std::unique_ptr<SqliteJournal> journal;
  if (!options.state_path.empty()) {
    SqliteOptions sqlite;
    sqlite.reset_corrupt = options.reset_corrupt_state;
    sqlite.synchronous_full = options.synchronous_full;
    absl::StatusOr<std::unique_ptr<SqliteJournal>> opened =
        SqliteJournal::Open(options.state_path, sqlite);
    if (!opened.ok()) return opened.status();
    journal = *std::move(opened);
  }
  absl::StatusOr<std::unique_ptr<DedupStore>> dedup =
      DedupStore::Open(journal.get(), ToUnixNs(clock->Now()));
  if (!dedup.ok()) return dedup.status();
  auto pumper = std::make_unique<Pumper>(clock);
  LedgerOptions ledger_options;
  ledger_options.journal = journal.get();
  ledger_options.reserve_fraction = options.reserve_fraction;
  ledger_options.max_waiters_per_credential = options.max_waiters_per_credential;
  ledger_options.wake = [p = pumper.get()](absl::Time t) { p->WakeBy(t); };
  absl::StatusOr<std::unique_ptr<Ledger>> ledger =
      Ledger::Create(config->policy, clock, ledger_options);
  if (!ledger.ok()) {
    return absl::Status(ledger.status().code(), absl::StrCat("config ", options.config_path, ": ",
                                                             ledger.status().message()));
  }
  if (journal != nullptr) {
    const absl::Time began = absl::Now();
    if (absl::Status s = (*ledger)->Restore(); !s.ok()) {
      return absl::Status(s.code(),
                          absl::StrCat("state file ", options.state_path, ": ", s.message()));
    }
    ServerLogger()->info("state restored path={} leases={} took={}", options.state_path,
                         (*ledger)->Leases("").size(), absl::FormatDuration(absl::Now() - began));
  }
  auto impl = std::make_unique<Impl>(options, std::move(journal), *std::move(dedup),
                                     std::move(pumper), *std::move(ledger), *config);
  if (absl::Status s = impl->Listen(); !s.ok()) return s;
  return std::unique_ptr<QuotadServer>(new QuotadServer(std::move(impl)));
}

QuotadServer::QuotadServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

QuotadServer::~QuotadServer() { Shutdown(); }

int QuotadServer::port() const { return impl_->port(); }
int QuotadServer::metrics_port() const { return impl_->metrics_port(); }
std::string QuotadServer::address() const { return impl_->address(); }
Ledger* QuotadServer::ledger() const { return impl_->ledger(); }

void QuotadServer::Shutdown() {
  absl::MutexLock lock(&shutdown_mu_);
  if (shut_down_) return;
  shut_down_ = true;
  impl_->Shutdown();
}

}  // namespace quotad
