#include "service/core/clock.h"

#include <chrono>
#include <cstdint>
#include <mutex>
#include <set>
#include <thread>
#include <tuple>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace quotad {

// The enabled timers of one clock, by deadline, and the one thread at a time that fires them.
// Thread-safe. Does not own `clock`, which must outlive *this; owns no thread (RealClock does).
class TimerQueue {
 public:
  explicit TimerQueue(const Clock* clock) : clock_(clock) {}

  class TimerImpl : public Timer {
   public:
    TimerImpl(TimerQueue* queue, absl::AnyInvocable<void()> callback)
        : queue_(queue), callback_(std::move(callback)) {}
    ~TimerImpl() override { queue_->Remove(this, /*wait=*/true); }

    void EnableAt(absl::Duration deadline) override {
      queue_->Add(this, absl::ToInt64Nanoseconds(deadline));
    }
    void Enable(absl::Duration delay) override { EnableAt(queue_->clock_->Monotonic() + delay); }
    void Disable() override { queue_->Remove(this, /*wait=*/false); }
    bool enabled() const override {
      absl::MutexLock l(&queue_->mu_);
      return armed_;
    }

   private:
    friend class TimerQueue;
    TimerQueue* const queue_;
    absl::AnyInvocable<void()> callback_;  // run by the firing thread only
    // Guarded by queue_->mu_ (not expressible as an annotation on a nested object).
    bool armed_ = false;
    int64_t deadline_ns_ = 0;
    uint64_t seq_ = 0;
  };

  // The earliest deadline (ns of monotonic time), or INT64_MAX.
  int64_t Earliest() const ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock l(&mu_);
    return EarliestLocked();
  }

  // Runs the callbacks of the timers whose deadline has passed, earliest first, until none is
  // due. When another thread is already firing, returns false at once: that thread fires them.
  bool FireDue() ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock l(&mu_);
    if (firing_) return false;
    firing_ = true;
    firing_thread_ = std::this_thread::get_id();
    while (!due_.empty()) {
      const auto first = due_.begin();
      if (std::get<0>(*first) > absl::ToInt64Nanoseconds(clock_->Monotonic())) break;
      TimerImpl* t = std::get<2>(*first);
      due_.erase(first);
      t->armed_ = false;
      running_ = t;
      mu_.Unlock();
      t->callback_();
      mu_.Lock();
      running_ = nullptr;
      done_.SignalAll();
    }
    firing_ = false;
    return true;
  }

  // Blocks until a timer may be due: the earliest deadline passed, or `Add` brought it
  // forward. For the real clock's thread.
  void WaitForDue() ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock l(&mu_);
    const int64_t earliest = EarliestLocked();
    const int64_t now = absl::ToInt64Nanoseconds(clock_->Monotonic());
    if (earliest <= now) return;
    wake_.WaitWithTimeout(&mu_, earliest == INT64_MAX ? absl::Hours(1)
                                                      : absl::Nanoseconds(earliest - now));
  }

 private:
  using Key = std::tuple<int64_t, uint64_t, TimerImpl*>;

  int64_t EarliestLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return due_.empty() ? INT64_MAX : std::get<0>(*due_.begin());
  }

  void Add(TimerImpl* t, int64_t deadline_ns) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock l(&mu_);
    if (t->armed_) due_.erase(Key{t->deadline_ns_, t->seq_, t});
    const bool earlier = deadline_ns < EarliestLocked();
    t->armed_ = true;
    t->deadline_ns_ = deadline_ns;
    t->seq_ = next_seq_++;
    due_.insert(Key{t->deadline_ns_, t->seq_, t});
    if (earlier) wake_.Signal();
  }

  // `wait`: also until a callback of `t` running on another thread has returned.
  void Remove(TimerImpl* t, bool wait) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock l(&mu_);
    if (t->armed_) due_.erase(Key{t->deadline_ns_, t->seq_, t});
    t->armed_ = false;
    if (!wait || (firing_ && firing_thread_ == std::this_thread::get_id())) return;
    while (running_ == t) done_.Wait(&mu_);
  }

  const Clock* const clock_;
  mutable absl::Mutex mu_;
  absl::CondVar wake_;  // the earliest deadline moved forward
  absl::CondVar done_;  // a callback returned
  std::set<Key> due_ ABSL_GUARDED_BY(mu_);
  uint64_t next_seq_ ABSL_GUARDED_BY(mu_) = 0;
  bool firing_ ABSL_GUARDED_BY(mu_) = false;
  std::thread::id firing_thread_ ABSL_GUARDED_BY(mu_);
  TimerImpl* running_ ABSL_GUARDED_BY(mu_) = nullptr;
};

namespace {

class RealClock : public Clock {
 public:
  RealClock() : timers_(this) {}

  absl::Time Now() const override { return absl::Now(); }
  absl::Duration Monotonic() const override {
    return absl::FromChrono(std::chrono::steady_clock::now().time_since_epoch());
  }
  std::unique_ptr<Timer> CreateTimer(absl::AnyInvocable<void()> callback) override {
    std::call_once(started_, [this] {
      std::thread([this] {
        for (;;) {
          timers_.WaitForDue();
          timers_.FireDue();
        }
      }).detach();
    });
    return std::make_unique<TimerQueue::TimerImpl>(&timers_, std::move(callback));
  }

 private:
  TimerQueue timers_;
  std::once_flag started_;
};

}  // namespace

Clock* Clock::Real() {
  static Clock* const clock = new RealClock();
  return clock;
}

FakeClock::FakeClock(absl::Time start)
    : now_ns_(absl::ToUnixNanos(start)), timers_(std::make_unique<TimerQueue>(this)) {}

FakeClock::~FakeClock() = default;

std::unique_ptr<Timer> FakeClock::CreateTimer(absl::AnyInvocable<void()> callback) {
  return std::make_unique<TimerQueue::TimerImpl>(timers_.get(), std::move(callback));
}

void FakeClock::Set(absl::Time t) {
  now_ns_.store(absl::ToUnixNanos(t) - wall_step_ns_.load(std::memory_order_acquire),
                std::memory_order_release);
  timers_->FireDue();
}

void FakeClock::Advance(absl::Duration d) {
  const int64_t target = now_ns_.load(std::memory_order_acquire) + absl::ToInt64Nanoseconds(d);
  // Step from deadline to deadline, so that each callback sees the time it was due at.
  for (int64_t due = timers_->Earliest(); due <= target; due = timers_->Earliest()) {
    if (due > now_ns_.load(std::memory_order_acquire)) {
      now_ns_.store(due, std::memory_order_release);
    }
    if (!timers_->FireDue()) break;  // another thread fires them
  }
  if (target > now_ns_.load(std::memory_order_acquire)) {
    now_ns_.store(target, std::memory_order_release);
  }
}

absl::Duration FakeClock::NextTimer() const {
  const int64_t earliest = timers_->Earliest();
  return earliest == INT64_MAX ? absl::InfiniteDuration() : absl::Nanoseconds(earliest);
}

}  // namespace quotad
