#ifndef QUOTAD_SERVICE_CORE_CLOCK_H_
#define QUOTAD_SERVICE_CORE_CLOCK_H_

#include <atomic>
#include <cstdint>
#include <memory>

#include "absl/functional/any_invocable.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace quotad {

class TimerQueue;

// A one-shot timer on a Clock: runs its callback once the clock's monotonic reading reaches the
// deadline it was enabled for. Enabling again replaces the deadline. Thread-safe. The callback
// runs on the clock's timer thread (real clock) or inside FakeClock::Advance (fake clock), never
// twice at once; it may enable or disable its own timer. Destroying the timer disables it and
// waits for a callback running on another thread to return.
class Timer {
 public:
  virtual ~Timer() = default;
  // Fires at monotonic time `deadline` (Clock::Monotonic()); at once when that has passed.
  virtual void EnableAt(absl::Duration deadline) = 0;
  // Fires `delay` from now.
  virtual void Enable(absl::Duration delay) = 0;
  virtual void Disable() = 0;
  virtual bool enabled() const = 0;
};

// Source of time for windows, buckets, leases and timers. Implementations are thread-safe.
// Wall time (Now) places calendar boundaries; monotonic time measures every duration, so that a
// step of the system clock never shortens a window, a bucket's refill, a lease or a cooldown.
// Timers fire on monotonic time: in tests, advancing a FakeClock fires them (Envoy's TimeSource
// and Dispatcher shape), so that nothing above the core waits on real time for a timer.
class Clock {
 public:
  virtual ~Clock() = default;
  virtual absl::Time Now() const = 0;
  // Time since an arbitrary origin that never steps. The default follows the wall clock, for
  // clocks that have only one.
  virtual absl::Duration Monotonic() const { return Now() - absl::UnixEpoch(); }
  // A disabled timer that runs `callback` when it fires. The timer must not outlive the clock.
  virtual std::unique_ptr<Timer> CreateTimer(absl::AnyInvocable<void()> callback) = 0;

  // The process-wide real clock. Never destroyed. Its timers share one thread, started by the
  // first timer created (the only thread the core starts): callbacks must be short and hand
  // long work to a thread of their owner.
  static Clock* Real();
};

// A clock that only moves when told to. For tests and the provider simulator. Set and Advance
// move both readings by the same amount and run the timers that come due on the calling thread,
// in deadline order; Advance stops the clock at each deadline on its way, so that a callback
// sees the time it was due at (and one that re-enables itself runs again within the same
// Advance). A timer enabled for a time already passed fires at the next Set or Advance,
// Advance(ZeroDuration()) included. StepWall moves the wall clock alone, as an NTP
// step does, and fires nothing. Thread-safe.
class FakeClock : public Clock {
 public:
  explicit FakeClock(absl::Time start = absl::FromUnixSeconds(1767225600));  // 2026-01-01 UTC
  ~FakeClock() override;

  absl::Time Now() const override {
    return absl::FromUnixNanos(now_ns_.load(std::memory_order_acquire) +
                               wall_step_ns_.load(std::memory_order_acquire));
  }
  absl::Duration Monotonic() const override {
    return absl::Nanoseconds(now_ns_.load(std::memory_order_acquire));
  }
  std::unique_ptr<Timer> CreateTimer(absl::AnyInvocable<void()> callback) override;

  void Set(absl::Time t);
  void Advance(absl::Duration d);
  void StepWall(absl::Duration d) {
    wall_step_ns_.fetch_add(absl::ToInt64Nanoseconds(d), std::memory_order_acq_rel);
  }
  // The earliest deadline of an enabled timer (monotonic), or InfiniteDuration() when none.
  absl::Duration NextTimer() const;

 private:
  std::atomic<int64_t> now_ns_;
  std::atomic<int64_t> wall_step_ns_{0};
  const std::unique_ptr<TimerQueue> timers_;
};

}  // namespace quotad

#endif  // QUOTAD_SERVICE_CORE_CLOCK_H_
