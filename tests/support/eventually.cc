#include "tests/support/eventually.h"

#include "absl/time/clock.h"

namespace quotad::testing {

bool Eventually(const std::function<bool()>& condition, absl::Duration timeout,
                absl::Duration interval) {
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    if (condition()) return true;
    absl::SleepFor(interval);
  }
  return condition();
}

}  // namespace quotad::testing
