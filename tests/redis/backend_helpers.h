#ifndef QUOTAD_TESTS_REDIS_BACKEND_HELPERS_H_
#define QUOTAD_TESTS_REDIS_BACKEND_HELPERS_H_

// What the shared-mode tests do with a RedisBackend over and over: the options of a replica of
// a local redis-server, and an Acquire or a batch waited for on the caller's thread.
// Header-only; each call is independent (thread-safe as RedisBackend is).

#include <memory>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
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

// `req` decided through `backend` (AcquireShared, with `request_id` if any), waited for.
inline absl::StatusOr<Decision> AcquireThrough(RedisBackend& backend, const AcquireRequest& req,
                                               const SharedRequestId& request_id = {}) {
  absl::Notification done;
  absl::StatusOr<Decision> out;
  backend.AcquireShared(req, request_id, [&](absl::StatusOr<Decision> d) {
    out = std::move(d);
    done.Notify();
  });
  done.WaitForNotification();
  return out;
}

// A batch decided through `backend` (AcquireAllShared, or AcquireManyShared), waited for at
// most 20 s (a hang fails the test); one result per request.
inline std::vector<absl::StatusOr<Decision>> BatchThrough(
    RedisBackend& backend, const std::vector<AcquireRequest>& requests,
    const std::vector<SharedRequestId>& request_ids, bool all_or_nothing) {
  // Shared with the callback: it may run after a timed-out wait returned.
  auto done = std::make_shared<absl::Notification>();
  auto out = std::make_shared<std::vector<absl::StatusOr<Decision>>>();
  auto answer = [done, out](std::vector<absl::StatusOr<Decision>> d) {
    *out = std::move(d);
    done->Notify();
  };
  if (all_or_nothing) {
    backend.AcquireAllShared(requests, request_ids, answer);
  } else {
    backend.AcquireManyShared(requests, request_ids, answer);
  }
  if (!done->WaitForNotificationWithTimeout(absl::Seconds(20))) {
    ADD_FAILURE() << "a batch of " << requests.size() << " items was not answered in 20 s";
    return std::vector<absl::StatusOr<Decision>>(requests.size(),
                                                 absl::DeadlineExceededError("unanswered (test)"));
  }
  EXPECT_EQ(out->size(), requests.size()) << "one answer per item";
  out->resize(requests.size(), absl::InternalError("missing answer (test)"));
  return *out;
}

inline bool Granted(const absl::StatusOr<Decision>& d) { return d.ok() && d->granted; }

inline int CountGranted(const std::vector<absl::StatusOr<Decision>>& d) {
  int n = 0;
  for (const absl::StatusOr<Decision>& x : d) n += Granted(x) ? 1 : 0;
  return n;
}

}  // namespace quotad::testing

#endif  // QUOTAD_TESTS_REDIS_BACKEND_HELPERS_H_
