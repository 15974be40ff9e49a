#ifndef QUOTAD_SERVICE_STORE_REDIS_REDIS_SUBSCRIBER_H_
#define QUOTAD_SERVICE_STORE_REDIS_REDIS_SUBSCRIBER_H_

// One Redis pub/sub subscription (PSUBSCRIBE) on its own connection and thread, for shared
// mode's wait queues (redis_backend_wait.cc): quotad_release, quotad_reset and quotad_wait
// publish on q:{credential}:freed which waiters now head a queue, and each replica listens.
//
// hiredis's blocking API on a thread of its own (the RedisClient's loop carries calls only): it
// polls the socket with a short timeout, to notice a stop and a change of the primary's address
// (Sentinel), and reconnects with back-off when the connection fails. Messages sent while it
// was not subscribed are lost: `on_connect` is called after every (re)subscription so that the
// owner re-checks what it waits for.

#include <atomic>
#include <string>
#include <thread>

#include "absl/functional/any_invocable.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "service/store/redis/redis_sentinel.h"

namespace quotad {
namespace redis {

// Thread-safe to construct and destroy; the callbacks run on its thread, one at a time, and
// must not block for long. Owns its thread (joined by the destructor, within ~200 ms).
class RedisSubscriber {
 public:
  // `address` is asked before every connection attempt and while connected (a change moves
  // the subscription); port 0: nothing to connect to yet.
  RedisSubscriber(std::string pattern, absl::AnyInvocable<HostPort() const> address,
                  absl::AnyInvocable<void(absl::string_view channel, absl::string_view message)>
                      on_message,
                  absl::AnyInvocable<void()> on_connect);
  ~RedisSubscriber();

  RedisSubscriber(const RedisSubscriber&) = delete;
  RedisSubscriber& operator=(const RedisSubscriber&) = delete;

  // Whether the subscription is up now, and messages received in total.
  bool subscribed() const { return subscribed_.load(std::memory_order_acquire); }
  int64_t messages() const { return messages_.load(std::memory_order_relaxed); }

 private:
  void Run();

  const std::string pattern_;
  absl::AnyInvocable<HostPort() const> address_;
  absl::AnyInvocable<void(absl::string_view, absl::string_view)> on_message_;
  absl::AnyInvocable<void()> on_connect_;
  std::atomic<bool> subscribed_{false};
  std::atomic<int64_t> messages_{0};
  absl::Notification stop_;
  std::thread thread_;
};

}  // namespace redis
}  // namespace quotad

#endif  // QUOTAD_SERVICE_STORE_REDIS_REDIS_SUBSCRIBER_H_
