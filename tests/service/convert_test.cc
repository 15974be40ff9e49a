// Core values to wire messages (service/server/convert.h).

#include "service/server/convert.h"

#include <cstdint>
#include <limits>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace quotad {
namespace {

TEST(ConvertTest, TimeKeepsNanosecondsAndHandlesTimesBeforeTheEpoch) {
  google::protobuf::Timestamp ts;
  TimeToProto(absl::FromUnixNanos(1767225600123456789), &ts);
  EXPECT_EQ(ts.seconds(), 1767225600);
  EXPECT_EQ(ts.nanos(), 123456789);
  TimeToProto(absl::FromUnixMillis(-1500), &ts);
  EXPECT_EQ(ts.seconds(), -2);
  EXPECT_EQ(ts.nanos(), 500000000);
}

TEST(ConvertTest, DurationsAreClampedToTheProtoRange) {
  google::protobuf::Duration d;
  DurationToProto(absl::Milliseconds(2500), &d);
  EXPECT_EQ(d.seconds(), 2);
  EXPECT_EQ(d.nanos(), 500000000);
  DurationToProto(absl::InfiniteDuration(), &d);
  EXPECT_EQ(d.seconds(), 315576000000);
  EXPECT_EQ(d.nanos(), 0);
  DurationToProto(-absl::InfiniteDuration(), &d);
  EXPECT_EQ(d.seconds(), -315576000000);
}

TEST(ConvertTest, InfiniteTimesAreNotFinite) {
  EXPECT_FALSE(IsFinite(absl::InfiniteFuture()));
  EXPECT_FALSE(IsFinite(absl::InfinitePast()));
  EXPECT_TRUE(IsFinite(absl::UnixEpoch()));
}

TEST(ConvertTest, LimitStatusShowsUnlimitedAndCooldownsWithoutCapacity) {
  LimitStatus window;
  window.name = "requests.per_minute";
  window.scope = "tenant-1";
  window.kind = LimitKind::kSliding;
  window.capacity = 10;
  window.used = 4;
  window.remaining = 5;
  window.outside_estimate = 1;
  window.reset = absl::FromUnixSeconds(1000);
  v1::LimitStatus out;
  LimitStatusToProto(window, &out);
  EXPECT_EQ(out.name(), "requests.per_minute");
  EXPECT_EQ(out.scope(), "tenant-1");
  EXPECT_EQ(out.kind(), v1::LIMIT_KIND_SLIDING);
  EXPECT_EQ(out.capacity(), 10);
  EXPECT_EQ(out.used(), 4);
  EXPECT_EQ(out.remaining(), 5);
  EXPECT_EQ(out.outside_estimate(), 1);
  EXPECT_EQ(out.reset_at().seconds(), 1000);

  LimitStatus unlimited;
  unlimited.kind = LimitKind::kUnlimited;
  unlimited.capacity = std::numeric_limits<int64_t>::max();
  unlimited.remaining = std::numeric_limits<int64_t>::max();
  v1::LimitStatus u;
  LimitStatusToProto(unlimited, &u);
  EXPECT_EQ(u.kind(), v1::LIMIT_KIND_UNLIMITED);
  EXPECT_EQ(u.capacity(), 0);
  EXPECT_EQ(u.remaining(), 0);
  EXPECT_FALSE(u.has_reset_at());

  LimitStatus cooldown;
  cooldown.name = "requests.cooldown";
  cooldown.cooldown = true;
  cooldown.reset = absl::FromUnixSeconds(2000);
  v1::LimitStatus c;
  LimitStatusToProto(cooldown, &c);
  EXPECT_EQ(c.kind(), v1::LIMIT_KIND_COOLDOWN);
  EXPECT_EQ(c.reset_at().seconds(), 2000);
}

TEST(ConvertTest, LeaseCarriesItsHolderAndTimes) {
  LeaseInfo lease;
  lease.id = LeaseId{0x0123456789abcdef, 0x0123456789abcdef};
  lease.credential = "team-a/key";
  lease.feature = "jobs";
  lease.holder = "alice/worker-1";
  lease.cost = 3;
  lease.granted_at = absl::FromUnixSeconds(10);
  lease.expiry = absl::InfiniteFuture();
  lease.holds_slots = true;
  v1::Lease out;
  LeaseToProto(lease, &out);
  EXPECT_EQ(out.lease_id(), "0123456789abcdef0123456789abcdef");
  EXPECT_EQ(out.holder(), "alice/worker-1");
  EXPECT_EQ(out.cost(), 3);
  EXPECT_EQ(out.granted_at().seconds(), 10);
  EXPECT_FALSE(out.has_expires_at());
  EXPECT_TRUE(out.holds_slots());
}

TEST(ConvertTest, EnumsMapOneToOne) {
  EXPECT_EQ(LimitKindToProto(LimitKind::kCalendar), v1::LIMIT_KIND_CALENDAR);
  EXPECT_EQ(LimitKindToProto(LimitKind::kRolling), v1::LIMIT_KIND_ROLLING);
  EXPECT_EQ(LimitKindToProto(LimitKind::kTokenBucket), v1::LIMIT_KIND_TOKEN_BUCKET);
  EXPECT_EQ(LimitKindToProto(LimitKind::kConcurrency), v1::LIMIT_KIND_CONCURRENCY);
  EXPECT_EQ(CalendarUnitToProto(CalendarUnit::kNone), v1::CALENDAR_UNIT_UNSPECIFIED);
  EXPECT_EQ(CalendarUnitToProto(CalendarUnit::kMonth), v1::CALENDAR_UNIT_MONTH);
}

}  // namespace
}  // namespace quotad
