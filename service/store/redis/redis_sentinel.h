#ifndef QUOTAD_SERVICE_STORE_REDIS_REDIS_SENTINEL_H_
#define QUOTAD_SERVICE_STORE_REDIS_REDIS_SENTINEL_H_

// Finding the primary through Redis Sentinel: which address the sentinels name for a master
// (SENTINEL get-master-addr-by-name), asked again when the client reports trouble (a lost
// connection, a replica answering READONLY, LOADING) and when a sentinel announces
// +switch-master. RedisClient (redis_client.h) owns one in sentinel mode and checks ROLE on
// every connection it opens to the address given, so a demoted primary is never written to.

#include <cstdint>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace quotad {
namespace redis {

struct HostPort {
  std::string host;  // a name or an address; IPv6 without brackets
  int port = 0;
  bool operator==(const HostPort& o) const { return host == o.host && port == o.port; }
  bool operator!=(const HostPort& o) const { return !(*this == o); }
  std::string ToString() const;  // host:port, [IPv6]:port
};

// Asks one sentinel, blocking for at most `timeout`: the address it names for `master_name`.
// kNotFound when it knows no such master; kUnavailable when it cannot be reached. With `epoch`,
// also the configuration epoch of that master as the sentinel knows it (SENTINEL MASTER's
// config-epoch; -1 if it did not say): a failover raises it.
absl::StatusOr<HostPort> AskSentinel(const HostPort& sentinel, absl::string_view master_name,
                                     absl::Duration timeout, int64_t* epoch = nullptr);

struct SentinelOptions {
  std::vector<HostPort> sentinels;
  std::string master_name;
  absl::Duration timeout = absl::Milliseconds(500);  // per sentinel asked
  // Between two askings that found nothing new: doubles from min to max; reset by a new address.
  absl::Duration min_backoff = absl::Milliseconds(10);
  absl::Duration max_backoff = absl::Seconds(1);
};

// Two threads, both owned and joined by Stop(): one asks every sentinel (the answer of the one
// with the newest configuration epoch wins, the first among equals: a sentinel that missed a
// failover names an old primary that may still answer ROLE master; a sentinel that hangs costs
// its timeout on every asking) when triggered, or every back-off while
// `healthy()` is false; one holds a subscription to +switch-master on one sentinel (the next one
// when it fails) and triggers the first. Calls `on_primary` from the asking thread whenever the
// named address changes (the first answer included). Thread-safe; Trigger() never blocks.
class SentinelWatcher {
 public:
  SentinelWatcher(SentinelOptions options, std::function<void(const HostPort&)> on_primary,
                  std::function<bool()> healthy);
  ~SentinelWatcher();  // Stop()

  SentinelWatcher(const SentinelWatcher&) = delete;
  SentinelWatcher& operator=(const SentinelWatcher&) = delete;

  void Start();
  // Joins both threads; on_primary is not called after it returns. Idempotent.
  void Stop();
  // Ask the sentinels again soon (at once, or after the back-off if the last asking found
  // nothing new). `urgent` (a sentinel announced +switch-master): at once, back-off or not.
  void Trigger(bool urgent = false);

  // The address last named (port 0: none yet), and how often it changed.
  HostPort primary() const;
  int switches() const;

 private:
  void AskLoop();
  void SubscribeLoop();
  // One round over the sentinels; an error when none named an address.
  absl::StatusOr<HostPort> AskAll();

  const SentinelOptions options_;
  const std::function<void(const HostPort&)> on_primary_;
  const std::function<bool()> healthy_;
  mutable absl::Mutex mu_;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  bool triggered_ ABSL_GUARDED_BY(mu_) = true;  // ask at once on Start()
  bool urgent_ ABSL_GUARDED_BY(mu_) = false;    // +switch-master: skip the back-off
  HostPort primary_ ABSL_GUARDED_BY(mu_);
  int switches_ ABSL_GUARDED_BY(mu_) = 0;
  int subscribed_fd_ ABSL_GUARDED_BY(mu_) = -1;  // shut down by Stop() to end the read
  std::thread ask_thread_;
  std::thread subscribe_thread_;
};

}  // namespace redis
}  // namespace quotad

#endif  // QUOTAD_SERVICE_STORE_REDIS_REDIS_SENTINEL_H_
