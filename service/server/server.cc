#include "service/server/server.h"

#include <spdlog/spdlog.h>
#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "service/config/config.h"
#include "service/core/ledger_backend.h"
#include "service/server/admin_service.h"
#include "service/server/background.h"
#include "service/server/idempotency.h"
#include "service/server/logging.h"
#include "service/server/metrics.h"
#include "service/server/quota_service.h"
#include "service/server/serving_config.h"
#include "service/server/status_page.h"
#include "service/server/transport.h"
#include "service/store/redis/redis_backend.h"
#include "service/store/store.h"

namespace quotad {
namespace {

// --max_connections, lowered when the descriptor limit could not hold that many and still
// leave room for the state file, the metrics endpoint and gRPC's own (64 spare).
int64_t MaxConnections(int64_t configured) {
  int64_t max = configured;
  if (struct rlimit nofile; getrlimit(RLIMIT_NOFILE, &nofile) == 0 &&
                            nofile.rlim_cur != RLIM_INFINITY) {
    max = std::min<int64_t>(max, std::max<int64_t>(1, static_cast<int64_t>(nofile.rlim_cur) - 64));
  }
  return max;
}

absl::Status CheckOptions(const ServerOptions& options) {
  if (options.config_path.empty()) {
    return absl::InvalidArgumentError("a configuration file is required (--config)");
  }
  return absl::OkStatus();
}

absl::Status CheckStateOptions(const ServerOptions& options) {
  if (!options.redis_url.empty()) {
    if (!options.state_path.empty() || options.memory_only) {
      return absl::InvalidArgumentError(absl::StrCat(
          options.memory_only ? "--memory_only" : "--state", " and --redis exclude each other: "
          "shared mode keeps counters, leases and request_ids in Redis (no state file)"));
    }
  } else if (options.state_path.empty() == !options.memory_only) {
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
  return absl::OkStatus();
}

}  // namespace

// Everything one server owns: the store, the wait-queue pump, the ledger (embedded mode) or the
// Redis backend (shared mode), the metrics, the services, the transport and the sweeper.
class QuotadServer::Impl {
 public:
  // Exactly one of `ledger` and `redis` is set.
  Impl(const ServerOptions& options, std::unique_ptr<Store> store,
       std::unique_ptr<WaitQueuePump> pump, std::unique_ptr<Ledger> ledger,
       std::unique_ptr<RedisBackend> redis, const LoadedConfig& config,
       std::unique_ptr<Metrics> metrics)
      : options_(options),
        log_(ServerLogger()),
        store_(std::move(store)),
        pump_(std::move(pump)),
        ledger_(std::move(ledger)),
        redis_(std::move(redis)),
        backend_(ledger_ != nullptr ? std::unique_ptr<QuotaBackend>(
                                          std::make_unique<LedgerBackend>(ledger_.get()))
                                    : nullptr),
        metrics_(std::move(metrics)),
        config_(config),
        sampler_(options.log_sample),
        request_ids_(&store_->dedup(), backend()->clock(), metrics_.get(),
                     RequestIdOptions{options.dedup_window, options.max_request_ids}),
        quota_(backend(), &request_ids_, metrics_.get(), &throttles_, &sampler_,
               QuotaServiceOptions{options.priority_ceiling, options.priority_identities,
                                   options.max_waiters_per_identity}),
        admin_(backend(), &config_, metrics_.get(), options.config_path,
               options.config_limits) {
    if (ledger_ != nullptr) pump_->Start(ledger_.get());
    if (redis_ != nullptr) {
      redis_->SetFailOpenObserver(
          [m = metrics_.get()](absl::string_view c) { m->OnFailOpenGrant(c); });
    }
  }

  ~Impl() {
    if (redis_ != nullptr) redis_->SetFailOpenObserver(nullptr);  // metrics_ dies first
    if (sweeper_ != nullptr) sweeper_->Stop();
    pump_->Stop();
  }

  absl::Status Listen(std::shared_ptr<grpc::ServerCredentials> credentials) {
    // Shared mode: the gauges and the status page read the embedded ledger, which is not
    // built there (not yet from Redis).
    if (ledger_ != nullptr) metrics_->Refresh(*ledger_, ledger_->clock()->Now());
    if (options_.status_page && ledger_ != nullptr) {
      metrics_->pages().SetHandler(
          [page = StatusPage(ledger_.get(), &throttles_)](const HttpRequest& r) {
            return page.Handle(r);
          });
    }
    TransportOptions transport;
    transport.listen_address = options_.listen_address;
    transport.credentials = std::move(credentials);
    transport.cq_threads = options_.cq_threads;
    transport.max_connections = MaxConnections(options_.max_connections);
    transport.listener_probe_interval = options_.listener_probe_interval;
    transport.listener_probe_failures = options_.listener_probe_failures;
    transport.on_listener_wedged = options_.on_listener_wedged;
    transport.max_health_watchers = options_.max_health_watchers;
    transport.drain_delay = options_.drain_delay;
    transport.shutdown_grace = options_.shutdown_grace;
    transport.answer_waiters = [ledger = ledger_.get(), redis = redis_.get()] {
      const absl::Status down = absl::UnavailableError("quotad is shutting down");
      if (ledger != nullptr) ledger->AnswerAllWaiters(down);
      if (redis != nullptr) redis->AnswerAllWaiters(down);  // shared mode's parked waiters
    };
    absl::StatusOr<std::unique_ptr<GrpcTransport>> started = GrpcTransport::Start(
        transport, &quota_, &admin_, &config_, metrics_.get(), &sampler_);
    if (!started.ok()) return started.status();
    transport_ = *std::move(started);
    if (redis_ != nullptr) {
      store_reachable_ = redis_->serving();
      transport_->SetStoreReachable(store_reachable_);
    }
    sweeper_ = std::make_unique<Sweeper>(backend()->clock(), options_.sweep_interval, SweepJobs());
    sweeper_->Start();
    Log(*log_, spdlog::level::info, "listening",
        {{"address", transport_->address()},
         {"completion_queues", transport_->completion_queues()},
         {"config", options_.config_path},
         {"state", redis_ != nullptr ? redis_->description() : store_->description()},
         {"tls", options_.tls.client_ca_path.empty() ? (TlsEnabled(options_.tls) ? "tls" : "off")
                                                     : "mutual"},
         {"auth", config_.Get()->auth->enabled() ? "tokens" : "off"},
         {"metrics_port", metrics_->port()},
         {"max_connections", MaxConnections(options_.max_connections)}});
    return absl::OkStatus();
  }

  void Shutdown() {
    Log(*log_, spdlog::level::info, "shutting down",
        {{"drain_delay", absl::FormatDuration(options_.drain_delay)},
         {"grace", absl::FormatDuration(options_.shutdown_grace)}});
    transport_->Shutdown();
    sweeper_->Stop();
    pump_->Stop();
    if (absl::Status s = store_->Flush(); !s.ok()) {
      metrics_->OnStoreError("flush");
      Log(*log_, spdlog::level::err, "state file flush failed",
          {{"path", store_->description()}, {"error", s.message()}});
    }
    Log(*log_, spdlog::level::info, "stopped");
  }

  // SIGHUP (QuotadServer::ReloadConfig).
  absl::Status Reload() { return admin_.Reload().status(); }

  int port() const { return transport_->port(); }
  const std::string& address() const { return transport_->address(); }
  int64_t open_connections() const { return transport_->open_connections(); }
  void PauseAcceptingForTest(bool paused) { transport_->PauseAcceptingForTest(paused); }
  int metrics_port() const { return metrics_->port(); }
  Ledger* ledger() const { return ledger_.get(); }

 private:
  QuotaBackend* backend() const {
    return redis_ != nullptr ? static_cast<QuotaBackend*>(redis_.get()) : backend_.get();
  }

  // The sweeper's jobs, in the order they run on each tick.
  std::vector<SweepJob> SweepJobs() {
    std::vector<SweepJob> jobs;
    if (redis_ != nullptr) {
      // Health follows Redis; the library is loaded again if a restarted Redis lost it.
      jobs.push_back({"redis_health", absl::ZeroDuration(), [this] {
                        const bool reachable = redis_->CheckHealth();
                        if (reachable == store_reachable_) return;
                        store_reachable_ = reachable;
                        transport_->SetStoreReachable(reachable);
                        Log(*log_, reachable ? spdlog::level::info : spdlog::level::err,
                            reachable ? "shared store reachable; SERVING"
                                      : "shared store unreachable; NOT_SERVING, failing closed",
                            {{"redis", redis_->description()}, {"primary", redis_->primary()}});
                      }});
    }
    if (ledger_ != nullptr) {
      jobs.push_back({"expire_leases", absl::ZeroDuration(), [this] {
                      const int64_t dropped = ledger_->Sweep();
                      if (dropped > 0 && log_->should_log(spdlog::level::debug)) {
                        Log(*log_, spdlog::level::debug, "expired leases dropped",
                            {{"count", dropped}});
                      }
                    }});
    }
    jobs.push_back({"request_ids", absl::ZeroDuration(), [this] {
                      metrics_->SetResource("request_ids", request_ids_.Sweep());
                      metrics_->SetResourceLimit("request_ids", request_ids_.max_entries());
                    }});
    jobs.push_back({"resource_gauges", absl::ZeroDuration(), [this] {
                      metrics_->SetResource("connections", transport_->open_connections());
                      metrics_->SetResourceLimit("connections",
                                                 MaxConnections(options_.max_connections));
                      metrics_->SetResource("health_watchers", transport_->health_watchers());
                      metrics_->SetResourceLimit("health_watchers", options_.max_health_watchers);
                      metrics_->SetResource("identity_waiters", quota_.LargestIdentityWaiters());
                      metrics_->SetResourceLimit("identity_waiters",
                                                 options_.max_waiters_per_identity);
                    }});
    jobs.push_back({"metrics_refresh", options_.metrics_refresh, [this] {
                      if (ledger_ != nullptr) metrics_->Refresh(*ledger_, ledger_->clock()->Now());
                      if (store_->journal() != nullptr) {
                        const StoreFiles files = store_->Files();
                        metrics_->SetStateFileSizes(files.file_bytes, files.wal_bytes);
                      }
                    }});
    if (options_.config_watch_interval > absl::ZeroDuration()) {
      // A file that fails to load is not tried again until it changes again.
      jobs.push_back({"config_watch", options_.config_watch_interval, [this] {
                        if (!config_watch_.Changed()) return;
                        Log(*log_, spdlog::level::info, "config file changed; reloading",
                            {{"config", options_.config_path}});
                        admin_.Reload().IgnoreError();
                      }});
    }
    if (store_->journal() != nullptr) {
      jobs.push_back({"compaction", options_.compact_interval, [this] {
                        absl::Status s = store_->journal()->Compact(ledger_->CompactionTimeNs());
                        if (!s.ok()) {
                          metrics_->OnStoreError("compact");
                          Log(*log_, spdlog::level::warn, "state file compaction failed",
                              {{"path", store_->description()}, {"error", s.message()}});
                        }
                      }});
    }
    return jobs;
  }

  // Destroyed in reverse: the sweeper and the transport first, the store last. No call is
  // parked in the ledger by then (Shutdown answered them; a failed start took no call), so the
  // services may go before it.
  const ServerOptions options_;
  const std::shared_ptr<spdlog::logger> log_;
  const std::unique_ptr<Store> store_;         // the ledger's journal and the request_ids
  const std::unique_ptr<WaitQueuePump> pump_;  // the ledger wakes it
  const std::unique_ptr<Ledger> ledger_;          // embedded mode
  const std::unique_ptr<RedisBackend> redis_;      // shared mode
  const std::unique_ptr<QuotaBackend> backend_;   // embedded mode: over ledger_
  bool store_reachable_ = false;                   // shared mode: as last told to health
  ThrottleLog throttles_;                  // the last throttles reported, for the status page
  const std::unique_ptr<Metrics> metrics_;  // its status page reads the ledger and throttles_
  ConfigInForce config_;
  LogSampler sampler_;
  RequestIds request_ids_;
  QuotaService quota_;
  AdminService admin_;
  // The version loaded last; taken at construction, around the time the config was read.
  ConfigFileWatch config_watch_{options_.config_path};
  std::unique_ptr<GrpcTransport> transport_;  // set by Listen()
  std::unique_ptr<Sweeper> sweeper_;          // set by Listen()
};

absl::StatusOr<std::unique_ptr<QuotadServer>> QuotadServer::Start(const ServerOptions& options) {
  if (absl::Status s = CheckOptions(options); !s.ok()) return s;
  absl::StatusOr<LoadedConfig> config = LoadConfigFile(options.config_path, options.config_limits);
  if (!config.ok()) return config.status();
  if (absl::Status s = CheckStateOptions(options); !s.ok()) return s;
  Clock* clock = options.clock != nullptr ? options.clock : Clock::Real();
  StoreOptions store_options;
  store_options.path = options.state_path;
  store_options.reset_corrupt = options.reset_corrupt_state;
  store_options.synchronous_full = options.synchronous_full;
  // Shared mode: the store keeps only the request_ids of Release, in memory.
  absl::StatusOr<std::unique_ptr<Store>> store =
      OpenStore(store_options, absl::ToUnixNanos(clock->Now()));
  if (!store.ok()) return store.status();
  Journal* const journal = (*store)->journal();
  auto pump = std::make_unique<WaitQueuePump>(clock);
  std::unique_ptr<RedisBackend> redis;
  absl::StatusOr<std::unique_ptr<Ledger>> ledger = std::unique_ptr<Ledger>();
  if (!options.redis_url.empty()) {
    RedisBackendOptions redis_options;
    redis_options.url = options.redis_url;
    redis_options.call_timeout = options.redis_timeout;
    redis_options.connections = options.redis_connections;
    redis_options.dedup_window = options.dedup_window;
    redis_options.wait_replicas = options.redis_wait_replicas;
    redis_options.wait_timeout = options.redis_wait_timeout;
    absl::StatusOr<std::unique_ptr<RedisBackend>> created =
        RedisBackend::Create(config->policy, clock, redis_options);
    if (!created.ok()) {
      return absl::Status(created.status().code(), absl::StrCat("config ", options.config_path,
                                                                ": ", created.status().message()));
    }
    redis = *std::move(created);
    if (!redis->serving()) {
      Log(*ServerLogger(), spdlog::level::warn, "shared store unreachable at start; NOT_SERVING",
          {{"redis", redis->description()}});
    }
  }
  LedgerOptions ledger_options;
  ledger_options.journal = journal;
  ledger_options.reserve_fraction = options.reserve_fraction;
  ledger_options.max_waiters_per_credential = options.max_waiters_per_credential;
  ledger_options.wake = [p = pump.get()](absl::Time t) { p->WakeBy(t); };
  if (redis == nullptr) ledger = Ledger::Create(config->policy, clock, ledger_options);
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
    int64_t leases = 0;
    for (const auto& [credential, n] : (*ledger)->LeaseCounts()) leases += n;
    Log(*ServerLogger(), spdlog::level::info, "state restored",
        {{"path", options.state_path},
         {"leases", leases},
         {"took", absl::FormatDuration(absl::Now() - began)}});
  }
  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> credentials =
      MakeServerCredentials(options.tls);
  if (!credentials.ok()) return credentials.status();
  absl::StatusOr<std::unique_ptr<Metrics>> metrics =
      Metrics::Create(options.metrics_listen, options.metrics_http);
  if (!metrics.ok() && options.metrics_best_effort) {
    Log(*ServerLogger(), spdlog::level::warn, "metrics endpoint disabled",
        {{"listen", options.metrics_listen}, {"error", metrics.status().message()}});
    metrics = Metrics::Create("", options.metrics_http);
  }
  if (!metrics.ok()) return metrics.status();
  auto impl = std::make_unique<Impl>(options, *std::move(store), std::move(pump),
                                     *std::move(ledger), std::move(redis), *config,
                                     *std::move(metrics));
  if (absl::Status s = impl->Listen(*std::move(credentials)); !s.ok()) return s;
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
