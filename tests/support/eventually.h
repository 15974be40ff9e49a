#ifndef QUOTAD_TESTS_SUPPORT_EVENTUALLY_H_
#define QUOTAD_TESTS_SUPPORT_EVENTUALLY_H_

// A bounded poll for integration tests, which watch a real server, a real binary or a background
// thread act on its own schedule:
//
//   ASSERT_TRUE(Eventually([&] { return server->ledger()->waiting() == 1; }));
//
// Not for unit tests: those drive a FakeClock and never wait on real time.

#include <functional>

#include "absl/time/time.h"

namespace quotad::testing {

// Calls `condition` every `interval` (real time) until it returns true or `timeout` has passed;
// returns its last answer, so a condition that holds just at the deadline still counts.
bool Eventually(const std::function<bool()>& condition, absl::Duration timeout = absl::Seconds(10),
                absl::Duration interval = absl::Milliseconds(5));

}  // namespace quotad::testing

#endif  // QUOTAD_TESTS_SUPPORT_EVENTUALLY_H_
