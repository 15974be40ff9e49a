// Counter's write-ahead reservations (limits_reservation.cc): which records a charge needs made
// durable first, as typed ReservationBlocks, and that a recorded reservation covers what follows.

#include <cstdint>

#include "gtest/gtest.h"
#include "service/core/limits.h"
#include "tests/support/policy_builders.h"

namespace quotad {
namespace {

using testing::Calendar;
using testing::Concurrency;
using testing::Sliding;
using testing::Utc;

int64_t Ns(absl::Time t) { return absl::ToUnixNanos(t); }

// Fits() first, as the ledger does before asking for a reservation.
bool Need(Counter& c, const Rule& rule, int64_t now, int64_t cost, int64_t block,
          ReservationNeed* need) {
  int64_t retry = 0;
  EXPECT_TRUE(c.Fits(rule, now, cost, &retry));
  return c.NeedsReservation(rule, now, cost, block, need);
}

TEST(CounterReservationTest, CalendarReservesTheWindowAheadByABlock) {
  const Rule rule(Calendar("day", 100, CalendarUnit::kDay), "f.day");
  Counter c;
  const int64_t now = Ns(Utc(2026, 3, 1, 12));
  ReservationNeed need;
  ASSERT_TRUE(Need(c, rule, now, 1, 10, &need));
  ASSERT_EQ(need.blocks().size(), 1u);
  EXPECT_EQ(need.blocks()[0].window_start_ns, Ns(Utc(2026, 3, 1)));
  EXPECT_EQ(need.blocks()[0].until_ns, Ns(Utc(2026, 3, 2)));
  EXPECT_EQ(need.blocks()[0].units, 11);
  c.Reserved(rule, now, need);
  c.Charge(rule, now, 1, 0, 0);
  // The block covers ten more units; the eleventh needs a new record.
  ReservationNeed more;
  EXPECT_FALSE(Need(c, rule, now, 10, 10, &more));
  EXPECT_EQ(more.count, 0);
  EXPECT_TRUE(Need(c, rule, now, 11, 10, &more));
  EXPECT_EQ(more.blocks()[0].units, 22);
}

TEST(CounterReservationTest, CalendarChargeWithinTheGuardAlsoReservesTheNextWindow) {
  LimitSpec spec = Calendar("day", 100, CalendarUnit::kDay);
  spec.guard = absl::Minutes(5);
  const Rule rule(spec, "f.day");
  Counter c;
  const int64_t now = Ns(Utc(2026, 3, 1, 23, 58));
  ReservationNeed need;
  ASSERT_TRUE(Need(c, rule, now, 1, 10, &need));
  ASSERT_EQ(need.blocks().size(), 2u);
  EXPECT_EQ(need.blocks()[0].until_ns, Ns(Utc(2026, 3, 2)));
  EXPECT_EQ(need.blocks()[1].window_start_ns, Ns(Utc(2026, 3, 2)));
  EXPECT_EQ(need.blocks()[1].until_ns, Ns(Utc(2026, 3, 3)));
  EXPECT_EQ(need.blocks()[1].units, 11);
  c.Reserved(rule, now, need);
  c.Charge(rule, now, 1, 0, 0);
  ReservationNeed more;
  EXPECT_FALSE(Need(c, rule, now, 1, 10, &more));
}

TEST(CounterReservationTest, SlidingNewBlockClosesThePreviousOne) {
  const Rule rule(Sliding("minute", 100, absl::Minutes(1)), "f.minute");
  Counter c;
  const int64_t t0 = Ns(Utc(2026, 3, 1, 12));
  ReservationNeed first;
  ASSERT_TRUE(Need(c, rule, t0, 1, 10, &first));
  ASSERT_EQ(first.blocks().size(), 1u);
  EXPECT_EQ(first.blocks()[0].window_start_ns, t0);
  EXPECT_EQ(first.blocks()[0].until_ns, kInfiniteNs);
  EXPECT_EQ(first.blocks()[0].units, 11);
  c.Reserved(rule, t0, first);
  c.Charge(rule, t0, 11, 0, 0);  // uses the whole block

  const int64_t t1 = t0 + absl::ToInt64Nanoseconds(absl::Seconds(1));
  ReservationNeed second;
  ASSERT_TRUE(Need(c, rule, t1, 1, 10, &second));
  ASSERT_EQ(second.blocks().size(), 2u);
  // The old block keeps its units and now ends one span after its last possible charge.
  EXPECT_EQ(second.blocks()[0].window_start_ns, t0);
  EXPECT_EQ(second.blocks()[0].until_ns, t1 + rule.span_ns);
  EXPECT_EQ(second.blocks()[0].units, -1);
  EXPECT_EQ(second.blocks()[1].window_start_ns, t1);
  EXPECT_EQ(second.blocks()[1].units, 11);
}

TEST(CounterReservationTest, ConcurrencyNeverNeedsOne) {
  const Rule rule(Concurrency("slots", 3), "f.slots");
  Counter c;
  ReservationNeed need;
  EXPECT_FALSE(Need(c, rule, Ns(Utc(2026, 3, 1)), 1, 10, &need));
  EXPECT_EQ(need.count, 0);
}

}  // namespace
}  // namespace quotad
