#ifndef QUOTAD_SERVICE_STORE_REDIS_REDIS_FUNCTIONS_INTERNAL_H_
#define QUOTAD_SERVICE_STORE_REDIS_REDIS_FUNCTIONS_INTERNAL_H_

// Private to redis_functions*.cc: the library's units and the FCALL argument lists they share.
// Stateless helpers; thread-safe.

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "service/store/redis/redis_client.h"
#include "service/store/redis/redis_functions.h"

namespace quotad {
namespace redis {
namespace redis_internal {

inline constexpr int64_t kLuaInf = 9007199254740991;  // 2^53 - 1, the library's "never"

// Nanoseconds to the library's microseconds, rounded up (a span never shortens) or down.
inline int64_t CeilMicros(int64_t ns) { return ns <= 0 ? 0 : (ns + 999) / 1000; }
inline int64_t FloorMicros(int64_t ns) { return ns >= 0 ? ns / 1000 : -((-ns + 999) / 1000); }
inline absl::Time FromMicros(int64_t us) {
  if (us >= kLuaInf) return absl::InfiniteFuture();
  return absl::FromUnixMicros(us);
}

// FCALL `function` with keys `head_keys`, then the sorted set of each concurrency counter,
// then `tail_key` if non-empty; arguments `head`, then the counters (calendar windows computed
// around `around`), then `tail` if non-empty.
absl::StatusOr<std::vector<std::string>> CallArgs(const char* function,
                                                  absl::string_view credential,
                                                  std::vector<std::string> head_keys,
                                                  const std::vector<CounterRef>& counters,
                                                  std::vector<std::string> head,
                                                  absl::Time around,
                                                  const std::string& tail_key = "",
                                                  const std::string& tail = "");

// quotad_acquire's answer -2 (ParseAcquire: kAlreadyExists with the first fingerprint) as the
// embedded server answers it (server.cc, AnswerFirst).
absl::Status RequestIdConflict(const AcquireCall& call, const absl::Status& first);

// The reply as an array of integers, or why not.
absl::StatusOr<std::vector<int64_t>> Integers(const absl::StatusOr<Reply>& reply);

// Runs an asynchronous call `f` and waits for its answer (not from a client callback).
template <typename T>
absl::StatusOr<T> Wait(absl::AnyInvocable<void(absl::AnyInvocable<void(absl::StatusOr<T>)>)> f) {
  absl::Notification ready;
  absl::StatusOr<T> result;
  f([&](absl::StatusOr<T> r) {
    result = std::move(r);
    ready.Notify();
  });
  ready.WaitForNotification();
  return result;
}

}  // namespace redis_internal
}  // namespace redis
}  // namespace quotad

#endif  // QUOTAD_SERVICE_STORE_REDIS_REDIS_FUNCTIONS_INTERNAL_H_
