// Skewed replica clocks (issue 13, "One clock"): three RedisBackends on one real redis-server,
// whose own clocks read Redis's time +25 s, -25 s and +10 min, decide every window on Redis's
// TIME. A calendar minute grants exactly its capacity through all three and each names the same
// boundary (Redis's next minute) in its retry time; none grants the next window before Redis
// reaches that boundary, and together they then grant exactly the capacity again. A sliding
// window never holds more than its capacity in any period of Redis time.

#include <gtest/gtest.h>

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "service/config/config.h"
#include "service/store/redis/redis_backend.h"
#include "tests/redis/backend_helpers.h"
#include "tests/redis/redis_harness.h"
#include "tests/support/eventually.h"

namespace quotad {
namespace {

using ::quotad::testing::AcquireThrough;
using ::quotad::testing::Eventually;
using ::quotad::testing::RedisServer;
using ::quotad::testing::ReplicaOptions;

constexpr int kCapacity = 6;
constexpr absl::Duration kTtl = absl::Minutes(10);
constexpr absl::Duration kSlidingPeriod = absl::Seconds(2);

constexpr char kConfig[] = R"(
credentials:
  - name: team/skew
    features:
      - name: cal
        default_lease_ttl: 10m
        limits:
          - {name: per_minute, kind: calendar, unit: minute, capacity: 6}
      - name: slide
        default_lease_ttl: 10m
        limits:
          - {name: fast, kind: sliding, period: 2s, capacity: 6}
)";

// The real clock moved by a fixed offset: a replica whose clock is wrong (our own Clock
// interface; timers follow the real clock).
class OffsetClock : public Clock {
 public:
  explicit OffsetClock(absl::Duration offset) : offset_(offset) {}
  absl::Time Now() const override { return Clock::Real()->Now() + offset_; }
  absl::Duration Monotonic() const override { return Clock::Real()->Monotonic(); }
  std::unique_ptr<Timer> CreateTimer(absl::AnyInvocable<void()> callback) override {
    return Clock::Real()->CreateTimer(std::move(callback));
  }

 private:
  const absl::Duration offset_;
};

class SkewTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<std::unique_ptr<RedisServer>> redis = RedisServer::Start();
    ASSERT_TRUE(redis.ok()) << redis.status();
    redis_ = *std::move(redis);
    absl::StatusOr<Policy> policy = LoadPolicyFromString(kConfig, "test.yaml");
    ASSERT_TRUE(policy.ok()) << policy.status();
    // Offsets from the machine's clock, which is Redis's (same host): two replicas that disagree
    // by 50 s, and one that is wrong by more than a whole window.
    for (absl::Duration offset : {absl::Seconds(25), absl::Seconds(-25), absl::Minutes(10)}) {
      clocks_.push_back(std::make_unique<OffsetClock>(offset));
      RedisBackendOptions options = ReplicaOptions(*redis_);
      absl::StatusOr<std::unique_ptr<RedisBackend>> b =
          RedisBackend::Create(*policy, clocks_.back().get(), options);
      ASSERT_TRUE(b.ok()) << b.status();
      ASSERT_TRUE((*b)->serving());
      replicas_.push_back(*std::move(b));
    }
  }

  // Redis's own TIME.
  absl::Time RedisNow() {
    absl::StatusOr<std::string> t = redis_->Command({"TIME"});
    EXPECT_TRUE(t.ok()) << t.status();
    if (!t.ok()) return absl::InfinitePast();
    std::vector<std::string> parts = absl::StrSplit(*t, ' ');
    int64_t sec = 0, usec = 0;
    EXPECT_TRUE(parts.size() == 2 && absl::SimpleAtoi(parts[0], &sec) &&
                absl::SimpleAtoi(parts[1], &usec))
        << *t;
    return absl::FromUnixSeconds(sec) + absl::Microseconds(usec);
  }

  Decision Acquire(int replica, const std::string& feature) {
    AcquireRequest req;
    req.credential = "team/skew";
    req.feature = feature;
    absl::Notification done;
    absl::StatusOr<Decision> out;
    replicas_[replica]->AcquireShared(req, SharedRequestId{}, [&](absl::StatusOr<Decision> d) {
      out = std::move(d);
      done.Notify();
    });
    EXPECT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(10)));
    EXPECT_TRUE(out.ok()) << out.status();
    return out.ok() ? *out : Decision{};
  }

  std::unique_ptr<RedisServer> redis_;
  std::vector<std::unique_ptr<OffsetClock>> clocks_;
  std::vector<std::unique_ptr<RedisBackend>> replicas_;
};

TEST_F(SkewTest, CalendarWindowGrantsItsCapacityAndTurnsAtRedisBoundary) {
  const int n = static_cast<int>(replicas_.size());
  // Start early in a Redis minute, so that the first burst stays inside it.
  ASSERT_TRUE(Eventually(
      [&] {
        const int64_t s = absl::ToUnixSeconds(RedisNow()) % 60;
        return s >= 1 && s < 40;
      },
      absl::Seconds(70), absl::Milliseconds(100)));
  const absl::Time start = RedisNow();
  const absl::Time window = absl::FromUnixSeconds(absl::ToUnixSeconds(start) / 60 * 60);
  const absl::Time boundary = window + absl::Minutes(1);

  // The first window: three asks per unit through the replicas in turn.
  int granted = 0;
  for (int i = 0; i < 3 * kCapacity; ++i) {
    const int r = i % n;
    Decision d = Acquire(r, "cal");
    if (d.granted) {
      ++granted;
      // Timed by Redis, not by the replica's clock (25 s or 10 min away).
      const absl::Time at = d.lease_expiry - kTtl;
      EXPECT_GE(at, start) << "replica " << r;
      EXPECT_LT(at, boundary) << "replica " << r;
    } else {
      EXPECT_EQ(d.limited_by, "cal.per_minute");
      // Every replica names the same boundary: Redis's next minute.
      EXPECT_EQ(d.retry_at, boundary) << "replica " << r << " retry_at "
                                      << absl::FormatTime(d.retry_at);
    }
  }
  EXPECT_EQ(granted, kCapacity);

  // Up to and past the boundary: the replicas in turn, every 20 ms. Nothing is granted before
  // Redis reaches the boundary; after it, exactly the capacity again.
  std::vector<absl::Time> next;
  std::vector<int> by_replica(n, 0);
  const absl::Time deadline = absl::Now() + (boundary - RedisNow()) + absl::Seconds(10);
  int denied_after = 0;
  for (int i = 0; absl::Now() < deadline && denied_after < n; ++i) {
    const int r = i % n;
    Decision d = Acquire(r, "cal");
    if (d.granted) {
      const absl::Time at = d.lease_expiry - kTtl;
      EXPECT_GE(at, boundary) << "replica " << r << " granted the next window at "
                              << absl::FormatTime(at);
      next.push_back(at);
      ++by_replica[r];
    } else if (next.empty()) {
      EXPECT_EQ(d.retry_at, boundary) << "replica " << r;
      // Ask again once Redis's clock has reached the retry time it gave.
      ASSERT_TRUE(Eventually([&] { return RedisNow() >= d.retry_at; },
                             boundary - RedisNow() + absl::Seconds(10)));
    } else {
      ++denied_after;  // the new window is full: once through each replica
    }
  }
  EXPECT_EQ(static_cast<int>(next.size()), kCapacity);
  for (int r = 0; r < n; ++r) EXPECT_GT(by_replica[r], 0) << "replica " << r;
}

TEST_F(SkewTest, SlidingWindowNeverHoldsMoreThanItsCapacityInRedisTime) {
  const int n = static_cast<int>(replicas_.size());
  std::vector<absl::Time> grants;
  const absl::Time end = absl::Now() + absl::Seconds(5);
  int denials = 0;
  for (int i = 0; absl::Now() < end; ++i) {
    const int r = i % n;
    const absl::Time before = RedisNow();
    Decision d = Acquire(r, "slide");
    if (d.granted) {
      const absl::Time at = d.lease_expiry - kTtl;
      // Redis's time, within the round trip (the replica's own clock is 25 s or 10 min away;
      // the bound leaves a loaded machine's round trip room and still tells them apart).
      EXPECT_GE(at, before) << "replica " << r;
      EXPECT_LT(at - before, absl::Seconds(10)) << "replica " << r;
      grants.push_back(at);
    } else {
      EXPECT_EQ(d.limited_by, "slide.fast");
      // The first burst, asked back to back well inside one period: exactly the capacity.
      if (++denials == 1) {
        EXPECT_EQ(static_cast<int>(grants.size()), kCapacity);
      }
      // Ask again once Redis's clock has reached the retry time it gave (the oldest unit left).
      ASSERT_TRUE(Eventually([&] { return RedisNow() >= d.retry_at; }, absl::Seconds(5)));
    }
  }
  std::sort(grants.begin(), grants.end());
  // At most the capacity in any period of Redis time (1 ms spared for rounding to µs), and
  // the capacity is reached (the check can fail both ways).
  int most = 0;
  for (size_t i = 0; i < grants.size(); ++i) {
    int in_window = 0;
    for (size_t j = 0; j <= i; ++j) {
      if (grants[j] > grants[i] - kSlidingPeriod + absl::Milliseconds(1)) ++in_window;
    }
    EXPECT_LE(in_window, kCapacity) << "at " << absl::FormatTime(grants[i]);
    most = std::max(most, in_window);
  }
  EXPECT_EQ(most, kCapacity);
  // 5 s of asking: the window turned at least twice.
  EXPECT_GE(static_cast<int>(grants.size()), 2 * kCapacity);
}

}  // namespace
}  // namespace quotad
