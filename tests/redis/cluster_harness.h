#ifndef QUOTAD_TESTS_REDIS_CLUSTER_HARNESS_H_
#define QUOTAD_TESTS_REDIS_CLUSTER_HARNESS_H_

// A Redis Cluster for tests: N masters, each a cluster-enabled redis-server on free loopback
// ports (RedisServer, redis_harness.h), the 16384 slots split evenly in order, formed by hand
// (CLUSTER ADDSLOTSRANGE, SET-CONFIG-EPOCH, MEET), and optionally R replicas per master (MEET,
// then CLUSTER REPLICATE), all stopped when the group dies. The nodes run with
// cluster-require-full-coverage no: with a master down, the others keep serving their slots.

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "tests/redis/redis_harness.h"

namespace quotad {
namespace testing {

struct ClusterGroupOptions {
  int masters = 3;
  // Replicas started per master; Start() waits until each is in sync (state=online in its
  // master's INFO replication).
  int replicas_per_master = 0;
  absl::Duration node_timeout = absl::Seconds(2);
  // Start() waits this long for every node to see the others and cluster_state:ok.
  absl::Duration start_timeout = absl::Seconds(20);
  // More `--name value` arguments for every node (e.g. {"--repl-diskless-sync-delay", "0"}: a
  // replica's full sync starts at once, not after the 5 s a master waits for more replicas).
  std::vector<std::string> node_args;
};

// Not thread-safe: one test thread drives it. Owns every process (and directory) it started.
class ClusterGroup {
 public:
  static absl::StatusOr<std::unique_ptr<ClusterGroup>> Start(ClusterGroupOptions options = {});
  ~ClusterGroup() = default;  // each RedisServer is killed and removed

  // redis-cluster://127.0.0.1:A,127.0.0.1:B,... (the masters)
  std::string url() const;
  // Masters.
  int size() const { return static_cast<int>(nodes_.size()); }
  RedisServer& node(int i) { return *nodes_[i]; }
  // Replica `k` of master `i` (k < replicas_per_master).
  RedisServer& replica(int i, int k = 0) {
    return *replicas_[i * options_.replicas_per_master + k];
  }
  // Replicas master `i` reports in sync (state=online in INFO replication); -1 if unreadable.
  int OnlineReplicas(int i) const;
  // `args` run on replica `k` of master `i` after READONLY on the same connection (a replica
  // answers reads of its master's slots then, instead of MOVED). The reply as text, as
  // RedisServer::Command gives it.
  absl::StatusOr<std::string> ReadOnReplica(int i, int k, const std::vector<std::string>& args);
  const std::string& node_id(int i) const { return ids_[i]; }
  // The node serving `slot` (as this group assigned and migrated it).
  int OwnerOf(int slot) const { return owner_[slot]; }
  // Keys node `i` holds (DBSIZE).
  absl::StatusOr<int64_t> KeyCount(int i) const;

  // Moves `slot` to node `to` as redis-cli --cluster reshard does: SETSLOT IMPORTING on `to`,
  // MIGRATING on the owner, MIGRATE of its keys `batch` at a time (calling `between` after each
  // batch with the keys moved so far, e.g. to make calls while the slot is split), then SETSLOT
  // NODE on every live node. Keys must hold no space (GETKEYSINSLOT is read as text).
  absl::Status MigrateSlot(int slot, int to, int batch = 4,
                           const std::function<void(int moved)>& between = nullptr);

  // SIGKILL node `i` (its slots stay assigned to it: unserved).
  absl::Status Kill(int i);
  // Starts master `i`'s process again after Kill (or a failover that left it stopped): the same
  // ports, directory and nodes.conf, so it rejoins with its own identity; `extra_args` are added
  // to the node's cluster arguments (e.g. {"--cluster-replica-no-failover", "yes"}). Its slots
  // taken over meanwhile by its replica (a newer config epoch), it comes back as that new
  // master's replica, empty (the nodes keep no AOF) until its first sync. Waits for PING only.
  absl::Status RestartMaster(int i, std::vector<std::string> extra_args = {});

 private:
  explicit ClusterGroup(ClusterGroupOptions options) : options_(std::move(options)) {}
  bool Ready() const;
  // One command; a Redis error reply is an error status naming the command.
  static absl::StatusOr<std::string> Run(const RedisServer& node,
                                         const std::vector<std::string>& args);

  ClusterGroupOptions options_;
  // One more cluster-enabled node on free ports (its bus port in *bus).
  absl::StatusOr<std::unique_ptr<RedisServer>> StartNode(int* bus) const;
  // redis-server's arguments for a cluster node whose bus listens on `bus`.
  std::vector<std::string> NodeArgs(int bus) const;

  std::vector<std::unique_ptr<RedisServer>> nodes_;  // masters
  std::vector<int> bus_ports_;
  std::vector<std::unique_ptr<RedisServer>> replicas_;  // master i's at i * replicas_per_master
  std::vector<int> replica_bus_ports_;
  std::vector<std::string> ids_;
  std::vector<int> owner_;  // per slot
};

}  // namespace testing
}  // namespace quotad

#endif  // QUOTAD_TESTS_REDIS_CLUSTER_HARNESS_H_
