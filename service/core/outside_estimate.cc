#include "service/core/outside_estimate.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace quotad {

double OutsideEstimate::Units(int64_t capacity, int64_t recovery_ns, int64_t now) const {
  if (outside_ <= 0 || capacity <= 1 || recovery_ns <= 0) return 0;
  const double elapsed = static_cast<double>(std::max<int64_t>(0, now - at_ns_));
  const double recovered = static_cast<double>(capacity) * kRecoveryPerPeriod * elapsed /
                           static_cast<double>(recovery_ns);
  // Learnt on a larger capacity (before a reload or restart that shrank it): it decays from
  // what this capacity can hold, so it is gone in 1 / kRecoveryPerPeriod periods as ever.
  return std::clamp(Start(capacity) - recovered, 0.0, static_cast<double>(capacity - 1));
}

int64_t OutsideEstimate::HoldBack(int64_t capacity, int64_t recovery_ns, int64_t cost,
                                  int64_t now) const {
  const double units = Units(capacity, recovery_ns, now);
  if (units <= 0) return 0;
  const int64_t rounded = static_cast<int64_t>(std::llround(units));
  return std::clamp<int64_t>(rounded, 0, std::max<int64_t>(0, capacity - cost));
}

void OutsideEstimate::OnThrottle(int64_t capacity, int64_t recovery_ns, int64_t now) {
  if (capacity <= 1 || capacity == std::numeric_limits<int64_t>::max()) return;
  const double cap = static_cast<double>(capacity);
  const double effective = cap - Units(capacity, recovery_ns, now);
  const double next = std::max(1.0, std::min(effective * kDecrease, effective - 1.0));
  outside_ = cap - next;
  at_ns_ = now;
}

int64_t OutsideEstimate::GoneAt(int64_t capacity, int64_t recovery_ns) const {
  if (outside_ <= 0 || capacity <= 1 || recovery_ns <= 0) return at_ns_;
  const double per_ns = static_cast<double>(capacity) * kRecoveryPerPeriod /
                        static_cast<double>(recovery_ns);
  const double ns = std::ceil(Start(capacity) / per_ns);
  if (ns >= 4e18) return std::numeric_limits<int64_t>::max();
  return at_ns_ + static_cast<int64_t>(ns);
}

}  // namespace quotad
