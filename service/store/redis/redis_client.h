#ifndef QUOTAD_SERVICE_STORE_REDIS_REDIS_CLIENT_H_
#define QUOTAD_SERVICE_STORE_REDIS_REDIS_CLIENT_H_

// An asynchronous, pipelined Redis client on hiredis 0.14: a few connections shared by every
// caller, one event-loop thread (epoll) that writes the calls and reads the replies.

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

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
//                      may or may not have run);
//   kDeadlineExceeded  no reply within the call's timeout (it may still run);
//   kCancelled         the client was destroyed first.
using ReplyCallback = absl::AnyInvocable<void(absl::StatusOr<Reply>)>;

struct RedisClientOptions {
  std::string host = "127.0.0.1";
  int port = 6379;
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
// Fails closed: while no connection is up, calls are answered kUnavailable at once (nothing is
// queued for later); connections are retried in the background with back-off. Timeouts are
// measured on the monotonic clock (this is I/O, not the ledger's time).
class RedisClient {
 public:
  // Starts the loop and the first connection attempts; does not wait for them (see
  // WaitConnected). kInternal when the loop cannot be set up.
  static absl::StatusOr<std::unique_ptr<RedisClient>> Create(RedisClientOptions options);
  ~RedisClient();

  RedisClient(const RedisClient&) = delete;
  RedisClient& operator=(const RedisClient&) = delete;

  // Sends one command (`args`: the command and its arguments, binary-safe). `timeout` zero
  // takes options.call_timeout.
  void Call(std::vector<std::string> args, ReplyCallback done,
            absl::Duration timeout = absl::ZeroDuration());

  // Call() and wait for the answer. Not from the event-loop thread (a callback): it would
  // wait for itself.
  absl::StatusOr<Reply> CallSync(std::vector<std::string> args,
                                 absl::Duration timeout = absl::ZeroDuration());

  // Connections up now.
  int connected() const;
  // Waits until at least one connection is up, or `timeout`. False on timeout.
  bool WaitConnected(absl::Duration timeout) const;

  class Loop;  // the event loop; defined in redis_client.cc

 private:
  explicit RedisClient(std::unique_ptr<Loop> loop);
  std::unique_ptr<Loop> loop_;
};

}  // namespace redis
}  // namespace quotad

#endif  // QUOTAD_SERVICE_STORE_REDIS_REDIS_CLIENT_H_
