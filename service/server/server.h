#ifndef QUOTAD_SERVICE_SERVER_SERVER_H_
#define QUOTAD_SERVICE_SERVER_SERVER_H_

#include <memory>
#include <functional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "service/core/clock.h"
#include "service/config/config.h"
#include "service/core/ledger.h"
#include "service/server/metrics.h"
#include "service/server/tls.h"

namespace quotad {

struct ServerOptions {
  // The YAML configuration, read at start and again by Admin.ReloadConfig. Required.
  std::string config_path;
  // host:port; port 0 picks a free one (see QuotadServer::port()).
  std::string listen_address = "0.0.0.0:50051";
  // Completion queues, one thread each. 0: one per hardware thread.
  int cq_threads = 0;
  // How often expired leases are dropped (Ledger::Sweep()).
  absl::Duration sweep_interval = absl::Seconds(1);
  // On Shutdown(): how long health reports NOT_SERVING before the listener closes (so that load
  // balancers notice), and how long in-flight calls then get to finish before they are cancelled.
  absl::Duration drain_delay = absl::ZeroDuration();
  absl::Duration shutdown_grace = absl::Seconds(10);
  // Time for the ledger, and the timers of the wait-queue pump and the sweeper (a FakeClock
  // drives them in tests). Not owned; must outlive the server. nullptr: the real clock.
  Clock* clock = nullptr;

  // Durability. Exactly one of: `state_path`, the SQLite file of high-water marks, leases and
  // idempotency answers (created when missing, read back before serving), or `memory_only`
  // (everything is lost on exit). Neither is an error: memory-only only when asked for.
  std::string state_path;
  bool memory_only = false;
  // Shared mode: redis://HOST:PORT, or redis-sentinel://HOST:PORT[,HOST:PORT...]/MASTERNAME (the
  // primary the sentinels name, followed through a failover), or
  // redis-cluster://HOST:PORT[,...] (each credential on its slot's master). Counters, leases and
  // request_ids
  // live in that Redis and
  // every replica pointing at it decides as one quotad would (see
  // service/store/redis/README.md for what is built). Excludes `state_path` and `memory_only`.
  // Health is NOT_SERVING while Redis cannot be reached, and decisions fail closed
  // (UNAVAILABLE, nothing granted). An Acquire that may wait waits in a queue in Redis, fair
  // across replicas.
  std::string redis_url;
  // Shared mode: the time one Redis call may take, and the connections calls share.
  absl::Duration redis_timeout = absl::Seconds(1);
  int redis_connections = 2;
  // Shared mode: > 0, a grant is answered only once that many replicas hold it (WAIT); fewer
  // within redis_wait_timeout: UNAVAILABLE, nothing handed out.
  int redis_wait_replicas = 0;
  absl::Duration redis_wait_timeout = absl::Milliseconds(100);
  // Move a corrupt or foreign state file aside (<path>.corrupt-<time>) and start empty, instead
  // of failing start-up.
  bool reset_corrupt_state = false;
  // fsync every commit of the state file (survives power loss, not only kill -9).
  bool synchronous_full = false;
  // Units reserved ahead per counter, as a fraction of its capacity (LedgerOptions): the most a
  // crash can leave unused is one such block per counter and window.
  double reserve_fraction = 0.01;
  // How long the answer to a request_id is kept for retries.
  absl::Duration dedup_window = absl::Minutes(10);
  // How often the state file drops what no longer matters (Journal::Compact).
  absl::Duration compact_interval = absl::Minutes(1);
  // How often the config file is checked for a change (a new inode, size or mtime: a Kubernetes
  // ConfigMap update swaps a symlink), which is then applied like Admin.ReloadConfig: a bad
  // file is rejected, logged and the config in force kept. Zero turns the watch off.
  absl::Duration config_watch_interval = absl::Seconds(2);
  // Bounds on the config file (size, YAML nodes once aliases are expanded, aliases), checked at
  // start and on every reload.
  ConfigLimits config_limits;
  // At most this many request_id answers are kept; beyond, an Acquire or Release with a new
  // request_id is RESOURCE_EXHAUSTED (quotad_limit_hits_total{limit="request_ids"}).
  int64_t max_request_ids = 1000000;
  // At most this many Acquire calls wait per credential; beyond, RESOURCE_EXHAUSTED.
  int64_t max_waiters_per_credential = 10000;
  // At most this many Acquire calls of one identity wait at once (over every credential), so
  // that one identity cannot fill a credential's queue for the others; beyond,
  // RESOURCE_EXHAUSTED naming the identity and the limit.
  int64_t max_waiters_per_identity = 1000;
  // Acquire priorities above `priority_ceiling` are for admins and `priority_identities` only
  // (PERMISSION_DENIED naming the value for anyone else). Without auth, the caller's identity
  // is "anonymous".
  int32_t priority_ceiling = 100;
  std::vector<std::string> priority_identities;
  // At most this many grpc.health.v1.Health/Watch streams open at once; beyond,
  // RESOURCE_EXHAUSTED.
  int64_t max_health_watchers = 1000;
  // At most this many gRPC connections open at once (quotad accepts them itself, see
  // listener.h); one more is closed at once. Also lowered at start-up to leave free descriptors
  // below the RLIMIT_NOFILE soft limit.
  int64_t max_connections = 10000;
  // Self-probe of the gRPC listener: dialled every `listener_probe_interval` (zero: off); after
  // `listener_probe_failures` failures in a row health goes NOT_SERVING and
  // `on_listener_wedged` runs (main: a clean shutdown and exit 3, for the supervisor to restart).
  absl::Duration listener_probe_interval = absl::Seconds(10);
  int listener_probe_failures = 3;
  std::function<void()> on_listener_wedged;

  // Transport security of the gRPC port (see tls.h): plaintext unless a certificate is given;
  // mutual TLS with tls.client_ca_path. Identities and access rules come from the config's
  // `auth` section (see auth.h); without one, every caller may do everything.
  TlsOptions tls;
  // host:port of the Prometheus /metrics endpoint (port 0 picks one, see metrics_port());
  // empty: no endpoint (metrics are still counted).
  std::string metrics_listen;
  // Worker threads and request timeout of the metrics endpoint.
  MetricsHttpOptions metrics_http;
  // When metrics_listen cannot be bound: false fails start-up; true logs a warning and serves
  // without the endpoint (main sets it while --metrics_listen is left at its default, so that
  // several quotad processes on one host, as in tests, still start).
  bool metrics_best_effort = false;
  // How often the gauges (remaining units, live leases, queue depth, cooldowns) are re-read.
  absl::Duration metrics_refresh = absl::Seconds(5);
  // Serve the operator's status page (/ and /api/usage, see status_page.h) on the metrics
  // listener.
  bool status_page = true;
  // One per-call log line (level info) for 1 call in `log_sample`; 0: none.
  int64_t log_sample = 0;
};

// The quotad gRPC server: the Quota and Admin services (quota_service.h, admin_service.h) behind
// the asynchronous CompletionQueue transport (transport.h), grpc.health.v1.Health, server
// reflection, a sweeper for expired leases, idempotency answers, metrics, the config file and
// the state file, and a clock timer that serves the wait queues (background.h). Waiting Acquire
// calls are parked in the ledger without holding a thread.
//
// Handlers run on the completion-queue threads and never block on I/O: decisions take only the
// ledger's short per-credential locks; ReloadConfig reads its file on a separate thread.
// Thread-safe. Owns the ledger and every thread it starts.
class QuotadServer {
 public:
  // Loads the configuration, opens the state file and reads it back, builds the ledger, binds
  // the port and starts serving. Fails (kInvalidArgument / kNotFound for a bad config or
  // options, the store's kDataLoss / kFailedPrecondition / kPermissionDenied for a state file it
  // cannot use, kUnavailable for an address that cannot be bound) without leaving anything
  // running.
  static absl::StatusOr<std::unique_ptr<QuotadServer>> Start(const ServerOptions& options);

  // Shuts down if still running.
  ~QuotadServer();

  QuotadServer(const QuotadServer&) = delete;
  QuotadServer& operator=(const QuotadServer&) = delete;

  // The bound port, and "host:port" with it.
  int port() const;
  std::string address() const;

  // The bound port of the metrics endpoint; 0 without one.
  int metrics_port() const;

  // gRPC connections open now (handed to gRPC and not closed yet).
  int64_t open_connections() const;

  // Tests only: the accept loop stops taking connections (as a listener wedged by EMFILE).
  void PauseAcceptingForTest(bool paused);

  // The ledger the services decide with; nullptr in shared mode (decisions are Redis's).
  Ledger* ledger() const;

  // Reads the config file again and applies it, as Admin.ReloadConfig does (SIGHUP). A bad file
  // is rejected (its error returned and logged) and the config in force kept; kUnavailable
  // after Shutdown(). Blocks while the file is read; thread-safe.
  absl::Status ReloadConfig() ABSL_LOCKS_EXCLUDED(shutdown_mu_);

  // Health goes NOT_SERVING, new calls are refused, waiting Acquire calls are answered
  // UNAVAILABLE, in-flight calls finish (cancelled after shutdown_grace), then every thread is
  // joined and the state file written. Idempotent; blocks; call it from a thread that
  // is not a completion-queue thread.
  void Shutdown() ABSL_LOCKS_EXCLUDED(shutdown_mu_);

 private:
  class Impl;
  explicit QuotadServer(std::unique_ptr<Impl> impl);

  std::unique_ptr<Impl> impl_;
  absl::Mutex shutdown_mu_;
  bool shut_down_ ABSL_GUARDED_BY(shutdown_mu_) = false;
};

// "host:port" for `listen` ("0.0.0.0:0", "[::]:0", "localhost:0") with the port replaced.
std::string BoundAddress(const std::string& listen, int port);

}  // namespace quotad

#endif  // QUOTAD_SERVICE_SERVER_SERVER_H_
