#ifndef QUOTAD_SERVICE_STORE_REDIS_REDIS_CLUSTER_H_
#define QUOTAD_SERVICE_STORE_REDIS_REDIS_CLUSTER_H_

// A small Redis Cluster router (hiredis 0.14 has no cluster client): the RedisClient interface,
// each command sent to the master that serves its hash slot, one RedisClient per master.
//
// - The slot map comes from CLUSTER SLOTS (asked of a known master, else of the configured
//   nodes), at start, after every MOVED, when a master cannot be reached or answers
//   CLUSTERDOWN, and every back-off while no map is known.
// - A command's slot is that of its first key (FCALL/FCALL_RO/EVAL: the first declared key;
//   commands without a key, e.g. TIME, go to any master that is up). MGET over keys of several
//   slots is split by slot and answered as one; SCAN walks every master in turn (its cursor
//   names the master). CallPipeline is routed by its first key and its redirects are answered
//   as they are, not followed.
// - MOVED: the slot's owner is updated at once (and the whole map asked again) and the command
//   resent there. ASK: resent once to the named node, preceded by ASKING on the same
//   connection. TRYAGAIN (a multi-key command while its slot migrates): resent after a back-off
//   (5 ms doubling to 100 ms). All within the call's timeout and at most 5 MOVED/ASK in a row
//   (a TRYAGAIN back-off starts the count again). A redirect means the command did not run, so
//   resending never applies it twice.
// - Fail closed: a transport failure is answered as it is (the command may have run) and never
//   resent; a slot whose master is unreachable, unknown, or answers CLUSTERDOWN is answered
//   kUnavailable naming the slot and the master at once. Too many redirects, or a migration
//   outlasting the timeout, is kAborted (nothing was done, and Redis is up: not an outage, so a
//   fail_open credential is not granted by the replica alone for it). Other slots keep working.
//
// Thread-safe. Owns its clients (one per address ever seen as a master or given as a node,
// kept until destruction) and a worker thread that refreshes the map and resends redirected
// calls (callbacks on the clients' loop threads never call another client). Callbacks run on
// the loop thread of the master that answered, or on the worker.

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "service/core/lease_id.h"
#include "service/store/redis/redis_client.h"

namespace quotad {
namespace redis {

constexpr int kClusterSlots = 16384;

// CRC16 (XMODEM) of the key's hash tag (the text between the first '{' and the next '}' when
// non-empty), else of the whole key, mod 16384: Redis Cluster's HASH_SLOT.
int KeySlot(absl::string_view key);

// `id` with its last 5 hex digits (its low 20 bits) replaced so that the key `prefix` + the
// id's 32 hex digits lies in `slot` (CRC16 is linear: a table of 16384 five-digit suffixes,
// one per slot, built once). The other 108 bits are kept.
LeaseId LeaseIdInSlot(LeaseId id, absl::string_view prefix, int slot);

class RedisCluster final : public RedisClient {
 public:
  // `options.cluster_nodes`: where to ask for the map first (at least one). The other fields
  // apply to each master's client (`connections` per master). Starts the worker and asks for
  // the map in the background (see WaitConnected). kInvalidArgument without nodes.
  static absl::StatusOr<std::unique_ptr<RedisCluster>> Create(RedisClientOptions options);
  ~RedisCluster() override;

  void Call(std::vector<std::string> args, ReplyCallback done,
            absl::Duration timeout = absl::ZeroDuration()) override;
  void CallPipeline(std::vector<std::vector<std::string>> commands, ReplyCallback done,
                    absl::Duration timeout = absl::ZeroDuration()) override;
  // Routed by the command's key; MOVED and TRYAGAIN are followed (ASK is retried as TRYAGAIN,
  // since ASKING cannot be put before a held call).
  void CallThenWait(std::vector<std::string> args, int replicas, absl::Duration wait_timeout,
                    ReplyCallback done, absl::Duration timeout = absl::ZeroDuration()) override;

  // Masters of the current map with a connection up.
  int connected() const override;
  // The first master of the map with a connection up, else the first master (the first node
  // before a map is known). The wait queue's subscriber connects here (any node hears PUBLISH).
  HostPort primary() const override;
  // How often the map changed after the first one (migrations, failovers).
  int failovers() const override;
  const RedisClientOptions& options() const override { return options_; }
  // Waits until a map is known and every one of its masters is connected, or `timeout`; true
  // if at least one is (a master down makes start-up wait the whole `timeout`).
  bool WaitConnected(absl::Duration timeout) const override;

  // The masters of the current map, by address (sorted), and the client of each (owned by
  // *this; valid until it dies). For work that must run on every master (loading the function
  // library).
  std::vector<std::pair<HostPort, RedisClient*>> Masters() const;
  // The master serving `slot` per the current map (port 0: none known).
  HostPort MasterOf(int slot) const;
  // Asks for the map now and waits for it (at most `timeout`). Not from a callback.
  absl::Status Refresh(absl::Duration timeout = absl::Seconds(1));
  // Increments whenever the set of masters changes (a master added or gone).
  int64_t masters_epoch() const { return masters_epoch_.load(std::memory_order_acquire); }

  // Redirects followed so far (for tests and metrics).
  int64_t moved() const { return moved_.load(std::memory_order_relaxed); }
  int64_t asked() const { return asked_.load(std::memory_order_relaxed); }
  int64_t tried_again() const { return tried_again_.load(std::memory_order_relaxed); }

 private:
  using Steady = std::chrono::steady_clock;
  struct Node {
    HostPort address;
    std::unique_ptr<RedisClient> client;
  };
  // One command on its way, possibly redirected.
  struct Op {
    std::vector<std::string> args;
    ReplyCallback done;
    Steady::time_point deadline;
    int slot = -1;  // -1: no key (any master)
    int redirects = 0;
    std::chrono::milliseconds backoff{5};  // before the next TRYAGAIN resend
    bool asking = false;                   // send ASKING first, to ask_to
    HostPort ask_to;
    int wait_replicas = 0;  // > 0: CallThenWait
    absl::Duration wait_timeout;
  };

  explicit RedisCluster(RedisClientOptions options);
  void Send(std::unique_ptr<Op> op);
  void OnReply(std::unique_ptr<Op> op, const HostPort& to, absl::StatusOr<Reply> reply);
  // Hands `op` to the worker, to be sent again at `at`; kCancelled when stopping.
  void Resend(std::unique_ptr<Op> op, Steady::time_point at);
  void Fail(std::unique_ptr<Op> op, absl::Status status);
  void CallMulti(std::vector<std::string> args, ReplyCallback done, absl::Duration timeout);
  void CallScan(std::vector<std::string> args, ReplyCallback done, absl::Duration timeout);
  // The node at `address`, its client created if new. Requires mu_.
  Node* NodeAt(const HostPort& address) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // masters_ from owner_, after owner_ changed.
  void RebuildMasters() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void WantRefresh() ABSL_LOCKS_EXCLUDED(mu_);
  // Asks the masters, then the nodes, for CLUSTER SLOTS and installs the answer. Worker only.
  absl::Status DoRefresh() ABSL_LOCKS_EXCLUDED(mu_);
  void Work();

  const RedisClientOptions options_;
  mutable absl::Mutex mu_;
  std::map<std::string, std::unique_ptr<Node>> nodes_ ABSL_GUARDED_BY(mu_);  // by "host:port"
  std::vector<Node*> seeds_ ABSL_GUARDED_BY(mu_);
  std::array<Node*, kClusterSlots> owner_ ABSL_GUARDED_BY(mu_){};  // nullptr: unknown
  std::vector<Node*> masters_ ABSL_GUARDED_BY(mu_);                // distinct owners, by address
  bool have_map_ ABSL_GUARDED_BY(mu_) = false;
  int changes_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  // Worker: resends by due time, and whether a refresh is wanted (and when it last ran).
  std::multimap<Steady::time_point, std::unique_ptr<Op>> due_ ABSL_GUARDED_BY(mu_);
  bool refresh_wanted_ ABSL_GUARDED_BY(mu_) = false;
  int64_t refreshes_ ABSL_GUARDED_BY(mu_) = 0;  // completed (for Refresh())
  Steady::time_point last_refresh_ ABSL_GUARDED_BY(mu_){};
  std::atomic<int64_t> masters_epoch_{0};
  std::atomic<int64_t> moved_{0}, asked_{0}, tried_again_{0};
  std::thread worker_;
};

}  // namespace redis
}  // namespace quotad

#endif  // QUOTAD_SERVICE_STORE_REDIS_REDIS_CLUSTER_H_
