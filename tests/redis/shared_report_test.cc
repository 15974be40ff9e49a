// Report and GetUsage in shared mode, against a real redis-server: two RedisBackends on one
// Redis (what two quotad replicas run) answer as one embedded Ledger does. A count adopted
// through replica A denies through replica B; a throttle's cooldown reported through A stops B;
// sent_at decides which of quotad's sliding grants an upstream count is compared with; the
// outside estimate learnt from throttles holds the same units back through every replica, and
// the back-off doubles and starts over alike; and Usage after the same sequence of operations
// equals the embedded ledger's.

#include <algorithm>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "service/config/config.h"
#include "service/core/ledger.h"
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

constexpr char kCred[] = "team/r";

// No profile: the throttle defaults (429, no jitter), with a 1 min initial back-off (SetUp).
constexpr char kConfig[] = R"(
credentials:
  - name: team/r
    features:
      - name: cal
        limits:
          - {name: daily, kind: calendar, unit: day, zone: America/New_York, capacity: 10}
      - name: slide
        limits:
          - {name: fast, kind: sliding, period: 2s, capacity: 10}
      - name: mix
        draws_on: [cal]
        default_lease_ttl: 10m
        limits:
          - {name: hourly, kind: rolling, period: 1h, capacity: 20}
          - {name: burst, kind: token_bucket, capacity: 5, rate: 1, period: 1h}
          - {name: slots, kind: concurrency, capacity: 3}
          - {name: free, kind: unlimited}
      - name: scoped
        limits:
          - {name: per, kind: sliding, period: 1h, capacity: 3, scoped: true}
      - name: slow
        limits:
          - {name: hourly, kind: sliding, period: 1h, capacity: 10}
      - name: learn
        limits:
          - {name: hourly, kind: sliding, period: 1h, capacity: 10}
          - {name: daily, kind: calendar, unit: day, capacity: 100}
)";

// Feature `learn` backs off from 50 ms (doubling, no jitter), so its cooldowns pass in a test.
constexpr absl::Duration kLearnBackoff = absl::Milliseconds(50);

UpstreamHeaders Headers(std::vector<std::pair<std::string, std::string>> h) { return h; }

class SharedReportTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<std::unique_ptr<RedisServer>> redis = RedisServer::Start();
    ASSERT_TRUE(redis.ok()) << redis.status();
    redis_ = *std::move(redis);
    absl::StatusOr<Policy> policy = LoadPolicyFromString(kConfig, "test.yaml");
    ASSERT_TRUE(policy.ok()) << policy.status();
    policy_ = *std::move(policy);
    for (FeatureSpec& f : policy_.credentials[0].features) {
      f.throttle.initial_backoff = f.name == "learn" ? kLearnBackoff : absl::Minutes(1);
    }
    for (int i = 0; i < 2; ++i) {
      RedisBackendOptions options = ReplicaOptions(*redis_);
      absl::StatusOr<std::unique_ptr<RedisBackend>> b =
          RedisBackend::Create(policy_, Clock::Real(), options);
      ASSERT_TRUE(b.ok()) << b.status();
      ASSERT_TRUE((*b)->serving());
      replicas_.push_back(*std::move(b));
    }
    absl::StatusOr<std::unique_ptr<Ledger>> ledger = Ledger::Create(policy_, Clock::Real());
    ASSERT_TRUE(ledger.ok()) << ledger.status();
    ledger_ = *std::move(ledger);
  }

  // An Acquire through replica `i`.
  Decision Shared(int i, const std::string& feature, int64_t cost = 1,
                  const std::string& scope = "") {
    AcquireRequest req;
    req.credential = kCred;
    req.feature = feature;
    req.scope = scope;
    req.cost = cost;
    absl::StatusOr<Decision> out = AcquireThrough(*replicas_[i], req);
    EXPECT_TRUE(out.ok()) << out.status();
    return out.ok() ? *out : Decision{};
  }

  Decision Embedded(const std::string& feature, int64_t cost = 1, const std::string& scope = "") {
    AcquireRequest req;
    req.credential = kCred;
    req.feature = feature;
    req.scope = scope;
    req.cost = cost;
    absl::StatusOr<Decision> d = ledger_->Acquire(req);
    EXPECT_TRUE(d.ok()) << d.status();
    return d.ok() ? *d : Decision{};
  }

  static UpstreamAnswer Answer(absl::string_view feature, int status, UpstreamHeaders headers,
                               absl::Time sent_at = absl::InfinitePast()) {
    UpstreamAnswer a;
    a.credential = kCred;
    a.feature = feature;
    a.http_status = status;
    a.headers = std::move(headers);
    a.sent_at = sent_at;
    return a;
  }

  // GetUsage through every replica equals the embedded ledger's.
  void ExpectSameUsage() {
    absl::StatusOr<std::vector<LimitStatus>> e = ledger_->Usage(kCred);
    ASSERT_TRUE(e.ok()) << e.status();
    for (int i = 0; i < 2; ++i) {
      absl::StatusOr<std::vector<LimitStatus>> s = replicas_[i]->Usage(kCred);
      ASSERT_TRUE(s.ok()) << s.status();
      ASSERT_EQ(s->size(), e->size()) << "replica " << i;
      for (size_t j = 0; j < e->size(); ++j) {
        const LimitStatus& a = (*s)[j];
        const LimitStatus& b = (*e)[j];
        SCOPED_TRACE(absl::StrCat("replica ", i, ": ", b.name, "[", b.scope, "]"));
        EXPECT_EQ(a.name, b.name);
        EXPECT_EQ(a.scope, b.scope);
        EXPECT_EQ(a.kind, b.kind);
        EXPECT_EQ(a.capacity, b.capacity);
        EXPECT_EQ(a.used, b.used);
        EXPECT_EQ(a.outside_estimate, b.outside_estimate);
        EXPECT_EQ(a.remaining, b.remaining);
        EXPECT_EQ(a.cooldown, b.cooldown);
        // The same instant for a calendar window's end or a Retry-After; otherwise times of
        // the two stores' own grants, made a few milliseconds apart.
        if (b.kind == LimitKind::kCalendar || b.cooldown) {
          EXPECT_LE(absl::AbsDuration(a.reset - b.reset), absl::Milliseconds(1));
        } else if (b.reset == absl::InfiniteFuture()) {
          EXPECT_EQ(a.reset, absl::InfiniteFuture());
        } else {
          EXPECT_LE(absl::AbsDuration(a.reset - b.reset), absl::Seconds(5));
        }
      }
    }
  }

  // An Acquire through both (replica `cost % 2`), which must decide alike; `release_used` set:
  // released at once with that many used, refunding and freeing alike.
  void Both(const std::string& feature, int64_t cost, const std::string& scope,
            std::optional<int64_t> release_used,
            std::vector<std::pair<Decision, Decision>>* held = nullptr) {
    Decision s = Shared(static_cast<int>(cost % 2), feature, cost, scope);
    Decision e = Embedded(feature, cost, scope);
    ASSERT_EQ(s.granted, e.granted) << feature << " cost " << cost << " scope " << scope;
    if (release_used && s.granted) {
      absl::StatusOr<ReleaseResult> rs = replicas_[0]->Release(s.lease_id, release_used);
      absl::StatusOr<ReleaseResult> re = ledger_->Release(e.lease_id, release_used);
      ASSERT_TRUE(rs.ok() && re.ok());
      EXPECT_EQ(rs->refunded, re->refunded) << feature;
      EXPECT_EQ(rs->freed, re->freed) << feature;
    } else if (held != nullptr && s.granted) {
      held->emplace_back(s, e);
    }
  }

  // The same answer through replica `i` and the embedded ledger; both cool down alike (to the
  // millisecond, give or take the call's time). Answers the later of the two cooldowns' ends.
  absl::Time ReportBoth(int i, UpstreamAnswer answer) {
    if (answer.observed_at == absl::InfinitePast()) answer.observed_at = absl::Now();
    const absl::Time before = absl::Now();
    absl::StatusOr<ReportResult> rs = replicas_[i]->Report(answer);
    absl::StatusOr<ReportResult> re = ledger_->Report(answer);
    const absl::Time after = absl::Now();
    EXPECT_TRUE(rs.ok()) << rs.status();
    EXPECT_TRUE(re.ok()) << re.status();
    if (!rs.ok() || !re.ok()) return absl::InfinitePast();
    EXPECT_EQ(rs->warnings, re->warnings);
    EXPECT_EQ(rs->adopted, re->adopted);
    if (rs->cooldown_until != re->cooldown_until) {  // (both InfinitePast for a success)
      EXPECT_LE(absl::AbsDuration(rs->cooldown_until - re->cooldown_until),
                after - before + absl::Milliseconds(1));
    }
    return std::max(rs->cooldown_until, re->cooldown_until);
  }

  // Polls until `until` has passed (a cooldown of a few ms).
  static void PassUntil(absl::Time until) {
    EXPECT_TRUE(Eventually([&] { return absl::Now() > until + absl::Milliseconds(2); },
                           absl::Seconds(5)));
  }

  // The outside estimate GetUsage shows for `limit` through replica `i` (-1 with the embedded
  // ledger).
  int64_t OutsideOf(int i, const std::string& limit) {
    absl::StatusOr<std::vector<LimitStatus>> u =
        i < 0 ? ledger_->Usage(kCred) : replicas_[i]->Usage(kCred);
    EXPECT_TRUE(u.ok()) << u.status();
    if (!u.ok()) return -1;
    for (const LimitStatus& l : *u) {
      if (l.name == limit && !l.cooldown) return l.outside_estimate;
    }
    return -1;
  }

  std::unique_ptr<RedisServer> redis_;
  Policy policy_;
  std::vector<std::unique_ptr<RedisBackend>> replicas_;
  std::unique_ptr<Ledger> ledger_;
};

TEST_F(SharedReportTest, ACountAdoptedThroughOneReplicaDeniesThroughAnother) {
  ASSERT_TRUE(Shared(0, "cal").granted);
  ASSERT_TRUE(Shared(0, "cal").granted);
  ASSERT_TRUE(Embedded("cal").granted);
  ASSERT_TRUE(Embedded("cal").granted);
  // The upstream has 3 left of 10: 5 more were used outside quotad.
  const UpstreamAnswer answer =
      Answer("cal", 200, Headers({{"X-RateLimit-Limit", "10"}, {"X-RateLimit-Remaining", "3"}}));
  absl::StatusOr<ReportResult> shared = replicas_[0]->Report(answer);
  ASSERT_TRUE(shared.ok()) << shared.status();
  absl::StatusOr<ReportResult> embedded = ledger_->Report(answer);
  ASSERT_TRUE(embedded.ok()) << embedded.status();
  EXPECT_EQ(shared->adopted, std::vector<std::string>{"cal.daily used 2 -> 7"});
  EXPECT_EQ(shared->adopted, embedded->adopted);
  EXPECT_EQ(shared->warnings, embedded->warnings);
  // Replica B grants the 3 left, then denies on the adopted count.
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(Shared(1, "cal").granted) << i;
  const Decision denied = Shared(1, "cal");
  EXPECT_FALSE(denied.granted);
  EXPECT_EQ(denied.limited_by, "cal.daily");
  // A lower count later never lowers what was adopted.
  absl::StatusOr<ReportResult> lower = replicas_[1]->Report(
      Answer("cal", 200, Headers({{"X-RateLimit-Limit", "10"}, {"X-RateLimit-Remaining", "9"}})));
  ASSERT_TRUE(lower.ok()) << lower.status();
  EXPECT_TRUE(lower->adopted.empty());
  EXPECT_FALSE(Shared(0, "cal").granted);
}

TEST_F(SharedReportTest, AThrottlesCooldownStopsEveryReplicaAndEveryFeatureChargingTheLimit) {
  UpstreamAnswer answer = Answer("cal", 429, Headers({{"Retry-After", "120"}}));
  answer.observed_at = absl::Now();
  absl::StatusOr<ReportResult> shared = replicas_[0]->Report(answer);
  ASSERT_TRUE(shared.ok()) << shared.status();
  absl::StatusOr<ReportResult> embedded = ledger_->Report(answer);
  ASSERT_TRUE(embedded.ok()) << embedded.status();
  const absl::Time until = answer.observed_at + absl::Seconds(120);
  EXPECT_LE(absl::AbsDuration(shared->cooldown_until - until), absl::Milliseconds(1));
  EXPECT_LE(absl::AbsDuration(embedded->cooldown_until - until), absl::Milliseconds(1));
  EXPECT_EQ(shared->warnings, embedded->warnings);
  for (int i = 0; i < 2; ++i) {
    const Decision d = Shared(i, "cal");
    EXPECT_FALSE(d.granted) << "replica " << i;
    EXPECT_EQ(d.limited_by, "cal.cooldown");
    EXPECT_EQ(d.retry_at, shared->cooldown_until);
    // mix draws on cal's limit, which cools down: it waits too, as in the embedded ledger.
    EXPECT_FALSE(Shared(i, "mix").granted) << "replica " << i;
  }
  EXPECT_FALSE(Embedded("mix").granted);
  EXPECT_TRUE(Shared(1, "slide").granted);
  EXPECT_TRUE(Embedded("slide").granted);
  // Every replica's GetUsage shows both features cooling down, as the embedded ledger does.
  absl::StatusOr<std::vector<LimitStatus>> e = ledger_->Usage(kCred);
  ASSERT_TRUE(e.ok()) << e.status();
  std::vector<std::string> embedded_cooling;
  for (const LimitStatus& l : *e) {
    if (l.cooldown) embedded_cooling.push_back(l.name);
  }
  EXPECT_EQ(embedded_cooling, (std::vector<std::string>{"cal.cooldown", "mix.cooldown"}));
  for (int i = 0; i < 2; ++i) {
    absl::StatusOr<std::vector<LimitStatus>> u = replicas_[i]->Usage(kCred);
    ASSERT_TRUE(u.ok()) << u.status();
    std::vector<std::string> cooling;
    for (const LimitStatus& l : *u) {
      if (!l.cooldown) continue;
      cooling.push_back(l.name);
      EXPECT_EQ(l.reset, shared->cooldown_until) << l.name;
    }
    EXPECT_EQ(cooling, embedded_cooling) << "replica " << i;
  }
}

TEST_F(SharedReportTest, AThrottleWithoutATimeCoolsTheFullestLimitForItsBackOff) {
  // slow.hourly is 8/10 full; the throttle names no time: it backs off min(1 min, 1 h).
  ASSERT_TRUE(Shared(0, "slow", 8).granted);
  ASSERT_TRUE(Embedded("slow", 8).granted);
  const absl::Time before = absl::Now();
  absl::StatusOr<ReportResult> r = replicas_[0]->Report(Answer("slow", 429, {}));
  absl::StatusOr<ReportResult> e = ledger_->Report(Answer("slow", 429, {}));
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_GE(r->cooldown_until, before + absl::Minutes(1));
  EXPECT_LE(r->cooldown_until, absl::Now() + absl::Minutes(1));
  EXPECT_LE(absl::AbsDuration(r->cooldown_until - e->cooldown_until), absl::Seconds(5));
  const Decision d = Shared(1, "slow");
  EXPECT_FALSE(d.granted);
  EXPECT_EQ(d.limited_by, "slow.cooldown");
  EXPECT_EQ(d.retry_at, r->cooldown_until);
  // Only that limit: cal is served.
  EXPECT_TRUE(Shared(1, "cal").granted);
}

// sent_at: a sliding count is compared with quotad's grants from one period before the request
// was sent, those that left the window since included (kept one period more, as Log::gone).
TEST_F(SharedReportTest, SentAtDecidesWhichSlidingGrantsACountIsComparedWith) {
  const absl::Time t0 = absl::Now();
  ASSERT_TRUE(Shared(0, "slide", 3).granted);
  ASSERT_TRUE(Embedded("slide", 3).granted);
  const UpstreamHeaders five = Headers({{"X-RateLimit-Limit", "10"}, {"X-RateLimit-Used", "5"}});
  // Sent after our 3 grants: they are in the upstream's 5; 2 more came from outside.
  absl::StatusOr<ReportResult> shared = replicas_[1]->Report(Answer("slide", 200, five, t0));
  absl::StatusOr<ReportResult> embedded = ledger_->Report(Answer("slide", 200, five, t0));
  ASSERT_TRUE(shared.ok() && embedded.ok());
  EXPECT_EQ(shared->adopted, std::vector<std::string>{"slide.fast used 3 -> 5"});
  EXPECT_EQ(shared->adopted, embedded->adopted);
  // Wait for every unit to leave the window (2 s), in both.
  auto empty = [](absl::StatusOr<std::vector<LimitStatus>> u) {
    if (!u.ok()) return false;
    for (const LimitStatus& l : *u) {
      if (l.name == "slide.fast") return l.used == 0;
    }
    return false;
  };
  ASSERT_TRUE(Eventually([&] { return empty(replicas_[0]->Usage(kCred)); }, absl::Seconds(10)));
  ASSERT_TRUE(Eventually([&] { return empty(ledger_->Usage(kCred)); }, absl::Seconds(10)));
  // A late answer to a request sent right after t0: our 3 grants and the 2 adopted units have
  // left the window but are still compared with (kept one period more): a count of 4 holds no
  // more than those 5, so nothing is adopted.
  const UpstreamHeaders four = Headers({{"X-RateLimit-Limit", "10"}, {"X-RateLimit-Used", "4"}});
  const absl::Time late = t0 + absl::Milliseconds(100);
  shared = replicas_[0]->Report(Answer("slide", 200, four, late));
  embedded = ledger_->Report(Answer("slide", 200, four, late));
  ASSERT_TRUE(shared.ok() && embedded.ok());
  EXPECT_TRUE(shared->adopted.empty());
  EXPECT_EQ(shared->adopted, embedded->adopted);
  // Sent now: none of those units is within a period before it, so all 4 are outside units.
  shared = replicas_[1]->Report(Answer("slide", 200, four, absl::Now()));
  embedded = ledger_->Report(Answer("slide", 200, four, absl::Now()));
  ASSERT_TRUE(shared.ok() && embedded.ok());
  EXPECT_EQ(shared->adopted, std::vector<std::string>{"slide.fast used 0 -> 4"});
  EXPECT_EQ(shared->adopted, embedded->adopted);
  EXPECT_TRUE(Shared(0, "slide", 6).granted);
  EXPECT_FALSE(Shared(1, "slide", 1).granted);
}

// Throttles the counts do not explain shrink learn.hourly's effective capacity (10 -> 9 -> 8.1
// -> 7.29: 1, 2, then 3 units held back), through either replica, as in the embedded ledger;
// every replica then grants exactly what the embedded ledger grants, and shows the same
// estimate in Usage and in a Decision's limits.
TEST_F(SharedReportTest, ThrottlesAreLearntAsOutsideUseThatEveryReplicaHoldsBack) {
  for (int k = 0; k < 2; ++k) Both("learn", 1, "", std::nullopt);  // hourly 2/10, daily 2/100
  const std::vector<int64_t> want = {1, 2, 3};
  for (size_t t = 0; t < want.size(); ++t) {
    SCOPED_TRACE(absl::StrCat("throttle ", t + 1));
    // The fullest limit (hourly, 20% against 2%) is blamed; no Retry-After: it backs off.
    const absl::Time until = ReportBoth(static_cast<int>(t % 2), Answer("learn", 429, {}));
    EXPECT_EQ(OutsideOf(-1, "learn.hourly"), want[t]);
    EXPECT_EQ(OutsideOf(0, "learn.hourly"), want[t]);
    EXPECT_EQ(OutsideOf(1, "learn.hourly"), want[t]);
    EXPECT_EQ(OutsideOf(0, "learn.daily"), 0);
    PassUntil(until);
  }
  ExpectSameUsage();
  // 2 used, 3 held back: 5 more grants of 1, alternating replicas, then both deny.
  int granted = 0;
  for (int k = 0; k < 12; ++k) {
    AcquireRequest req;
    req.credential = kCred;
    req.feature = "learn";
    req.want_limits = true;
    absl::StatusOr<Decision> s = AcquireThrough(*replicas_[k % 2], req);
    absl::StatusOr<Decision> e = ledger_->Acquire(req);
    ASSERT_TRUE(s.ok() && e.ok());
    ASSERT_EQ(s->granted, e->granted) << "grant " << k;
    granted += s->granted;
    ASSERT_EQ(s->limits.size(), e->limits.size());
    for (size_t j = 0; j < e->limits.size(); ++j) {
      EXPECT_EQ(s->limits[j].outside_estimate, e->limits[j].outside_estimate) << j;
      EXPECT_EQ(s->limits[j].remaining, e->limits[j].remaining) << j;
    }
    if (!s->granted) EXPECT_EQ(s->limited_by, "learn.hourly");
  }
  EXPECT_EQ(granted, 5);
  ExpectSameUsage();
}

// Without Retry-After the back-off doubles per throttle (50, 100, 200 ms) wherever the throttles
// are reported, and starts over after a success seen once the cooldown has ended; a success seen
// before it ended changes nothing. A throttle of a request sent before the last decrease (it was
// in flight) counts for the back-off but does not shrink the estimate again.
TEST_F(SharedReportTest, TheBackOffDoublesAcrossReplicasAndStartsOverAfterASuccess) {
  Both("learn", 2, "", std::nullopt);
  absl::Time sent = absl::Now();
  absl::Time until;
  for (int t = 0; t < 3; ++t) {
    SCOPED_TRACE(absl::StrCat("throttle ", t + 1));
    const absl::Time before = absl::Now();
    until = ReportBoth(t % 2, Answer("learn", 429, {}, sent));
    const absl::Duration backoff = kLearnBackoff * (1 << t);
    EXPECT_GE(until - before, backoff - absl::Milliseconds(1));
    EXPECT_LE(until - absl::Now(), backoff + absl::Milliseconds(1));
    // Sent before the first throttle was learnt: only the first one shrinks the estimate.
    EXPECT_EQ(OutsideOf(0, "learn.hourly"), 1);
    EXPECT_EQ(OutsideOf(-1, "learn.hourly"), 1);
  }
  // A success seen before the cooldown ended says nothing about the upstream now.
  UpstreamAnswer early = Answer("learn", 200, {});
  early.observed_at = until - 2 * kLearnBackoff;  // half way through the 200 ms
  ReportBoth(1, early);
  absl::Time before = absl::Now();
  until = ReportBoth(0, Answer("learn", 429, {}));
  EXPECT_GE(until - before, kLearnBackoff * 8 - absl::Milliseconds(1));
  PassUntil(until);
  ReportBoth(1, Answer("learn", 200, {}));  // seen after the cooldown: starts over
  before = absl::Now();
  until = ReportBoth(0, Answer("learn", 429, {}));
  EXPECT_GE(until - before, kLearnBackoff - absl::Milliseconds(1));
  EXPECT_LE(until - absl::Now(), kLearnBackoff + absl::Milliseconds(1));
  PassUntil(until);  // (a cooldown's end differs by the calls' time)
  ExpectSameUsage();
}

// A throttle on a limit quotad's own count has full is explained by that count when the worker
// does not say when it sent the request; with sent_at it is learnt (the full count may hold the
// refused call itself). Reset forgets the estimate and the back-off.
TEST_F(SharedReportTest, AFullCountExplainsAThrottleUnlessSentAtIsGivenAndResetForgetsIt) {
  Both("learn", 10, "", std::nullopt);  // hourly 10/10
  PassUntil(ReportBoth(0, Answer("learn", 429, {})));
  EXPECT_EQ(OutsideOf(0, "learn.hourly"), 0);
  EXPECT_EQ(OutsideOf(-1, "learn.hourly"), 0);
  PassUntil(ReportBoth(1, Answer("learn", 429, {}, absl::Now())));
  EXPECT_EQ(OutsideOf(1, "learn.hourly"), 1);
  EXPECT_EQ(OutsideOf(-1, "learn.hourly"), 1);
  ExpectSameUsage();
  ASSERT_TRUE(replicas_[1]->Reset(kCred).ok());
  ASSERT_TRUE(ledger_->Reset(kCred).ok());
  EXPECT_EQ(OutsideOf(0, "learn.hourly"), 0);
  ExpectSameUsage();
  // Three throttles were counted before the reset; the next back-off is the first one again.
  Both("learn", 2, "", std::nullopt);
  const absl::Time until = ReportBoth(0, Answer("learn", 429, {}));
  EXPECT_LE(until - absl::Now(), kLearnBackoff + absl::Milliseconds(1));
  PassUntil(until);
  ExpectSameUsage();
}

TEST_F(SharedReportTest, GetUsageEqualsTheEmbeddedLedgersAfterTheSameOperations) {
  // The same sequence on both: grants, a refund, held slots, scopes, an adoption, a throttle.
  Both("cal", 1, "", std::nullopt);
  Both("cal", 1, "", 0);             // refunds 1
  Both("mix", 2, "", std::nullopt);  // holds 2 slots
  Both("mix", 1, "", 1);
  Both("scoped", 1, "a", std::nullopt);
  Both("scoped", 1, "a", std::nullopt);
  Both("scoped", 1, "b", std::nullopt);
  Both("slide", 1, "", std::nullopt);
  const UpstreamAnswer counts =
      Answer("mix", 200, Headers({{"X-RateLimit-Limit", "20"}, {"X-RateLimit-Remaining", "15"}}));
  absl::StatusOr<ReportResult> rs = replicas_[1]->Report(counts);
  absl::StatusOr<ReportResult> re = ledger_->Report(counts);
  ASSERT_TRUE(rs.ok() && re.ok());
  EXPECT_EQ(rs->adopted, re->adopted);
  EXPECT_EQ(rs->adopted, std::vector<std::string>{"mix.hourly used 3 -> 5"});
  UpstreamAnswer throttle = Answer("scoped", 429, Headers({{"Retry-After", "300"}}));
  throttle.observed_at = absl::Now();
  ASSERT_TRUE(replicas_[0]->Report(throttle).ok());
  ASSERT_TRUE(ledger_->Report(throttle).ok());

  ExpectSameUsage();
}

TEST_F(SharedReportTest, ListLeasesShowsWhatTheEmbeddedLedgerShows) {
  std::vector<std::pair<Decision, Decision>> held;
  Both("cal", 1, "", std::nullopt, &held);
  Both("mix", 2, "", std::nullopt, &held);
  Both("scoped", 1, "x", std::nullopt, &held);
  Both("cal", 1, "", 1, &held);  // released: not listed
  ASSERT_EQ(held.size(), 3u);
  auto key = [](const LeaseInfo& l) { return std::make_tuple(l.feature, l.scope, l.cost); };
  absl::StatusOr<std::vector<LeaseInfo>> e = ledger_->Leases(kCred);
  ASSERT_TRUE(e.ok()) << e.status();
  std::sort(e->begin(), e->end(), [&](auto& a, auto& b) { return key(a) < key(b); });
  for (int i = 0; i < 2; ++i) {
    for (const std::string& credential : {std::string(kCred), std::string()}) {
      absl::StatusOr<std::vector<LeaseInfo>> s = replicas_[i]->Leases(credential);
      ASSERT_TRUE(s.ok()) << s.status();
      std::sort(s->begin(), s->end(), [&](auto& a, auto& b) { return key(a) < key(b); });
      ASSERT_EQ(s->size(), e->size());
      for (size_t j = 0; j < e->size(); ++j) {
        SCOPED_TRACE(absl::StrCat("replica ", i, " lease ", j));
        EXPECT_EQ((*s)[j].credential, (*e)[j].credential);
        EXPECT_EQ(key((*s)[j]), key((*e)[j]));
        EXPECT_EQ((*s)[j].holder, (*e)[j].holder);
        EXPECT_EQ((*s)[j].holds_slots, (*e)[j].holds_slots);
        EXPECT_LE(absl::AbsDuration((*s)[j].expiry - (*e)[j].expiry), absl::Seconds(5));
        EXPECT_LE(absl::AbsDuration((*s)[j].granted_at - (*e)[j].granted_at), absl::Seconds(5));
      }
    }
  }
  // The ids listed are the ones granted through the replicas.
  absl::StatusOr<std::vector<LeaseInfo>> s = replicas_[1]->Leases(kCred);
  ASSERT_TRUE(s.ok());
  for (const auto& [shared, embedded] : held) {
    EXPECT_TRUE(std::any_of(s->begin(), s->end(),
                            [&](const LeaseInfo& l) { return l.id == shared.lease_id; }));
  }
}

TEST_F(SharedReportTest, ResetForgetsChargesAdoptionsAndCooldownsAsTheEmbeddedLedger) {
  std::vector<std::pair<Decision, Decision>> held;
  Both("cal", 1, "", std::nullopt, &held);
  Both("cal", 2, "", std::nullopt, &held);
  Both("mix", 2, "", std::nullopt, &held);  // slots held through the reset
  Both("scoped", 1, "a", std::nullopt, &held);
  Both("slide", 3, "", std::nullopt, &held);
  const UpstreamAnswer counts =
      Answer("mix", 200, Headers({{"X-RateLimit-Limit", "20"}, {"X-RateLimit-Remaining", "2"}}));
  ASSERT_TRUE(replicas_[0]->Report(counts).ok());
  ASSERT_TRUE(ledger_->Report(counts).ok());
  UpstreamAnswer throttle = Answer("cal", 429, Headers({{"Retry-After", "300"}}));
  throttle.observed_at = absl::Now();
  ASSERT_TRUE(replicas_[1]->Report(throttle).ok());
  ASSERT_TRUE(ledger_->Report(throttle).ok());
  ExpectSameUsage();

  ASSERT_TRUE(replicas_[1]->Reset(kCred).ok());
  ASSERT_TRUE(ledger_->Reset(kCred).ok());
  ExpectSameUsage();
  // Nothing cools down any more; the slots of live leases stay held.
  EXPECT_TRUE(Shared(0, "cal").granted);
  EXPECT_TRUE(Embedded("cal").granted);
  // A lease granted before the reset gives nothing back, in both.
  for (const auto& [shared, embedded] : held) {
    absl::StatusOr<ReleaseResult> rs = replicas_[0]->Release(shared.lease_id, 0);
    absl::StatusOr<ReleaseResult> re = ledger_->Release(embedded.lease_id, 0);
    ASSERT_TRUE(rs.ok() && re.ok());
    EXPECT_EQ(rs->refunded, re->refunded);
    EXPECT_EQ(rs->refunded, 0);
    EXPECT_EQ(rs->freed, re->freed);
  }
  ExpectSameUsage();
  EXPECT_EQ(replicas_[0]->Reset("nobody/x").code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace quotad
