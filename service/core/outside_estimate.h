#ifndef QUOTAD_SERVICE_CORE_OUTSIDE_ESTIMATE_H_
#define QUOTAD_SERVICE_CORE_OUTSIDE_ESTIMATE_H_

// What the ledger learns about one limit from throttles it cannot explain: the upstream refused
// a call that quotad's own count said had room, so something outside quotad (another tool on
// the same key) uses part of the limit. The estimate holds those units back from grants the way
// TCP's congestion control shares a link it cannot see: each throttle attributed to the limit
// shrinks the effective capacity (capacity - outside) multiplicatively; while answers are clean
// the effective capacity grows back additively, in time, to the configured capacity, so the
// estimate decays when the outside use stops. It also holds the limit's cooldown (Retry-After,
// or a back-off that starts over after a clean answer).
//
// A plain value type; not thread-safe (the owning credential's mutex guards it). No clock: every
// call takes `now` in ns.

#include <cstdint>

#include "absl/time/time.h"

namespace quotad {

class OutsideEstimate {
 public:
  // Each throttle keeps this fraction of the effective capacity.
  static constexpr double kDecrease = 0.9;
  // The effective capacity grows back by this fraction of the capacity per recovery period.
  static constexpr double kRecoveryPerPeriod = 0.05;

  OutsideEstimate() = default;
  // Restored from the journal: `outside` units at `at_ns`.
  OutsideEstimate(double outside, int64_t at_ns, int64_t cooldown_until_ns, int consecutive)
      : outside_(outside), at_ns_(at_ns), cooldown_until_ns_(cooldown_until_ns),
        consecutive_(consecutive) {}

  // Estimated outside units at `now`, in [0, capacity). `recovery_ns` > 0: the limit's period.
  double Units(int64_t capacity, int64_t recovery_ns, int64_t now) const;
  // The units to hold back from a grant of `cost` at `now`: Units() rounded to nearest, never
  // more than capacity - cost (a cost that fits the capacity can always be granted eventually).
  int64_t HoldBack(int64_t capacity, int64_t recovery_ns, int64_t cost, int64_t now) const;
  // A throttle attributed to this limit: the effective capacity shrinks by kDecrease (at least
  // one unit), never below one unit.
  void OnThrottle(int64_t capacity, int64_t recovery_ns, int64_t now);

  // The limit grants nothing before this (0: no cooldown).
  int64_t cooldown_until_ns() const { return cooldown_until_ns_; }
  // Throttles since the last clean answer, for the back-off.
  int consecutive() const { return consecutive_; }
  void CoolUntil(int64_t until_ns) {
    if (until_ns > cooldown_until_ns_) cooldown_until_ns_ = until_ns;
  }
  void CountThrottle() { ++consecutive_; }
  // A clean answer seen at `observed_ns`: the back-off starts over when it came after the
  // cooldown began to end. Returns whether anything changed.
  bool OnClean(int64_t observed_ns) {
    if (consecutive_ == 0 || observed_ns < cooldown_until_ns_) return false;
    consecutive_ = 0;
    return true;
  }

  // Whether it still matters at `now`: some estimate left or a cooldown running.
  bool Active(int64_t capacity, int64_t recovery_ns, int64_t now) const {
    return now < cooldown_until_ns_ || consecutive_ > 0 ||
           Units(capacity, recovery_ns, now) > 0;
  }
  // When the estimate has decayed to nothing (for the journal's compaction).
  int64_t GoneAt(int64_t capacity, int64_t recovery_ns) const;

  // For the journal: outside units as of at_ns().
  double raw_outside() const { return outside_; }
  int64_t at_ns() const { return at_ns_; }

 private:
  // outside_ as it counts against `capacity` (> 1): never more than capacity - 1 units.
  double Start(int64_t capacity) const {
    return outside_ < static_cast<double>(capacity - 1) ? outside_
                                                         : static_cast<double>(capacity - 1);
  }

  double outside_ = 0;  // units at at_ns_
  int64_t at_ns_ = 0;
  int64_t cooldown_until_ns_ = 0;
  int consecutive_ = 0;
};

}  // namespace quotad

#endif  // QUOTAD_SERVICE_CORE_OUTSIDE_ESTIMATE_H_
