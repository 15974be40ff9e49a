#ifndef QUOTAD_SERVICE_CORE_CLOCK_H_
#define QUOTAD_SERVICE_CORE_CLOCK_H_

#include <atomic>
#include <cstdint>

#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace quotad {

// Source of time for windows, buckets and leases. Implementations are thread-safe.
// Wall time (Now) places calendar boundaries; monotonic time measures every duration, so that a
// step of the system clock never shortens a window, a bucket's refill, a lease or a cooldown.
class Clock {
 public:
  virtual ~Clock() = default;
  virtual absl::Time Now() const = 0;
  // Time since an arbitrary origin that never steps. The default follows the wall clock, for
  // clocks that have only one.
  virtual absl::Duration Monotonic() const { return Now() - absl::UnixEpoch(); }

  // The process-wide real clock. Never destroyed.
  static Clock* Real();
};

// A clock that only moves when told to. For tests and the provider simulator. Set and Advance
// move both readings by the same amount; StepWall moves the wall clock alone, as an NTP step
// does. Thread-safe.
class FakeClock : public Clock {
 public:
  explicit FakeClock(absl::Time start = absl::FromUnixSeconds(1767225600))  // 2026-01-01 UTC
      : now_ns_(absl::ToUnixNanos(start)) {}

  absl::Time Now() const override {
    return absl::FromUnixNanos(now_ns_.load(std::memory_order_acquire) +
                               wall_step_ns_.load(std::memory_order_acquire));
  }
  absl::Duration Monotonic() const override {
    return absl::Nanoseconds(now_ns_.load(std::memory_order_acquire));
  }
  void Set(absl::Time t) {
    now_ns_.store(absl::ToUnixNanos(t) - wall_step_ns_.load(std::memory_order_acquire),
                  std::memory_order_release);
  }
  void Advance(absl::Duration d) {
    now_ns_.fetch_add(absl::ToInt64Nanoseconds(d), std::memory_order_acq_rel);
  }
  void StepWall(absl::Duration d) {
    wall_step_ns_.fetch_add(absl::ToInt64Nanoseconds(d), std::memory_order_acq_rel);
  }

 private:
  std::atomic<int64_t> now_ns_;
  std::atomic<int64_t> wall_step_ns_{0};
};

}  // namespace quotad

#endif  // QUOTAD_SERVICE_CORE_CLOCK_H_
