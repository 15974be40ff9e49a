#ifndef QUOTAD_SERVICE_STORE_REDIS_REDIS_CLIENT_H_
#define QUOTAD_SERVICE_STORE_REDIS_REDIS_CLIENT_H_

// An asynchronous, pipelined Redis client on hiredis 0.14: a few connections shared by every
// caller, one event-loop thread (epoll) that writes the calls and reads the replies. It talks to
// a primary only: each connection answers ROLE "master" before it carries a call, and in
// Sentinel mode the primary's address comes from the sentinels (redis_sentinel.h) and follows a
// failover.

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "service/store/redis/redis_sentinel.h"

namespace quotad {
namespace redis {

// One reply, owned (a copy of hiredis's redisReply). A Redis error reply (`-ERR ...`) is a
// Reply of type kError, not a failed status: the command ran and Redis answered.
struct Reply {
  enum class Type { kNil, kInteger, kString, kStatus, kError, kArray };
  Type type = Type::kNil;
  int64_t integer = 0;
  std::string str;  // kString, kStatus, kError
  std::vector<Reply> elements;  // kArray

  bool is_error() const { return type == Type::kError; }
  std::string DebugString() const;
};

// Answers one call, exactly once, on the client's event-loop thread: it must not block (hand
// slow work to another thread) and may issue more calls. Non-OK statuses:
//   kUnavailable       no connection is up, or the connection broke before the reply (the call
//                      may or may not have run), or the server answered -READONLY (a primary
//                      demoted to replica: nothing was written), -LOADING (not ready yet),
//                      -NOREPLICAS or -MASTERDOWN (writes refused);
//   kDeadlineExceeded  no reply within the call's timeout (it may still run);
//   kCancelled         the client was destroyed first.
using ReplyCallback = absl::AnyInvocable<void(absl::StatusOr<Reply>)>;

struct RedisClientOptions {
  std::string host = "127.0.0.1";
  int port = 6379;
  // Sentinel mode when non-empty: `host` and `port` are ignored; the primary is the address these
  // sentinels name for `master_name`, asked again on trouble (see SentinelWatcher).
  std::vector<HostPort> sentinels;
  std::string master_name;
  // Cluster mode when non-empty (redis_cluster.h; built by RedisCluster::Create, not Create()):
  // nodes asked for the slot map (CLUSTER SLOTS); `connections` is then per master.
  std::vector<HostPort> cluster_nodes;
  // CLIENT SETNAME of every connection (CLIENT LIST shows who is connected); empty: none.
  std::string client_name = "quotad";
  // Connections kept open; calls go round-robin over those that are up, pipelined.
  int connections = 2;
  // Default time a call waits for its reply.
  absl::Duration call_timeout = absl::Seconds(1);
  // A connection attempt that takes longer is abandoned and retried.
  absl::Duration connect_timeout = absl::Seconds(1);
  // Back-off between failed attempts of one connection: doubles from min to max, reset once
  // connected.
  absl::Duration min_backoff = absl::Milliseconds(10);
  absl::Duration max_backoff = absl::Seconds(1);
};

// Thread-safe: any thread may call Call(). Callbacks run on the event-loop thread, which the
// client owns and joins in its destructor; calls still pending then are answered kCancelled.
// Fails closed: while no connection to a primary is up, calls are answered kUnavailable at once
// (nothing is queued for later); connections are retried in the background with back-off. A
// connection counts as up only once ROLE answered "master"; one that answers -READONLY is
// dropped. When the primary's address changes (Sentinel), every connection to the old one is
// dropped (its pending calls: kUnavailable) before any call goes to the new one. Timeouts are
// measured on the monotonic clock (this is I/O, not the ledger's time). Owns its
// SentinelWatcher (Sentinel mode). RedisCluster (redis_cluster.h) derives from it: the same calls,
// routed to the master of each command's hash slot.
class RedisClient {
 public:
  // Starts the loop and the first connection attempts; does not wait for them (see
  // WaitConnected). kInternal when the loop cannot be set up.
  static absl::StatusOr<std::unique_ptr<RedisClient>> Create(RedisClientOptions options);
  virtual ~RedisClient();

  RedisClient(const RedisClient&) = delete;
  RedisClient& operator=(const RedisClient&) = delete;

  // Sends one command (`args`: the command and its arguments, binary-safe). `timeout` zero
  // takes options.call_timeout.
  virtual void Call(std::vector<std::string> args, ReplyCallback done,
                    absl::Duration timeout = absl::ZeroDuration());

  // Several commands written back to back on one connection (e.g. FCALL then WAIT, which
  // waits for that connection's writes), answered once: a kArray Reply holding each command's
  // reply in order. A transport failure of any answers the whole as Call() would.
  virtual void CallPipeline(std::vector<std::vector<std::string>> commands,
                            ReplyCallback done, absl::Duration timeout = absl::ZeroDuration());

  // Call() followed by WAIT `replicas` `wait_timeout` on the same connection, answered once
  // with a kArray Reply: [the command's reply, WAIT's reply (the replicas that acknowledged)].
  // A connection has at most one WAIT outstanding: the calls written to it before that WAIT
  // share it (WAIT covers every write before it on its connection), and those that come while
  // it is outstanding are held (Redis would not run them before it returns anyway) and then
  // written together, behind one WAIT: one replica round trip per batch, not per call. A held
  // call whose connection dies is answered kUnavailable unsent. `timeout` should allow for
  // wait_timeout.
  virtual void CallThenWait(std::vector<std::string> args, int replicas,
                            absl::Duration wait_timeout, ReplyCallback done,
                            absl::Duration timeout = absl::ZeroDuration());

  // Call() and wait for the answer. Not from the event-loop thread (a callback): it would
  // wait for itself.
  absl::StatusOr<Reply> CallSync(std::vector<std::string> args,
                                 absl::Duration timeout = absl::ZeroDuration());

  // Connections up now (to a primary that answered ROLE "master").
  virtual int connected() const;
  // The address calls go to (Sentinel mode: the primary last named; port 0 before the first).
  virtual HostPort primary() const;
  // Sentinel mode: how often the primary changed since start. 0 otherwise.
  virtual int failovers() const;
  virtual const RedisClientOptions& options() const;
  // Waits until at least one connection is up, or `timeout`. False on timeout.
  virtual bool WaitConnected(absl::Duration timeout) const;

  class Loop;  // the event loop; defined in redis_client.cc

 protected:
  RedisClient();  // for RedisCluster: no loop of its own

 private:
  explicit RedisClient(std::unique_ptr<Loop> loop);
  // Destroyed after loop_ (declared first): the loop may still report trouble to it while it
  // stops. Both are stopped in the destructor, the watcher first.
  std::unique_ptr<SentinelWatcher> watcher_;
  std::unique_ptr<Loop> loop_;
};

}  // namespace redis
}  // namespace quotad

#endif  // QUOTAD_SERVICE_STORE_REDIS_REDIS_CLIENT_H_
