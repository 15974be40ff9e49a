#ifndef QUOTAD_TESTS_REDIS_REDIS_HARNESS_H_
#define QUOTAD_TESTS_REDIS_REDIS_HARNESS_H_

// A real redis-server for tests: started on a free loopback port in its own temporary
// directory, killed (and its directory removed) when the object dies.

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace quotad {
namespace testing {

struct RedisServerOptions {
  // AOF with fsync on every write: a kill -9 loses no acknowledged write.
  bool appendonly = true;
  std::string appendfsync = "always";
  // More `--name value` arguments for redis-server.
  std::vector<std::string> extra_args;
  // How long Start()/Restart() wait for the server to answer PING.
  absl::Duration start_timeout = absl::Seconds(10);
  // Ports tried before giving up (another process may take the port between the probe and
  // redis-server's bind).
  int port_attempts = 5;

  // Non-empty: a redis-sentinel instead (the persistence fields above do not apply) that
  // monitors the primary `monitor_name` at 127.0.0.1:monitor_port, from a sentinel.conf in
  // dir() written at Start() (Restart() keeps what the sentinel rewrote into it).
  std::string monitor_name;
  int monitor_port = 0;
  int quorum = 2;
  absl::Duration down_after = absl::Milliseconds(500);
  absl::Duration failover_timeout = absl::Seconds(5);
};

// One redis-server (or redis-sentinel) process bound to 127.0.0.1. RDB snapshots are off (`save
// ""`); the data lives only in the AOF, under dir(). The child gets SIGKILL when the thread that
// started it dies (PR_SET_PDEATHSIG), so a crashed or timed-out test leaks no server; start it from
// the test's main thread. Every wait is bounded. Not thread-safe: one test thread drives it. Owns
// the process and the directory.
class RedisServer {
 public:
  static absl::StatusOr<std::unique_ptr<RedisServer>> Start(RedisServerOptions options = {});
  ~RedisServer();  // SIGKILL, reap, remove dir()

  RedisServer(const RedisServer&) = delete;
  RedisServer& operator=(const RedisServer&) = delete;

  int port() const { return port_; }
  const std::string& host() const { return host_; }
  const std::string& dir() const { return dir_; }
  bool running() const { return pid_ > 0; }

  // Sends `signal` (SIGTERM: a clean shutdown; SIGKILL: a crash) and reaps the process,
  // escalating to SIGKILL after `grace`.
  absl::Status Stop(int signal, absl::Duration grace = absl::Seconds(10));
  // Starts the server again on the same port and directory (it replays its AOF) and waits for
  // PING.
  absl::Status Restart();
  // The same with other command-line arguments from now on (e.g. {"--replicaof", host, port}:
  // a restarted primary coming back as the new primary's replica, as k8s/redis/redis-start.sh
  // starts one).
  absl::Status Restart(std::vector<std::string> extra_args);

  // Runs one command on a fresh blocking connection and returns the reply as text (integers
  // in decimal, arrays space-separated, errors prefixed "ERR:"). For test set-up and checks.
  absl::StatusOr<std::string> Command(const std::vector<std::string>& args) const;
  // INFO commandstats: calls of `command` (lower case, e.g. "fcall") so far; -1 if unreadable.
  int64_t Calls(const std::string& command) const;

 private:
  explicit RedisServer(RedisServerOptions options);
  absl::Status Spawn();  // fork+exec on port_ (a sentinel: writes its config first)
  absl::Status WriteSentinelConfig();
  bool sentinel() const { return !options_.monitor_name.empty(); }
  absl::Status WaitReady();  // PING until PONG, the child's death or the timeout

  RedisServerOptions options_;
  std::string host_ = "127.0.0.1";
  std::string dir_;
  int port_ = 0;
  pid_t pid_ = -1;
};

// A loopback TCP port that was free a moment ago (bound to port 0, then released).
absl::StatusOr<int> PickFreePort();

}  // namespace testing
}  // namespace quotad

#endif  // QUOTAD_TESTS_REDIS_REDIS_HARNESS_H_
