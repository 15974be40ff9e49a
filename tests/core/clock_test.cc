// Clock (clock.h): FakeClock's timers fire in deadline order only when the test advances
// monotonic time (never on a wall step), may be disabled, re-enabled and destroyed; and
// RealClock's timer thread fires them on real time (the only tests here that wait, briefly).

#include "service/core/clock.h"

#include <string>
#include <vector>

#include "absl/synchronization/notification.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace quotad {
namespace {

using ::testing::ElementsAre;

TEST(FakeClockTimerTest, FiresOnlyWhenAdvancedPastItsDeadline) {
  FakeClock clock;
  int fired = 0;
  std::unique_ptr<Timer> t = clock.CreateTimer([&] { ++fired; });
  EXPECT_FALSE(t->enabled());
  t->Enable(absl::Seconds(10));
  EXPECT_TRUE(t->enabled());
  clock.Advance(absl::Seconds(9));
  EXPECT_EQ(fired, 0);
  clock.Advance(absl::Seconds(1));
  EXPECT_EQ(fired, 1);
  EXPECT_FALSE(t->enabled());
  clock.Advance(absl::Hours(1));
  EXPECT_EQ(fired, 1);  // one-shot
}

TEST(FakeClockTimerTest, FiresInDeadlineOrderWithinOneAdvance) {
  FakeClock clock;
  std::vector<std::string> order;
  std::unique_ptr<Timer> a = clock.CreateTimer([&] { order.push_back("a"); });
  std::unique_ptr<Timer> b = clock.CreateTimer([&] { order.push_back("b"); });
  std::unique_ptr<Timer> c = clock.CreateTimer([&] { order.push_back("c"); });
  a->Enable(absl::Seconds(3));
  b->Enable(absl::Seconds(1));
  c->Enable(absl::Seconds(2));
  EXPECT_EQ(clock.NextTimer(), clock.Monotonic() + absl::Seconds(1));
  clock.Advance(absl::Seconds(5));
  EXPECT_THAT(order, ElementsAre("b", "c", "a"));
  EXPECT_EQ(clock.NextTimer(), absl::InfiniteDuration());
}

TEST(FakeClockTimerTest, DisableAndReenableReplaceTheDeadline) {
  FakeClock clock;
  int fired = 0;
  std::unique_ptr<Timer> t = clock.CreateTimer([&] { ++fired; });
  t->Enable(absl::Seconds(1));
  t->Disable();
  clock.Advance(absl::Seconds(2));
  EXPECT_EQ(fired, 0);
  t->Enable(absl::Seconds(5));
  t->Enable(absl::Seconds(1));  // replaces, does not add
  clock.Advance(absl::Seconds(1));
  EXPECT_EQ(fired, 1);
  clock.Advance(absl::Seconds(10));
  EXPECT_EQ(fired, 1);
}

TEST(FakeClockTimerTest, CallbackMayReenableItselfAndRunsAgainInTheSameAdvance) {
  FakeClock clock;
  const absl::Duration start = clock.Monotonic();
  std::vector<absl::Duration> seen;
  std::unique_ptr<Timer> t;
  t = clock.CreateTimer([&] {
    seen.push_back(clock.Monotonic() - start);
    t->Enable(absl::Seconds(1));
  });
  t->Enable(absl::Seconds(1));
  clock.Advance(absl::Seconds(3) + absl::Milliseconds(500));
  // Each run saw the time it was due at, not the end of the Advance.
  EXPECT_THAT(seen, ElementsAre(absl::Seconds(1), absl::Seconds(2), absl::Seconds(3)));
  EXPECT_EQ(clock.Monotonic() - start, absl::Seconds(3) + absl::Milliseconds(500));
  EXPECT_TRUE(t->enabled());
}

TEST(FakeClockTimerTest, PastDeadlineFiresAtTheNextAdvanceAndWallStepsFireNothing) {
  FakeClock clock;
  int fired = 0;
  std::unique_ptr<Timer> t = clock.CreateTimer([&] { ++fired; });
  t->EnableAt(clock.Monotonic() - absl::Seconds(1));
  EXPECT_EQ(fired, 0);  // never inside EnableAt
  clock.StepWall(absl::Hours(2));
  EXPECT_EQ(fired, 0);
  clock.Advance(absl::ZeroDuration());
  EXPECT_EQ(fired, 1);
}

TEST(FakeClockTimerTest, DestroyedTimerNeverFires) {
  FakeClock clock;
  int fired = 0;
  std::unique_ptr<Timer> t = clock.CreateTimer([&] { ++fired; });
  t->Enable(absl::Seconds(1));
  t.reset();
  clock.Advance(absl::Seconds(2));
  EXPECT_EQ(fired, 0);
  EXPECT_EQ(clock.NextTimer(), absl::InfiniteDuration());
}

TEST(RealClockTimerTest, FiresOnTheTimerThread) {
  absl::Notification fired;
  std::unique_ptr<Timer> t = Clock::Real()->CreateTimer([&] { fired.Notify(); });
  t->Enable(absl::Milliseconds(1));
  EXPECT_TRUE(fired.WaitForNotificationWithTimeout(absl::Seconds(30)));
}

TEST(RealClockTimerTest, AnEarlierTimerWakesTheThreadWaitingForALaterOne) {
  std::unique_ptr<Timer> late = Clock::Real()->CreateTimer([] {});
  late->Enable(absl::Hours(1));
  absl::Notification fired;
  std::unique_ptr<Timer> soon = Clock::Real()->CreateTimer([&] { fired.Notify(); });
  soon->Enable(absl::Milliseconds(1));
  EXPECT_TRUE(fired.WaitForNotificationWithTimeout(absl::Seconds(30)));
  EXPECT_TRUE(late->enabled());
}

}  // namespace
}  // namespace quotad
