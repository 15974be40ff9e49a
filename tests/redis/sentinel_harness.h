#ifndef QUOTAD_TESTS_REDIS_SENTINEL_HARNESS_H_
#define QUOTAD_TESTS_REDIS_SENTINEL_HARNESS_H_

// A replicated Redis for failover tests: one primary, one replica and three redis-sentinel
// processes, each on a free loopback port (RedisServer, redis_harness.h), all stopped when the
// group dies, whatever the test's outcome.

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "tests/redis/redis_harness.h"

namespace quotad {
namespace testing {

struct SentinelGroupOptions {
  std::string master_name = "quotad";
  int sentinels = 3;
  int quorum = 2;
  // How soon the sentinels call an unanswering primary down, and how long a failover may take.
  absl::Duration down_after = absl::Milliseconds(500);
  absl::Duration failover_timeout = absl::Seconds(5);
  // Persistence of the primary and the replica (off: the failover tests are about replication).
  bool appendonly = false;
  // Start() waits this long for the replica to sync and every sentinel to know the replica and
  // the other sentinels (they find each other through hello messages, every 2 s).
  absl::Duration start_timeout = absl::Seconds(20);
};

// Not thread-safe: one test thread drives it. Owns every process (and directory) it started.
class SentinelGroup {
 public:
  static absl::StatusOr<std::unique_ptr<SentinelGroup>> Start(SentinelGroupOptions options = {});
  ~SentinelGroup() = default;  // each RedisServer is killed and removed

  // redis-sentinel://127.0.0.1:A,127.0.0.1:B,127.0.0.1:C/NAME
  std::string url() const;
  const std::string& master_name() const { return options_.master_name; }

  // servers()[0] was the primary at Start(), servers()[1] its replica.
  RedisServer& server(int i) { return *servers_[i]; }
  RedisServer& sentinel(int i) { return *sentinels_[i]; }
  int sentinel_count() const { return static_cast<int>(sentinels_.size()); }

  // The port the first sentinel that answers names as primary.
  absl::StatusOr<int> NamedPrimaryPort() const;
  // The server on `port` (nullptr: none of ours).
  RedisServer* ServerOnPort(int port);

  // Asks the first sentinel for a failover (SENTINEL FAILOVER), retrying while it has no replica
  // it can promote yet, up to `timeout`.
  absl::Status Failover(absl::Duration timeout = absl::Seconds(10));

  // Waits until every sentinel names a primary other than `old_port` and that server answers
  // ROLE master. Returns its port.
  absl::StatusOr<int> WaitForNewPrimary(int old_port, absl::Duration timeout);

  // The failover events in every sentinel's log (+sdown, +odown, +switch-master, ...), one per
  // line prefixed by the sentinel's port: what to print when a failover test fails.
  std::string Events() const;

 private:
  explicit SentinelGroup(SentinelGroupOptions options) : options_(std::move(options)) {}
  // Every sentinel sees the replica and the other sentinels; the replica's link is up.
  bool Ready() const;

  SentinelGroupOptions options_;
  std::vector<std::unique_ptr<RedisServer>> servers_;
  std::vector<std::unique_ptr<RedisServer>> sentinels_;
};

// "field value" pairs of a flat reply (SENTINEL MASTER), or a line "field:value" of INFO.
std::string FieldOf(const std::string& reply, const std::string& field);

}  // namespace testing
}  // namespace quotad

#endif  // QUOTAD_TESTS_REDIS_SENTINEL_HARNESS_H_
