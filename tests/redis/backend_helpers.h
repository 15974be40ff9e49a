#ifndef QUOTAD_TESTS_REDIS_BACKEND_HELPERS_H_
#define QUOTAD_TESTS_REDIS_BACKEND_HELPERS_H_

// What the shared-mode tests do with a RedisBackend over and over: the options of a replica of
// a local redis-server, and an Acquire waited for on the caller's thread. Header-only; each
// call is independent (thread-safe as RedisBackend is).

#include <memory>
#include <utility>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "service/core/ledger.h"
#include "service/store/redis/redis_backend.h"
#include "tests/redis/redis_harness.h"

namespace quotad::testing {

// A replica of `redis` on loopback, waiting up to 5 s for its first connection.
inline RedisBackendOptions ReplicaOptions(const RedisServer& redis) {
  RedisBackendOptions options;
  options.url = absl::StrCat("redis://127.0.0.1:", redis.port());
  options.connect_wait = absl::Seconds(5);
  return options;
}

// `req` decided through `backend` (AcquireShared, no request_id), waited for.
inline absl::StatusOr<Decision> AcquireThrough(RedisBackend& backend, const AcquireRequest& req) {
  absl::Notification done;
  absl::StatusOr<Decision> out;
  backend.AcquireShared(req, SharedRequestId{}, [&](absl::StatusOr<Decision> d) {
    out = std::move(d);
    done.Notify();
  });
  done.WaitForNotification();
  return out;
}

}  // namespace quotad::testing

#endif  // QUOTAD_TESTS_REDIS_BACKEND_HELPERS_H_
