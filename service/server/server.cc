#include "service/server/server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <spdlog/spdlog.h>
#include <sys/resource.h>
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
#include <tuple>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "quotad/v1/quotad.grpc.pb.h"
#include "service/config/config.h"
#include "service/server/async_call.h"
#include "service/server/auth.h"
#include "service/server/convert.h"
#include "service/server/grpc_status.h"
#include "service/server/health.h"
#include "service/server/listener.h"
#include "service/server/logging.h"
#include "service/server/metrics.h"
#include "service/server/status_page.h"
#include "service/server/validation.h"
#include "service/store/store.h"

namespace quotad {
namespace {

using QuotaService = v1::Quota::AsyncService;
using AdminService = v1::Admin::AsyncService;

constexpr int kArmedHotCalls = 16;  // requested Acquire/Release/Renew calls per queue
constexpr int kArmedAdminCalls = 2;
constexpr int kMaxMessageBytes = 1 << 20;
// List answers (ListLeases, ListCredentials) are paginated: so many items per page by default,
// at most so many when a caller asks for more.
constexpr size_t kDefaultPageSize = 1000;
constexpr size_t kMaxPageSize = 10000;

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
      Log(*ServerLogger(), spdlog::level::err, "auth section unusable, refusing every call",
          {{"error", auth.status().message()}});
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

// Runs work that may block (file I/O) off the completion-queue threads, one job at a time.
// A job has two halves: `run`, and `cancel`, which runs instead when Stop() finds the job still
// queued (it answers the job's call without doing the work). Thread-safe. Owns its thread.
class BlockingWorker {
 public:
  BlockingWorker() : thread_([this] { Run(); }) {}
  ~BlockingWorker() { Stop(); }

  // Runs `run` later on the worker thread, or `cancel` on the Stop() caller's thread when the
  // worker is stopped first. After Stop(), runs `cancel` at once.
  void Schedule(std::function<void()> run, std::function<void()> cancel) ABSL_LOCKS_EXCLUDED(mu_) {
    {
      absl::MutexLock lock(&mu_);
      if (!stop_) {
        queue_.push_back(Job{std::move(run), std::move(cancel)});
        return;
      }
    }
    cancel();
  }

  // Cancels every queued job, waits for the one running (if any) and joins. Idempotent. Once it
  // returned, no job runs any more, so what the jobs touch (completion queues) may be shut down.
  void Stop() ABSL_LOCKS_EXCLUDED(mu_) {
    std::deque<Job> cancelled;
    {
      absl::MutexLock lock(&mu_);
      stop_ = true;
      cancelled.swap(queue_);
    }
    for (Job& job : cancelled) job.cancel();
    if (thread_.joinable()) thread_.join();
  }

 private:
  struct Job {
    std::function<void()> run;
    std::function<void()> cancel;
  };

  void Run() {
    for (;;) {
      Job job;
      {
        absl::MutexLock lock(&mu_);
        mu_.Await(absl::Condition(
            +[](BlockingWorker* w)
                 ABSL_EXCLUSIVE_LOCKS_REQUIRED(w->mu_) { return w->stop_ || !w->queue_.empty(); },
            this));
        if (stop_ || queue_.empty()) return;
        job = std::move(queue_.front());
        queue_.pop_front();
      }
      job.run();
    }
  }

  absl::Mutex mu_;
  std::deque<Job> queue_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

// Runs Ledger::Pump() when the wait queues need it: at the time the last Pump() returned, or
// earlier when the ledger parks a request that must be served sooner (LedgerOptions::wake).
// Sleeps on a condition otherwise (no polling). Thread-safe. Does not own the ledger or clock;
// Stop() must run before the ledger is destroyed.
class Pumper {
 public:
  // The longest the pump sleeps while requests wait (see Run).
  static constexpr absl::Duration kMaxPumpWait = absl::Seconds(1);

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
          // The times are the wall clock's, which may step: while requests wait, pump at least
          // every kMaxPumpWait, so that a step back never holds a waiter up for the step.
          const bool woken = mu_.AwaitWithTimeout(
              absl::Condition(
                  +[](Pumper* p) ABSL_EXCLUSIVE_LOCKS_REQUIRED(p->mu_) {
                    return p->stop_ || p->changed_;
                  },
                  this),
              std::min(left, kMaxPumpWait));
          if (!woken && left > kMaxPumpWait && ledger_->waiting() > 0) break;
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

// Acquire calls waiting per identity (finding 5 of issue 18: the per-credential queue cap is
// shared, so one identity could fill it for everyone). Thread-safe.
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

}  // namespace

std::string BoundAddress(const std::string& listen, int port) {
  const size_t colon = listen.rfind(':');
  const std::string host = colon == std::string::npos ? listen : listen.substr(0, colon);
  return absl::StrCat(host, ":", port);
}

class QuotadServer::Impl {
 public:
  Impl(const ServerOptions& options, std::unique_ptr<Store> store, std::unique_ptr<Pumper> pumper,
       std::unique_ptr<Ledger> ledger, const LoadedConfig& config)
      : options_(options),
        log_(ServerLogger()),
        store_(std::move(store)),
        dedup_(&store_->dedup()),
        pumper_(std::move(pumper)),
        ledger_(std::move(ledger)),
        health_({v1::Quota::service_full_name(), v1::Admin::service_full_name()},
                options.max_health_watchers, [this] { metrics_->OnLimitHit("health_watchers"); }) {
    PublishSnapshot(config);
    pumper_->Start(ledger_.get());
    // Leases restored from the state file: their holders name who acquired them.
    if (Snapshot()->auth->enabled()) {
      for (const LeaseInfo& l : ledger_->Leases("")) {
        const absl::string_view identity = IdentityOfHolder(l.holder);
        if (!identity.empty()) owners_.Record(l.id, identity, l.credential, l.expiry);
      }
    }
  }

  ~Impl() { pumper_->Stop(); }

  absl::Status Listen() {
    absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> creds =
        MakeServerCredentials(options_.tls);
    if (!creds.ok()) return creds.status();
    absl::StatusOr<std::unique_ptr<Metrics>> metrics = Metrics::Create(options_.metrics_listen, options_.metrics_http);
    if (!metrics.ok() && options_.metrics_best_effort) {
      Log(*log_, spdlog::level::warn, "metrics endpoint disabled",
          {{"listen", options_.metrics_listen}, {"error", metrics.status().message()}});
      metrics = Metrics::Create("", options_.metrics_http);
    }
    if (!metrics.ok()) return metrics.status();
    metrics_ = *std::move(metrics);
    metrics_->Refresh(*ledger_, ledger_->clock()->Now());
    if (options_.status_page) {
      metrics_->pages().SetHandler(
          [page = StatusPage(ledger_.get(), &throttles_)](const HttpRequest& r) {
            return page.Handle(r);
          });
    }
    grpc::reflection::InitProtoReflectionServerBuilderPlugin();
    grpc::ServerBuilder builder;
    // Without this a second quotad could bind the same port and split the traffic.
    builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
    builder.SetMaxReceiveMessageSize(kMaxMessageBytes);
    // quotad accepts connections itself (cap, EMFILE, self-probe: listener.h) and hands them
    // to gRPC.
    ListenerOptions listener_options;
    listener_options.address = options_.listen_address;
    listener_options.max_connections = MaxConnections();
    listener_options.probe_interval = options_.listener_probe_interval;
    listener_options.probe_timeout =
        std::min(absl::Seconds(5), std::max(absl::Milliseconds(100), options_.listener_probe_interval));
    listener_options.probe_failures = std::max(1, options_.listener_probe_failures);
    listener_options.on_refused = [this](const char* reason) { metrics_->OnLimitHit(reason); };
    listener_options.on_wedged = [this] { OnListenerWedged(); };
    absl::StatusOr<std::unique_ptr<Listener>> listener = Listener::Bind(listener_options);
    if (!listener.ok()) return listener.status();
    listener_ = *std::move(listener);
    port_ = listener_->port();
    std::unique_ptr<grpc::experimental::ExternalConnectionAcceptor> acceptor =
        builder.experimental().AddExternalConnectionAcceptor(
            grpc::ServerBuilder::experimental_type::ExternalConnectionType::FROM_FD, *creds);
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
    listener_->Start(std::move(acceptor));
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
    Log(*log_, spdlog::level::info, "listening",
        {{"address", address_},
         {"completion_queues", cqs_.size()},
         {"config", options_.config_path},
         {"state", store_->description()},
         {"tls", options_.tls.client_ca_path.empty() ? (TlsEnabled(options_.tls) ? "tls" : "off")
                                                     : "mutual"},
         {"auth", Snapshot()->auth->enabled() ? "tokens" : "off"},
         {"metrics_port", metrics_->port()},
         {"max_connections", MaxConnections()}});
    return absl::OkStatus();
  }

  // --max_connections, lowered when the descriptor limit could not hold that many and still
  // leave room for the state file, the metrics endpoint and gRPC's own (64 spare).
  int64_t MaxConnections() const {
    int64_t max = options_.max_connections;
    if (struct rlimit nofile; getrlimit(RLIMIT_NOFILE, &nofile) == 0 &&
                              nofile.rlim_cur != RLIM_INFINITY) {
      max = std::min<int64_t>(max, std::max<int64_t>(1, static_cast<int64_t>(nofile.rlim_cur) - 64));
    }
    return max;
  }

  // The self-probe found the listener taking no connections (listener.h).
  void OnListenerWedged() {
    Log(*log_, spdlog::level::err, "listener accepts no connections; reporting NOT_SERVING",
        {{"address", address_}, {"probe_failures", listener_->consecutive_probe_failures()}});
    metrics_->OnLimitHit("listener_wedged");
    health_.SetAll(grpc::health::v1::HealthCheckResponse::NOT_SERVING);
    if (options_.on_listener_wedged) options_.on_listener_wedged();
  }

  void Shutdown() {
    Log(*log_, spdlog::level::info, "shutting down",
        {{"drain_delay", absl::FormatDuration(options_.drain_delay)},
         {"grace", absl::FormatDuration(options_.shutdown_grace)}});
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
    const absl::Status shutting_down = absl::UnavailableError("quotad is shutting down");
    ledger_->AnswerAllWaiters(shutting_down);
    // Queued reloads are answered now; the one running (bounded: the file is read without
    // blocking and within --max_config_bytes) finishes and answers. Either way every reload has
    // answered before the completion queues close below: a Finish() on a closed queue aborts
    // the process in grpc_cq_begin_op and skips the final flush.
    worker_->Stop();
    const absl::Time deadline = absl::Now() + options_.shutdown_grace;
    while (gate_.active.load(std::memory_order_acquire) > 0 && absl::Now() < deadline) {
      absl::SleepFor(absl::Milliseconds(5));
      ledger_->AnswerAllWaiters(shutting_down);
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
    {
      absl::MutexLock lock(&sweep_mu_);
      stop_sweeping_ = true;
    }
    sweeper_.join();
    pumper_->Stop();
    if (absl::Status s = store_->Flush(); !s.ok()) {
      metrics_->OnStoreError("flush");
      Log(*log_, spdlog::level::err, "state file flush failed",
          {{"path", store_->description()}, {"error", s.message()}});
    }
    Log(*log_, spdlog::level::info, "stopped");
  }

  // SIGHUP (QuotadServer::ReloadConfig).
  absl::Status Reload() {
    v1::ReloadConfigResponse unused;
    absl::Status s = HandleReload(&unused);
    metrics_->OnConfigReload(s.ok());
    return s;
  }

  int port() const { return port_; }
  int64_t open_connections() const { return listener_->OpenConnections(); }
  void PauseAcceptingForTest(bool paused) { listener_->PauseAcceptingForTest(paused); }
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
                  Respond(c, "Release", ReleaseCall_(c->context(), c->request(), c->response()),
                          start);
                },
                &gate_};
    renew_ = {&quota_, &QuotaService::RequestRenew,
              [this](RenewCall* c) {
                const absl::Time start = absl::Now();
                Respond(c, "Renew", RenewCall_(c->context(), c->request(), c->response()), start);
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
                      if (s.ok()) s = HandleCredentials(c->request(), c->response());
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
                 // Reading the file may block: not on a completion-queue thread. A reload still
                 // queued at shutdown is answered UNAVAILABLE instead (BlockingWorker::Stop),
                 // before the completion queues close.
                 worker_->Schedule(
                     [this, c, start] {
                       absl::Status s = HandleReload(c->response());
                       metrics_->OnConfigReload(s.ok());
                       Respond(c, "ReloadConfig", s, start);
                     },
                     [this, c, start] {
                       Respond(c, "ReloadConfig",
                               absl::UnavailableError(
                                   "quotad is shutting down; the configuration was not reloaded"),
                               start);
                     });
               },
               &gate_};
  }

  // The caller's identity from `authorization: Bearer <token>` metadata (kAnonymousIdentity
  // without an auth section), or UNAUTHENTICATED.
  absl::StatusOr<std::string> Identify(const grpc::ServerContext* context) {
    const std::shared_ptr<const ConfigSnapshot> snapshot = Snapshot();
    const Authorizer& auth = *snapshot->auth;
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
    const std::shared_ptr<const ConfigSnapshot> snapshot = Snapshot();
    const Authorizer& auth = *snapshot->auth;
    absl::Status s = auth.Authorize(*identity, method, credential);
    if (!s.ok()) metrics_->OnAuthFailure("permission_denied");
    if (identity_out != nullptr) *identity_out = *std::move(identity);
    return s;
  }

  // Release and Renew: the lease must be the caller's (or the caller an admin), and the caller
  // must be allowed `method` on the lease's credential. A lease the server does not know of is
  // passed on to the ledger only for admins; others get NOT_FOUND as for an expired lease.
  absl::Status CheckLease(const std::string& identity, AccessMethod method, const LeaseId& id) {
    const std::shared_ptr<const ConfigSnapshot> snapshot = Snapshot();
    const Authorizer& auth = *snapshot->auth;
    if (!auth.enabled() || auth.IsAdmin(identity)) return absl::OkStatus();
    std::optional<LeaseOwner> owner = owners_.Lookup(id);
    if (!owner.has_value()) {
      return absl::NotFoundError(absl::StrCat("unknown or expired lease ", id.ToString()));
    }
    absl::Status s = auth.AuthorizeLease(identity, method, owner->identity);
    if (s.ok()) s = auth.Authorize(identity, method, owner->credential);
    if (!s.ok()) metrics_->OnAuthFailure("permission_denied");
    return s;
  }

  // OK while the request_id table has room for one more answer; RESOURCE_EXHAUSTED naming the
  // limit otherwise. The count is the table's size at the last sweep plus the answers recorded
  // since: never below the real size, so the bound holds.
  absl::Status RequestIdRoom() {
    if (request_ids_.load(std::memory_order_relaxed) < options_.max_request_ids) {
      return absl::OkStatus();
    }
    metrics_->OnLimitHit("request_ids");
    return absl::ResourceExhaustedError(absl::StrCat(
        "quotad keeps ", options_.max_request_ids,
        " request_id answers already (--max_request_ids); retry later, or call without a "
        "request_id"));
  }

  // Release: who calls, the lease id (parsed once, LeaseId::Parse, so that any case the ledger
  // accepts is the same lease for the owner table and the request_id table), a retry answered
  // from the request_id table, the owner check, the ledger. A released lease leaves the owner
  // table at once; a retry of it with the same request_id is answered from the request_id table,
  // whose key names the caller's identity when auth is on.
  absl::Status ReleaseCall_(const grpc::ServerContext* context, const v1::ReleaseRequest& req,
                            v1::ReleaseResponse* resp) {
    absl::StatusOr<std::string> identity = Identify(context);
    if (!identity.ok()) return identity.status();
    absl::StatusOr<LeaseId> id = ParseLeaseId("lease_id", req.lease_id());
    if (!id.ok()) return id.status();
    if (absl::Status s = ValidateText("request_id", req.request_id(), kMaxRequestIdLength);
        !s.ok()) {
      return s;
    }
    std::string dedup_key;
    if (!req.request_id().empty()) {
      const bool per_identity = Snapshot()->auth->enabled();
      dedup_key = absl::StrCat("release/", per_identity ? absl::StrCat(*identity, "|") : "",
                               id->ToString(), "/", req.request_id());
      if (std::optional<std::string> first =
              dedup_->Get(dedup_key, ToUnixNs(ledger_->clock()->Now()))) {
        if (resp->ParseFromString(*first)) return absl::OkStatus();
        resp->Clear();
      }
    }
    if (absl::Status s = CheckLease(*identity, AccessMethod::kRelease, *id); !s.ok()) return s;
    if (!dedup_key.empty()) {
      if (absl::Status s = RequestIdRoom(); !s.ok()) return s;
    }
    absl::Status s = HandleRelease(req, *id, dedup_key, resp);
    if (s.ok()) owners_.Forget(*id);
    return s;
  }

  absl::Status RenewCall_(const grpc::ServerContext* context, const v1::RenewRequest& req,
                          v1::RenewResponse* resp) {
    absl::StatusOr<std::string> identity = Identify(context);
    if (!identity.ok()) return identity.status();
    absl::StatusOr<LeaseId> id = ParseLeaseId("lease_id", req.lease_id());
    if (!id.ok()) return id.status();
    if (absl::Status s = CheckLease(*identity, AccessMethod::kRenew, *id); !s.ok()) return s;
    absl::Status s = HandleRenew(req, *id, resp);
    if (s.ok() && resp->has_lease_expires_at()) {
      const auto& t = resp->lease_expires_at();
      owners_.Extend(*id, absl::FromUnixSeconds(t.seconds()) + absl::Nanoseconds(t.nanos()));
    }
    return s;
  }

  template <typename Call>
  void Respond(Call* call, const char* method, const absl::Status& status, absl::Time start) {
    LogFailure(method, status);
    metrics_->OnCall(method, absl::Now() - start);
    if (status.ok() && sampler_.Sample()) {
      Log(*log_, spdlog::level::info, "rpc", {{"method", method}, {"code", "OK"}});
    }
    call->Finish(ToGrpcStatus(status));
  }

  void LogFailure(const char* method, const absl::Status& status) {
    if (!status.ok()) {
      metrics_->OnRequestError(method, absl::StatusCodeToString(status.code()));
      if (sampler_.Sample()) {
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

  // Priorities above --priority_ceiling: admins and --priority_identities only.
  absl::Status CheckPriority(const std::string& identity, int priority) {
    if (priority <= options_.priority_ceiling) return absl::OkStatus();
    const std::shared_ptr<const ConfigSnapshot> snapshot = Snapshot();
    if (snapshot->auth->enabled() && snapshot->auth->IsAdmin(identity)) return absl::OkStatus();
    if (std::find(options_.priority_identities.begin(), options_.priority_identities.end(),
                  identity) != options_.priority_identities.end()) {
      return absl::OkStatus();
    }
    metrics_->OnLimitHit("priority");
    return absl::PermissionDeniedError(absl::StrCat(
        "priority ", priority, " is above the ceiling ", options_.priority_ceiling,
        " (--priority_ceiling); identity ", QuoteForError(identity),
        " may not use it (admins and --priority_identities may)"));
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
    if (absl::Status s = CheckPriority(identity, args->priority); !s.ok()) {
      return FinishAcquire(c, s);
    }
    // With auth, the ledger's holder names the identity, so that ownership survives a restart.
    std::string holder;
    if (Snapshot()->auth->enabled()) {
      holder = HolderWithIdentity(identity, req.holder());
      if (holder.size() > kMaxNameLength) {
        // Issue 11: the ledger would refuse the stored form with a message about a holder the
        // caller never sent.
        return FinishAcquire(
            c, absl::InvalidArgumentError(absl::StrCat(
                   "holder is ", req.holder().size(), " bytes long; with auth on it is stored as \"",
                   identity, "/<holder>\" (", holder.size(), " bytes), and the ledger accepts at most ",
                   kMaxNameLength, ": holder may be at most ",
                   kMaxNameLength - std::min(kMaxNameLength, identity.size() + 1),
                   " bytes for identity ", QuoteForError(identity))));
      }
      args->core.holder = holder;
    }

    std::string dedup_key;
    if (!req.request_id().empty()) {
      if (absl::Status s = RequestIdRoom(); !s.ok()) return FinishAcquire(c, s);
      // With auth, request_ids are per identity: another one never sees this answer.
      dedup_key = absl::StrCat("acquire/", req.credential(), "/",
                               holder.empty() ? "" : absl::StrCat(identity, "|"), req.request_id());
      const int64_t now_ns = ToUnixNs(ledger_->clock()->Now());
      if (std::optional<std::string> first = dedup_->Get(dedup_key, now_ns)) {
        absl::Status same = AnswerFirst(c, *first);
        if (same.ok() || same.code() == absl::StatusCode::kInvalidArgument) {
          return FinishAcquire(c, same);
        }
        Log(*log_, spdlog::level::err, "dedup answer unreadable", {{"key", dedup_key}});
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

    // Counted before the ledger parks it; the place is given back when the call is answered
    // or cancelled (the callback is then called or destroyed).
    absl::StatusOr<std::shared_ptr<IdentityWaiters::Slot>> slot = waiters_.Enter(identity);
    if (!slot.ok()) {
      metrics_->OnLimitHit("identity_waiters");
      return FinishAcquire(c, slot.status());
    }
    WaitTicket ticket =
        ledger_->AcquireOrWait(args->core, max_wait, args->priority,
                               [this, c, ref = c->Ref(), key = std::move(dedup_key), identity,
                                start, slot = *std::move(slot)](
                                   absl::StatusOr<Decision> decision) mutable {
                                 slot->Release();
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
    if (decision->granted && Snapshot()->auth->enabled()) {
      owners_.Record(decision->lease_id, identity, req.credential(),
                     decision->lease_expiry);
    }
    if (sampler_.Sample()) {
      Log(*log_, spdlog::level::info, "rpc",
          {{"method", method},
           {"identity", identity},
           {"credential", req.credential()},
           {"feature", req.feature()},
           {"granted", decision->granted},
           {"limited_by", decision->limited_by.empty() ? "-" : decision->limited_by}});
    }
  }

  // What a request_id stands for: a retry must ask for the same thing.
  static std::string RequestFingerprint(const v1::AcquireRequest& req) {
    // Quoted and escaped, so that no name can make two different requests read the same.
    return absl::StrCat("feature \"", absl::CEscape(req.feature()), "\" scope \"",
                        absl::CEscape(req.scope()), "\" cost ", req.has_cost() ? req.cost() : 1);
  }

  // A dedup record: the fingerprint of the request that was granted, then its answer.
  static std::string EncodeFirst(const v1::AcquireRequest& req, const v1::AcquireResponse& resp) {
    const std::string fingerprint = RequestFingerprint(req);
    return absl::StrCat(fingerprint.size(), ":", fingerprint, resp.SerializeAsString());
  }

  // Answers `c` with the first grant of its request_id. kInvalidArgument naming both requests
  // when the first one asked for something else; kDataLoss when the record is unreadable.
  static absl::Status AnswerFirst(AcquireCall* c, absl::string_view record) {
    const size_t colon = record.find(':');
    size_t length = 0;
    if (colon == absl::string_view::npos ||
        !absl::SimpleAtoi(record.substr(0, colon), &length) ||
        length > record.size() - colon - 1) {
      return absl::DataLossError("dedup record unreadable");
    }
    const absl::string_view first = record.substr(colon + 1, length);
    const std::string now = RequestFingerprint(c->request());
    if (first != now) {
      return absl::InvalidArgumentError(absl::StrCat(
          "request_id '", c->request().request_id(), "' was first used for ", first,
          "; this request is ", now, ": use a new request_id for a different request"));
    }
    if (!c->response()->ParseFromString(std::string(record.substr(colon + 1 + length)))) {
      return absl::DataLossError("dedup answer unreadable");
    }
    return absl::OkStatus();
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
    const std::string mine = EncodeFirst(c->request(), *resp);
    absl::StatusOr<std::string> standing = dedup_->Put(
        dedup_key, mine, ToUnixNs(now + options_.dedup_window), ToUnixNs(now));
    request_ids_.fetch_add(1, std::memory_order_relaxed);
    if (!standing.ok()) {
      metrics_->OnStoreError("dedup");
      Log(*log_, spdlog::level::warn, "dedup record failed",
          {{"key", dedup_key}, {"error", standing.status().message()}});
      return absl::OkStatus();
    }
    if (*standing == mine) return absl::OkStatus();
    // Another request with this request_id was granted first: give this grant back whole
    // (used = 0), and answer the first one, or the error naming both when it asked for
    // something else.
    absl::StatusOr<ReleaseResult> undone = ledger_->Release(decision->lease_id, 0);
    if (!undone.ok()) {
      Log(*log_, spdlog::level::warn, "undo of a duplicate grant failed",
          {{"lease", decision->lease_id.ToString()}, {"error", undone.status().message()}});
    }
    resp->Clear();
    return AnswerFirst(c, *standing);
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
      throttles_.Record({req.credential(), req.feature(), req.http_status(), observed_at,
                         result->cooldown_until});
    }
    if (!result->adopted.empty() || IsFinite(result->cooldown_until)) {
      Log(*log_, spdlog::level::info, "report applied",
          {{"credential", req.credential()},
           {"feature", req.feature()},
           {"http_status", req.http_status()},
           {"adopted", resp->adopted_size()},
           {"cooldown", resp->has_cooldown_until() ? absl::FormatTime(result->cooldown_until)
                                                   : std::string("none")}});
    }
    return absl::OkStatus();
  }

  // `dedup_key`: where the answer is kept for retries (empty: no request_id).
  absl::Status HandleRelease(const v1::ReleaseRequest& req, const LeaseId& lease_id,
                             const std::string& dedup_key, v1::ReleaseResponse* resp) {
    const LeaseId* id = &lease_id;
    std::optional<int64_t> used;
    if (req.has_used()) {
      if (req.used() < 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("used must not be negative, got ", req.used()));
      }
      used = req.used();
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
      request_ids_.fetch_add(1, std::memory_order_relaxed);
      if (standing.ok()) {
        resp->ParseFromString(*standing);
      } else {
        metrics_->OnStoreError("dedup");
        Log(*log_, spdlog::level::warn, "dedup record failed",
            {{"key", dedup_key}, {"error", standing.status().message()}});
      }
    }
    return absl::OkStatus();
  }

  absl::Status HandleRenew(const v1::RenewRequest& req, const LeaseId& lease_id,
                           v1::RenewResponse* resp) {
    const LeaseId* id = &lease_id;
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
    const std::shared_ptr<const ConfigSnapshot> snapshot = Snapshot();
    if (auto it = snapshot->profile_of.find(req.credential()); it != snapshot->profile_of.end()) {
      resp->set_profile(it->second);
    }
    absl::StatusOr<size_t> page_size = PageSize(req.page_size());
    if (!page_size.ok()) return page_size.status();
    // Order: the limits as the ledger lists them (the configuration's order), scopes in byte
    // order within a limit. The token is the last (limit, scope) answered, web-safe base64 of
    // "limit\nscope" (neither holds a control character).
    absl::flat_hash_map<std::string, size_t> rank;
    for (const LimitStatus& l : *usage) rank.emplace(l.name, rank.size());
    using Key = std::tuple<size_t, absl::string_view>;
    auto key_of = [&](const LimitStatus& l) { return Key{rank.at(l.name), l.scope}; };
    std::vector<const LimitStatus*> entries;
    entries.reserve(usage->size());
    for (const LimitStatus& l : *usage) entries.push_back(&l);
    std::stable_sort(entries.begin(), entries.end(), [&](const LimitStatus* a, const LimitStatus* b) {
      return key_of(*a) < key_of(*b);
    });
    auto first = entries.begin();
    if (!req.page_token().empty()) {
      std::string decoded;
      std::vector<std::string> parts;
      if (absl::WebSafeBase64Unescape(req.page_token(), &decoded)) {
        parts = absl::StrSplit(decoded, absl::MaxSplits('\n', 1));
      }
      if (parts.size() != 2) {
        return absl::InvalidArgumentError(absl::StrCat(
            "page_token ", QuoteForError(req.page_token()),
            " is not one this server issued (pass next_page_token unchanged)"));
      }
      auto it = rank.find(parts[0]);
      if (it == rank.end()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "page_token names limit ", QuoteForError(parts[0]),
            ", which the credential no longer has (a reload removed it): start again without "
            "page_token"));
      }
      const Key after{it->second, parts[1]};
      first = std::upper_bound(entries.begin(), entries.end(), after,
                               [&](const Key& k, const LimitStatus* l) { return k < key_of(*l); });
    }
    const size_t left = static_cast<size_t>(entries.end() - first);
    const size_t n = std::min(left, *page_size);
    resp->mutable_limits()->Reserve(static_cast<int>(n));
    for (size_t i = 0; i < n; ++i) LimitStatusToProto(*first[i], resp->add_limits());
    if (left > n) {
      std::string token;
      absl::WebSafeBase64Escape(absl::StrCat(first[n - 1]->name, "\n", first[n - 1]->scope),
                                &token);
      resp->set_next_page_token(token);
    }
    TimeToProto(ledger_->clock()->Now(), resp->mutable_observed_at());
    return absl::OkStatus();
  }

  // page_size: 0 is kDefaultPageSize; above kMaxPageSize is kMaxPageSize (AIP-158).
  static absl::StatusOr<size_t> PageSize(int32_t requested) {
    if (requested < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("page_size must not be negative, got ", requested));
    }
    if (requested == 0) return kDefaultPageSize;
    return std::min<size_t>(static_cast<size_t>(requested), kMaxPageSize);
  }

  absl::Status HandleLeases(const v1::ListLeasesRequest& req, v1::ListLeasesResponse* resp) {
    if (!req.credential().empty()) {
      if (absl::Status s = ValidateName("credential", req.credential()); !s.ok()) return s;
      const std::shared_ptr<const ConfigSnapshot> snapshot = Snapshot();
      if (!snapshot->profile_of.contains(req.credential())) {
        return absl::NotFoundError(
            absl::StrCat("unknown credential ", QuoteForError(req.credential())));
      }
    }
    absl::StatusOr<size_t> page_size = PageSize(req.page_size());
    if (!page_size.ok()) return page_size.status();
    // Order: expiry, then id. The token is the last (expiry, id) answered: "<unix ns>.<id>".
    using Key = std::pair<int64_t, std::pair<uint64_t, uint64_t>>;
    auto key_of = [](const LeaseInfo& l) {
      return Key{absl::ToUnixNanos(l.expiry), {l.id.hi, l.id.lo}};
    };
    std::optional<Key> after;
    if (!req.page_token().empty()) {
      const std::vector<absl::string_view> parts = absl::StrSplit(req.page_token(), '.');
      int64_t ns = 0;
      absl::StatusOr<LeaseId> id = parts.size() == 2 ? LeaseId::Parse(parts[1])
                                                     : absl::InvalidArgumentError("");
      if (parts.size() != 2 || !absl::SimpleAtoi(parts[0], &ns) || !id.ok()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "page_token ", QuoteForError(req.page_token()),
            " is not one this server issued (pass next_page_token unchanged)"));
      }
      after = Key{ns, {id->hi, id->lo}};
    }
    std::vector<LeaseInfo> leases = ledger_->Leases(req.credential());
    if (after.has_value()) {
      leases.erase(std::remove_if(leases.begin(), leases.end(),
                                  [&](const LeaseInfo& l) { return !(*after < key_of(l)); }),
                   leases.end());
    }
    const size_t n = std::min(leases.size(), *page_size);
    std::partial_sort(leases.begin(), leases.begin() + n, leases.end(),
                      [&](const LeaseInfo& a, const LeaseInfo& b) { return key_of(a) < key_of(b); });
    resp->mutable_leases()->Reserve(static_cast<int>(n));
    for (size_t i = 0; i < n; ++i) LeaseToProto(leases[i], resp->add_leases());
    if (leases.size() > n) {
      const Key last = key_of(leases[n - 1]);
      resp->set_next_page_token(absl::StrCat(last.first, ".", leases[n - 1].id.ToString()));
    }
    return absl::OkStatus();
  }

  absl::Status HandleCredentials(const v1::ListCredentialsRequest& req,
                                 v1::ListCredentialsResponse* resp) {
    absl::StatusOr<size_t> page_size = PageSize(req.page_size());
    if (!page_size.ok()) return page_size.status();
    if (!req.page_token().empty()) {
      // The token is the last credential name answered.
      if (absl::Status s = ValidateName("page_token", req.page_token()); !s.ok()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "page_token ", QuoteForError(req.page_token()),
            " is not one this server issued (pass next_page_token unchanged)"));
      }
    }
    const Policy policy = ledger_->policy();
    std::vector<const CredentialSpec*> sorted;
    for (const CredentialSpec& c : policy.credentials) sorted.push_back(&c);
    std::sort(sorted.begin(), sorted.end(),
              [](const CredentialSpec* a, const CredentialSpec* b) { return a->name < b->name; });
    auto first = std::upper_bound(
        sorted.begin(), sorted.end(), req.page_token(),
        [](const std::string& token, const CredentialSpec* c) { return token < c->name; });
    if (req.page_token().empty()) first = sorted.begin();
    const size_t left = static_cast<size_t>(sorted.end() - first);
    const size_t n = std::min(left, *page_size);
    for (size_t i = 0; i < n; ++i) CredentialToProto(*first[i], resp->add_credentials());
    if (left > n) resp->set_next_page_token(first[n - 1]->name);
    if (!req.page_token().empty()) return absl::OkStatus();
    // Profiles, on the first page.
    const std::shared_ptr<const ConfigSnapshot> snapshot = Snapshot();
    std::map<std::string, v1::ProfileEntry> profiles;
    for (const v1::Profile& p : snapshot->profiles) {
      v1::ProfileEntry& e = profiles[p.name()];
      e.set_name(p.name());
      e.set_builtin(snapshot->builtin.contains(p.name()));
      *e.mutable_definition() = p;
    }
    for (const CredentialSpec* c : sorted) {
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
    Log(*log_, spdlog::level::info, "credential reset", {{"credential", req.credential()}});
    resp->set_credential(req.credential());
    absl::StatusOr<std::vector<LimitStatus>> usage = ledger_->Usage(req.credential());
    if (!usage.ok()) return usage.status();
    for (const LimitStatus& l : *usage) LimitStatusToProto(l, resp->add_limits());
    return absl::OkStatus();
  }

  // Serialized (reload_mu_): Admin.ReloadConfig, the file watch and SIGHUP may overlap, and the
  // file read last must be the one in force.
  absl::Status HandleReload(v1::ReloadConfigResponse* resp) ABSL_LOCKS_EXCLUDED(reload_mu_) {
    absl::MutexLock lock(&reload_mu_);
    absl::StatusOr<LoadedConfig> config = LoadConfigFile(options_.config_path, options_.config_limits);
    if (!config.ok()) {
      Log(*log_, spdlog::level::warn, "reload rejected",
          {{"config", options_.config_path}, {"error", config.status().message()}});
      return config.status();
    }
    const Policy* policy = &config->policy;
    if (absl::Status s = ledger_->Reload(*policy); !s.ok()) {
      Log(*log_, spdlog::level::warn, "reload rejected",
          {{"config", options_.config_path}, {"error", s.message()}});
      return s;
    }
    PublishSnapshot(*config);
    resp->set_source(options_.config_path);
    resp->set_credentials(static_cast<int32_t>(policy->credentials.size()));
    TimeToProto(ledger_->clock()->Now(), resp->mutable_loaded_at());
    Log(*log_, spdlog::level::info, "config reloaded",
        {{"config", options_.config_path}, {"credentials", policy->credentials.size()}});
    return absl::OkStatus();
  }

  // The configuration in force. Readers hold a reference for as long as they use it; a reload
  // swaps it, and the old one is freed when its last reader lets go (finding 4: every reload's
  // snapshot used to live as long as the server).
  std::shared_ptr<const ConfigSnapshot> Snapshot() const {
    return std::atomic_load_explicit(&snapshot_, std::memory_order_acquire);
  }

  void PublishSnapshot(const LoadedConfig& config) {
    std::shared_ptr<const ConfigSnapshot> snapshot = ConfigSnapshot::Build(config);
    std::atomic_store_explicit(&snapshot_, std::move(snapshot), std::memory_order_release);
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
    Log(*log_, spdlog::level::info, "config file changed; reloading",
        {{"config", options_.config_path}});
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
        Log(*log_, spdlog::level::debug, "expired leases dropped", {{"count", dropped}});
      }
      const absl::Time now = ledger_->clock()->Now();
      dedup_->Sweep(ToUnixNs(now));
      owners_.Prune(now);
      request_ids_.store(dedup_->size(), std::memory_order_relaxed);
      metrics_->SetResource("request_ids", request_ids_.load(std::memory_order_relaxed));
      metrics_->SetResourceLimit("request_ids", options_.max_request_ids);
      metrics_->SetResource("lease_owners", owners_.size());
      metrics_->SetResource("connections", listener_->OpenConnections());
      metrics_->SetResourceLimit("connections", MaxConnections());
      metrics_->SetResource("health_watchers", health_.watchers());
      metrics_->SetResourceLimit("health_watchers", options_.max_health_watchers);
      metrics_->SetResource("identity_waiters", waiters_.Largest());
      metrics_->SetResourceLimit("identity_waiters", options_.max_waiters_per_identity);
      if (absl::Now() - last_metrics_refresh_ >= options_.metrics_refresh) {
        last_metrics_refresh_ = absl::Now();
        metrics_->Refresh(*ledger_, now);
        if (store_->journal() != nullptr) {
          const StoreFiles files = store_->Files();
          metrics_->SetStateFileSizes(files.file_bytes, files.wal_bytes);
        }
      }
      WatchConfig();
      if (store_->journal() != nullptr && now - last_compact_ >= options_.compact_interval) {
        last_compact_ = now;
        if (absl::Status s = store_->journal()->Compact(ledger_->CompactionTimeNs()); !s.ok()) {
          metrics_->OnStoreError("compact");
          Log(*log_, spdlog::level::warn, "state file compaction failed",
              {{"path", store_->description()}, {"error", s.message()}});
        }
      }
    }
  }

  const ServerOptions options_;
  const std::shared_ptr<spdlog::logger> log_;
  // Before the ledger: callbacks the ledger still holds when destroyed give their place back.
  IdentityWaiters waiters_{options_.max_waiters_per_identity};
  // Destroyed in reverse: the ledger before the pumper that it wakes, and both before the
  // journal and dedup store they write to.
  const std::unique_ptr<Store> store_;
  DedupStore* const dedup_;  // store_'s
  const std::unique_ptr<Pumper> pumper_;
  const std::unique_ptr<Ledger> ledger_;

  absl::Mutex reload_mu_;
  std::shared_ptr<const ConfigSnapshot> snapshot_;  // std::atomic_load / atomic_store only

  ThrottleLog throttles_;             // the last throttles reported, for the status page
  std::unique_ptr<Metrics> metrics_;  // set by Listen()
  LeaseOwners owners_;                // who holds each lease, when auth is on
  // Upper bound on the request_id table's size (RequestIdRoom).
  std::atomic<int64_t> request_ids_{dedup_->size()};
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
  std::unique_ptr<Listener> listener_;  // destroyed after server_
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
  absl::StatusOr<LoadedConfig> config = LoadConfigFile(options.config_path, options.config_limits);
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
  StoreOptions store_options;
  store_options.path = options.state_path;
  store_options.reset_corrupt = options.reset_corrupt_state;
  store_options.synchronous_full = options.synchronous_full;
  absl::StatusOr<std::unique_ptr<Store>> store = OpenStore(store_options, ToUnixNs(clock->Now()));
  if (!store.ok()) return store.status();
  Journal* const journal = (*store)->journal();
  auto pumper = std::make_unique<Pumper>(clock);
  LedgerOptions ledger_options;
  ledger_options.journal = journal;
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
    Log(*ServerLogger(), spdlog::level::info, "state restored",
        {{"path", options.state_path},
         {"leases", (*ledger)->Leases("").size()},
         {"took", absl::FormatDuration(absl::Now() - began)}});
  }
  auto impl = std::make_unique<Impl>(options, *std::move(store), std::move(pumper),
                                     *std::move(ledger), *config);
  if (absl::Status s = impl->Listen(); !s.ok()) return s;
  return std::unique_ptr<QuotadServer>(new QuotadServer(std::move(impl)));
}

QuotadServer::QuotadServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

QuotadServer::~QuotadServer() { Shutdown(); }

int QuotadServer::port() const { return impl_->port(); }
int QuotadServer::metrics_port() const { return impl_->metrics_port(); }
std::string QuotadServer::address() const { return impl_->address(); }
Ledger* QuotadServer::ledger() const { return impl_->ledger(); }
int64_t QuotadServer::open_connections() const { return impl_->open_connections(); }
void QuotadServer::PauseAcceptingForTest(bool paused) { impl_->PauseAcceptingForTest(paused); }

absl::Status QuotadServer::ReloadConfig() {
  absl::MutexLock lock(&shutdown_mu_);
  if (shut_down_) return absl::UnavailableError("quotad is shutting down");
  return impl_->Reload();
}

void QuotadServer::Shutdown() {
  absl::MutexLock lock(&shutdown_mu_);
  if (shut_down_) return;
  shut_down_ = true;
  impl_->Shutdown();
}

}  // namespace quotad
