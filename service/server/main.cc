// quotad: the quota coordinator's gRPC server.
//
//   quotad --config=quotad.yaml --state=/var/lib/quotad/quotad.db [--listen=0.0.0.0:50051]
//   quotad --config=quotad.yaml --memory_only
//   quotad --config=quotad.yaml --redis=redis://redis:6379   (shared mode: several replicas)
//
// Exits non-zero with a message on a bad configuration, a state file it cannot use (corrupt,
// foreign, unreadable; --reset_corrupt_state moves a corrupt one aside), neither --state nor
// --memory_only (or --redis), or an address that cannot be bound.
// SIGTERM/SIGINT: health goes NOT_SERVING, new calls are refused, waiting Acquire calls are
// answered UNAVAILABLE, in-flight calls finish, the state file is written, exit 0.
// SIGHUP: the config file is read again and applied, as Admin.ReloadConfig (a bad file is
// rejected and logged, the config in force kept); quotad keeps running.

#include <signal.h>
#include <sys/resource.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <vector>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "service/server/logging.h"
#include "service/server/server.h"

ABSL_FLAG(std::string, config, "", "Path of the YAML configuration (required).");
ABSL_FLAG(std::string, listen, "0.0.0.0:50051",
          "host:port to serve on; port 0 picks a free port (logged as `listening address=`).");
ABSL_FLAG(std::string, log_level, "info", "trace, debug, info, warn, error or off.");
ABSL_FLAG(int, cq_threads, 0, "Completion-queue threads; 0: one per hardware thread.");
ABSL_FLAG(absl::Duration, sweep_interval, absl::Seconds(1),
          "How often expired leases are dropped.");
ABSL_FLAG(absl::Duration, drain_delay, absl::ZeroDuration(),
          "On SIGTERM: how long health reports NOT_SERVING before the listener closes.");
ABSL_FLAG(absl::Duration, shutdown_grace, absl::Seconds(10),
          "On SIGTERM: how long in-flight calls get to finish before they are cancelled.");
ABSL_FLAG(std::string, state, "",
          "SQLite file of counters' high-water marks, leases and idempotency answers (created "
          "when missing, read back at start). Required unless --memory_only.");
ABSL_FLAG(bool, memory_only, false,
          "Keep everything in memory only: counters and leases are lost on exit. Excludes "
          "--state.");
ABSL_FLAG(bool, reset_corrupt_state, false,
          "Move a corrupt or foreign --state file aside (<path>.corrupt-<time>) and start empty "
          "instead of refusing to start.");
ABSL_FLAG(bool, state_fsync, false,
          "fsync every commit of --state (survives power loss, not only a crash of quotad).");
ABSL_FLAG(double, reserve_fraction, 0.01,
          "Units written ahead per counter, as a fraction of its capacity (at least 1 unit, at "
          "most 1000): a crash can leave at most this block of each window unused.");
ABSL_FLAG(absl::Duration, config_watch_interval, absl::Seconds(2),
          "How often --config is checked for a change, which is then reloaded (a bad one is "
          "rejected and the one in force kept); 0 turns the watch off.");
ABSL_FLAG(std::string, redis, "",
          "Shared mode: redis://HOST:PORT, or redis-sentinel://HOST:PORT[,HOST:PORT...]/MASTERNAME "
          "(the primary the sentinels name, followed through a failover), or "
          "redis-cluster://HOST:PORT[,HOST:PORT...] (a Redis Cluster: each credential on the "
          "master of its hash slot; no --redis_wait_replicas). Counters, leases and "
          "request_ids live in that Redis "
          "and every replica pointing at it decides as one quotad; excludes --state and "
          "--memory_only. Health is NOT_SERVING while Redis is unreachable (calls fail closed: "
          "UNAVAILABLE). An Acquire that may wait waits in a queue in Redis, fair across "
          "replicas.");
ABSL_FLAG(absl::Duration, redis_timeout, absl::Seconds(1),
          "Shared mode: the time one Redis call may take before the request fails closed.");
ABSL_FLAG(int, redis_wait_replicas, 0,
          "Shared mode: a grant is answered only once this many replicas acknowledged it (WAIT "
          "after each decision); fewer within --redis_wait_timeout: UNAVAILABLE, nothing "
          "granted. 0: answered once the primary has it (a failover may lose it).");
ABSL_FLAG(absl::Duration, redis_wait_timeout, absl::Milliseconds(100),
          "Shared mode, with --redis_wait_replicas: how long WAIT waits for the replicas.");
ABSL_FLAG(absl::Duration, dedup_window, absl::Minutes(10),
          "How long the answer to an Acquire/Release request_id is kept for retries.");
ABSL_FLAG(std::string, tls_cert, "",
          "PEM certificate chain of the gRPC port. With --tls_key: TLS; without: plaintext.");
ABSL_FLAG(std::string, tls_key, "", "PEM private key (unencrypted) of --tls_cert.");
ABSL_FLAG(std::string, tls_client_ca, "",
          "PEM CA bundle: mutual TLS, every client must present a certificate it signed.");
ABSL_FLAG(absl::Duration, tls_refresh, absl::Minutes(1),
          "How often the TLS files are read again (rotation without restart).");
ABSL_FLAG(std::string, metrics_listen, "127.0.0.1:9090",
          "host:port of the Prometheus /metrics endpoint (plain HTTP, no auth: loopback unless "
          "told otherwise, e.g. 0.0.0.0:9090 behind a NetworkPolicy); empty: none.");
ABSL_FLAG(int, metrics_threads, 4,
          "Worker threads of the /metrics endpoint (a slow client holds one).");
ABSL_FLAG(absl::Duration, metrics_request_timeout, absl::Seconds(5),
          "How long the /metrics endpoint waits on one request's reads and writes.");
ABSL_FLAG(int64_t, max_config_bytes, 4 << 20,
          "Largest config file accepted (at start and on reload).");
ABSL_FLAG(int64_t, max_config_nodes, 500000,
          "Most YAML nodes a config file may hold, counting each alias as what it names.");
ABSL_FLAG(int64_t, max_config_aliases, 1000, "Most YAML aliases (*name) a config file may hold.");
ABSL_FLAG(absl::Duration, metrics_refresh, absl::Seconds(5),
          "How often the gauges (remaining units, live leases, queue depth) are re-read.");
ABSL_FLAG(bool, status_page, true,
          "Serve the operator's status page (/ and /api/usage) on --metrics_listen.");
ABSL_FLAG(std::string, log_format, "text", "text (key=value) or json (one object per line).");
ABSL_FLAG(int64_t, max_request_ids, 1000000,
          "Most request_id answers kept (Acquire and Release retries, --dedup_window); beyond, a "
          "call with a new request_id is RESOURCE_EXHAUSTED (calls without one still work).");
ABSL_FLAG(int64_t, max_connections, 10000,
          "Most gRPC connections open at once; one more is closed at once. Lowered at start-up "
          "to the file descriptor limit minus 64.");
ABSL_FLAG(absl::Duration, listener_probe_interval, absl::Seconds(10),
          "How often quotad dials its own gRPC port to check that it still accepts; 0: never.");
ABSL_FLAG(int, listener_probe_failures, 3,
          "Failed self-probes in a row after which quotad reports NOT_SERVING, shuts down "
          "cleanly and exits 3 (for its supervisor to restart it).");
ABSL_FLAG(int64_t, max_waiters_per_identity, 1000,
          "Most Acquire calls one identity may have waiting at once (over every credential).");
ABSL_FLAG(int64_t, max_waiters_per_credential, 10000,
          "Most Acquire calls waiting in one credential's queue.");
ABSL_FLAG(int32_t, priority_ceiling, 100,
          "Highest Acquire priority anyone may use; above it only admins and "
          "--priority_identities.");
ABSL_FLAG(std::vector<std::string>, priority_identities, {},
          "Identities (comma-separated; \"anonymous\" without auth) allowed priorities above "
          "--priority_ceiling.");
ABSL_FLAG(int64_t, max_health_watchers, 1000,
          "Most grpc.health.v1.Health/Watch streams open at once.");
ABSL_FLAG(int64_t, log_sample, 0,
          "Log one line per call for 1 call in N (info level); 0: no per-call lines.");

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "quotad --config=FILE (--state=FILE | --memory_only | --redis=redis://HOST:PORT\n"
      "       | --redis=redis-sentinel://HOST:PORT[,HOST:PORT...]/MASTERNAME\n"
      "       | --redis=redis-cluster://HOST:PORT[,HOST:PORT...])\n"
      "       [--listen=HOST:PORT] [--log_level=info]\n"
      "Coordinates the use of rate-limited upstream API keys over gRPC.");
  absl::ParseCommandLine(argc, argv);
  // Debian's Abseil checks every Mutex acquisition for lock-order cycles (a graph update per
  // lock, visible in profiles of the Acquire path). Lock order is checked by the clang
  // -Wthread-safety build and the tests instead.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);

  auto logger = spdlog::stderr_color_mt("quotad");
  spdlog::set_default_logger(logger);
  quotad::LogFormat log_format;
  if (absl::Status s = quotad::ParseLogFormat(absl::GetFlag(FLAGS_log_format), &log_format);
      !s.ok()) {
    std::fprintf(stderr, "quotad: %s\n", std::string(s.message()).c_str());
    return 2;
  }
  quotad::ApplyLogFormat(log_format);
  const std::string level_name = absl::GetFlag(FLAGS_log_level);
  const spdlog::level::level_enum level = spdlog::level::from_str(level_name);
  if (level == spdlog::level::off && level_name != "off") {
    std::fprintf(stderr,
                 "quotad: --log_level=%s is not one of trace, debug, info, warn, error, off\n",
                 level_name.c_str());
    return 2;
  }
  spdlog::set_level(level);
  spdlog::flush_on(spdlog::level::trace);

  // File descriptors (finding 2 of issue 18): every connection holds one, and a listener that
  // hits EMFILE may stop accepting for good (a gRPC behaviour). Raise the soft limit to the hard
  // one and say what it is.
  if (struct rlimit nofile; getrlimit(RLIMIT_NOFILE, &nofile) == 0) {
    const rlim_t before = nofile.rlim_cur;
    if (nofile.rlim_cur < nofile.rlim_max) {
      nofile.rlim_cur = nofile.rlim_max;
      if (setrlimit(RLIMIT_NOFILE, &nofile) != 0) nofile.rlim_cur = before;
    }
    quotad::Log(*logger, spdlog::level::info, "file descriptor limit",
                {{"soft_before", static_cast<uint64_t>(before)},
                 {"soft", static_cast<uint64_t>(nofile.rlim_cur)},
                 {"hard", static_cast<uint64_t>(nofile.rlim_max)}});
  }

  // Signals are taken by sigwait() below, so block them before any thread starts.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  quotad::ServerOptions options;
  options.config_path = absl::GetFlag(FLAGS_config);
  options.listen_address = absl::GetFlag(FLAGS_listen);
  options.cq_threads = absl::GetFlag(FLAGS_cq_threads);
  options.sweep_interval = absl::GetFlag(FLAGS_sweep_interval);
  options.drain_delay = absl::GetFlag(FLAGS_drain_delay);
  options.shutdown_grace = absl::GetFlag(FLAGS_shutdown_grace);
  options.state_path = absl::GetFlag(FLAGS_state);
  options.memory_only = absl::GetFlag(FLAGS_memory_only);
  options.redis_url = absl::GetFlag(FLAGS_redis);
  options.redis_timeout = absl::GetFlag(FLAGS_redis_timeout);
  options.redis_wait_replicas = absl::GetFlag(FLAGS_redis_wait_replicas);
  options.redis_wait_timeout = absl::GetFlag(FLAGS_redis_wait_timeout);
  options.reset_corrupt_state = absl::GetFlag(FLAGS_reset_corrupt_state);
  options.synchronous_full = absl::GetFlag(FLAGS_state_fsync);
  options.reserve_fraction = absl::GetFlag(FLAGS_reserve_fraction);
  options.dedup_window = absl::GetFlag(FLAGS_dedup_window);
  options.config_watch_interval = absl::GetFlag(FLAGS_config_watch_interval);
  options.tls.cert_path = absl::GetFlag(FLAGS_tls_cert);
  options.tls.key_path = absl::GetFlag(FLAGS_tls_key);
  options.tls.client_ca_path = absl::GetFlag(FLAGS_tls_client_ca);
  options.tls.refresh_interval = absl::GetFlag(FLAGS_tls_refresh);
  options.metrics_listen = absl::GetFlag(FLAGS_metrics_listen);
  options.metrics_best_effort = options.metrics_listen == "127.0.0.1:9090";
  options.metrics_http.threads = absl::GetFlag(FLAGS_metrics_threads);
  options.metrics_http.request_timeout = absl::GetFlag(FLAGS_metrics_request_timeout);
  options.config_limits.max_bytes = absl::GetFlag(FLAGS_max_config_bytes);
  options.config_limits.yaml.max_nodes = absl::GetFlag(FLAGS_max_config_nodes);
  options.config_limits.yaml.max_aliases = absl::GetFlag(FLAGS_max_config_aliases);
  if (options.config_limits.max_bytes < 1 || options.config_limits.yaml.max_nodes < 1 ||
      options.config_limits.yaml.max_aliases < 0) {
    std::fprintf(stderr,
                 "quotad: --max_config_bytes and --max_config_nodes must be >= 1, "
                 "--max_config_aliases >= 0\n");
    return 2;
  }
  options.metrics_refresh = absl::GetFlag(FLAGS_metrics_refresh);
  options.status_page = absl::GetFlag(FLAGS_status_page);
  options.log_sample = absl::GetFlag(FLAGS_log_sample);
  options.max_request_ids = absl::GetFlag(FLAGS_max_request_ids);
  options.max_connections = absl::GetFlag(FLAGS_max_connections);
  options.listener_probe_interval = absl::GetFlag(FLAGS_listener_probe_interval);
  options.listener_probe_failures = absl::GetFlag(FLAGS_listener_probe_failures);
  options.max_waiters_per_identity = absl::GetFlag(FLAGS_max_waiters_per_identity);
  options.max_waiters_per_credential = absl::GetFlag(FLAGS_max_waiters_per_credential);
  options.priority_ceiling = absl::GetFlag(FLAGS_priority_ceiling);
  options.priority_identities = absl::GetFlag(FLAGS_priority_identities);
  options.max_health_watchers = absl::GetFlag(FLAGS_max_health_watchers);
  if (options.max_connections < 1 || options.max_waiters_per_identity < 1 ||
      options.max_waiters_per_credential < 1 || options.max_health_watchers < 0 ||
      options.listener_probe_failures < 1 ||
      options.listener_probe_interval < absl::ZeroDuration()) {
    std::fprintf(stderr,
                 "quotad: --max_connections, --max_waiters_per_identity, "
                 "--max_waiters_per_credential and --listener_probe_failures must be >= 1, "
                 "--max_health_watchers >= 0, --listener_probe_interval >= 0\n");
    return 2;
  }
  // The self-probe found the listener wedged: shut down cleanly (final flush) and exit 3.
  static std::atomic<bool> wedged{false};
  options.on_listener_wedged = [] {
    wedged.store(true);
    kill(getpid(), SIGTERM);
  };
  if (options.log_sample < 0) {
    std::fprintf(stderr, "quotad: --log_sample must be >= 0\n");
    return 2;
  }
  if (options.sweep_interval <= absl::ZeroDuration()) {
    std::fprintf(stderr, "quotad: --sweep_interval must be positive\n");
    return 2;
  }

  absl::StatusOr<std::unique_ptr<quotad::QuotadServer>> server =
      quotad::QuotadServer::Start(options);
  if (!server.ok()) {
    quotad::Log(*logger, spdlog::level::err, "start failed", {{"error", server.status().message()}});
    std::fprintf(stderr, "quotad: %s\n", std::string(server.status().message()).c_str());
    return 1;
  }

  int signal_number = 0;
  for (;;) {
    sigwait(&signals, &signal_number);
    if (signal_number != SIGHUP) break;
    quotad::Log(*logger, spdlog::level::info, "signal received; reloading the config",
                {{"signal", "SIGHUP"}});
    // The outcome is logged by the reload itself (config reloaded / reload rejected).
    (*server)->ReloadConfig().IgnoreError();
  }
  quotad::Log(*logger, spdlog::level::info, "signal received",
              {{"signal", signal_number == SIGTERM ? "SIGTERM" : "SIGINT"}});
  (*server)->Shutdown();
  server->reset();
  if (wedged.load()) {
    std::fprintf(stderr, "quotad: the gRPC listener stopped accepting connections; exit 3\n");
    return 3;
  }
  return 0;
}
