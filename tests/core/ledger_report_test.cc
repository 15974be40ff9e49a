// Ledger::Report: the ledger believes the upstream when it says fewer units remain (adopting its
// count, never raising remaining), re-anchors rolling windows to the upstream's reset, cools a
// feature down after a throttle answer (Retry-After, or an exponential back-off with jitter), and
// learns a throttle on a limit it cannot see. Parsing the answer itself is in upstream_test.

#include <memory>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "service/core/clock.h"
#include "service/core/ledger.h"
#include "tests/support/policy_builders.h"
#include "tests/support/status_matchers.h"

namespace quotad {
namespace {

using testing::Calendar;
using testing::Feature;
using testing::OneCredential;
using testing::Rolling;
using testing::Sliding;
using testing::StatusIs;
using testing::Utc;

class ReportTest : public ::testing::Test {
 protected:
  void Use(std::vector<FeatureSpec> features) {
    auto ledger = Ledger::Create(OneCredential("key", std::move(features)), &clock_);
    ASSERT_OK(ledger);
    ledger_ = std::move(*ledger);
  }
  ReportResult Report(int status, UpstreamHeaders headers, absl::string_view feature = "f",
                      absl::string_view body = "") {
    UpstreamAnswer a;
    a.credential = "key";
    a.feature = feature;
    a.http_status = status;
    a.headers = std::move(headers);
    a.body = body;
    auto r = ledger_->Report(a);
    EXPECT_OK(r);
    return r.ok() ? *r : ReportResult{};
  }
  Decision Acquire(absl::string_view feature = "f") {
    AcquireRequest req;
    req.credential = "key";
    req.feature = feature;
    return *ledger_->Acquire(req);
  }
  int64_t Used(absl::string_view limit) {
    const std::vector<LimitStatus> usage = *ledger_->Usage("key");
    for (const LimitStatus& s : usage) {
      if (s.name == limit) return s.used;
    }
    return -1;
  }

  FakeClock clock_{Utc(2026, 6, 21, 10)};
  std::unique_ptr<Ledger> ledger_;
};

TEST_F(ReportTest, AdoptsTheUpstreamsCountWhenFewerRemain) {
  // CyberVault's example: Limit 300, Remaining 247 -> 53 used, the per-minute limit.
  Use({Feature("f", {Sliding("per_minute", 300, absl::Minutes(1)),
                     Calendar("per_day", 100000, CalendarUnit::kDay)})});
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(Acquire().granted);
  const ReportResult r = Report(200, {{"X-RateLimit-Limit", "300"},
                                      {"X-RateLimit-Remaining", "247"},
                                      {"X-RateLimit-Reset", "1718947260"}});
  ASSERT_EQ(r.adopted.size(), 1u);
  EXPECT_EQ(r.adopted[0], "f.per_minute used 10 -> 53");
  EXPECT_EQ(Used("f.per_minute"), 53);
  EXPECT_EQ(Used("f.per_day"), 10);
  // The outside units leave a minute after they were reported.
  clock_.Advance(absl::Minutes(1));
  EXPECT_EQ(Used("f.per_minute"), 0);
}

TEST_F(ReportTest, NeverRaisesRemainingOnOneAnswer) {
  Use({Feature("f", {Calendar("per_day", 500, CalendarUnit::kDay)})});
  for (int i = 0; i < 100; ++i) ASSERT_TRUE(Acquire().granted);
  const ReportResult r =
      Report(200, {{"X-RateLimit-Limit", "500"}, {"X-RateLimit-Remaining", "490"}});
  EXPECT_TRUE(r.adopted.empty());
  EXPECT_EQ(Used("f.per_day"), 100);
}

TEST_F(ReportTest, MalformedHeadersAreIgnoredWithAWarningAndChangeNothing) {
  Use({Feature("f", {Calendar("per_day", 500, CalendarUnit::kDay)})});
  ASSERT_TRUE(Acquire().granted);
  const ReportResult r =
      Report(200, {{"X-RateLimit-Remaining", "-5"}, {"X-RateLimit-Used", "lots"}});
  EXPECT_TRUE(r.adopted.empty());
  EXPECT_GE(r.warnings.size(), 2u);
  EXPECT_EQ(Used("f.per_day"), 1);
}

TEST_F(ReportTest, RollingWindowIsReanchoredToTheUpstreamsReset) {
  // MetaDefender: the window opened upstream before quotad saw a charge.
  Use({Feature("reputation", {Rolling("per_24h", 4000, absl::Hours(24))})});
  ASSERT_TRUE(Acquire("reputation").granted);  // quotad opens at 10:00
  Report(200,
         {{"x-ratelimit-for", "reputation_api"},
          {"x-ratelimit-limit", "4000"},
          {"x-ratelimit-used", "2500"},
          {"x-ratelimit-remaining", "1500"},
          {"x-ratelimit-reset-in", "90000s"}},  // 25 h: ends at 11:00 tomorrow
         "reputation");
  EXPECT_EQ(Used("reputation.per_24h"), 2500);
  const std::vector<LimitStatus> usage = *ledger_->Usage("key");
  ASSERT_EQ(usage.size(), 1u);
  EXPECT_EQ(usage[0].reset, Utc(2026, 6, 22, 11));
}

TEST_F(ReportTest, ThrottleWithRetryAfterCoolsTheFeatureDown) {
  Use({Feature("f", {Sliding("per_minute", 300, absl::Minutes(1))}),
       Feature("g", {Sliding("per_minute", 300, absl::Minutes(1))})});
  const ReportResult r = Report(429, {{"Retry-After", "12"}});
  EXPECT_EQ(r.cooldown_until, clock_.Now() + absl::Seconds(12));
  const Decision d = Acquire();
  EXPECT_FALSE(d.granted);
  EXPECT_EQ(d.limited_by, "f.cooldown");
  EXPECT_EQ(d.retry_at, clock_.Now() + absl::Seconds(12));
  EXPECT_TRUE(Acquire("g").granted);  // other features are not affected
  const std::vector<LimitStatus> usage = *ledger_->Usage("key");
  ASSERT_EQ(usage.size(), 3u);  // f.per_minute, g.per_minute, then the cooldown
  EXPECT_EQ(usage[2].name, "f.cooldown");
  EXPECT_TRUE(usage[2].cooldown);
  EXPECT_EQ(usage[2].reset, clock_.Now() + absl::Seconds(12));
  clock_.Advance(absl::Seconds(12));
  EXPECT_TRUE(Acquire().granted);
  EXPECT_EQ(ledger_->Usage("key")->size(), 2u);  // the cooldown is over
}

TEST_F(ReportTest, ThrottleWithoutRetryAfterBacksOffExponentiallyWithJitter) {
  FeatureSpec f = Feature("f", {Sliding("per_minute", 60, absl::Minutes(1))});
  f.throttle.initial_backoff = absl::Seconds(1);
  f.throttle.max_backoff = absl::Seconds(30);
  f.throttle.jitter_min = 0.1;
  f.throttle.jitter_max = 0.3;
  Use({f});
  const absl::Duration expected[] = {absl::Seconds(1), absl::Seconds(2),  absl::Seconds(4),
                                     absl::Seconds(8), absl::Seconds(16), absl::Seconds(30),
                                     absl::Seconds(30)};
  for (absl::Duration base : expected) {
    const ReportResult r = Report(429, {});
    const absl::Duration wait = r.cooldown_until - clock_.Now();
    EXPECT_GE(wait, base * 1.1) << base;
    EXPECT_LE(wait, base * 1.3) << base;
    clock_.Set(r.cooldown_until);
  }
  Report(200, {});  // a success starts the back-off over
  EXPECT_LE(Report(429, {}).cooldown_until - clock_.Now(), absl::Seconds(1) * 1.3);
}

TEST_F(ReportTest, ReportForUnknownNamesIsNotFound) {
  Use({Feature("f", {Sliding("per_minute", 60, absl::Minutes(1))})});
  UpstreamAnswer a;
  a.credential = "nope";
  a.feature = "f";
  a.http_status = 200;
  EXPECT_THAT(ledger_->Report(a), StatusIs(absl::StatusCode::kNotFound));
  a.credential = "key";
  a.feature = "nope";
  EXPECT_THAT(ledger_->Report(a), StatusIs(absl::StatusCode::kNotFound));
  a.feature = "f";
  a.http_status = 1000;
  EXPECT_THAT(ledger_->Report(a), StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST_F(ReportTest, OutsideUnitsHiddenInTheGuardTailAreStillAdopted) {
  // Capacity 2 per 60 s, guard 1 s. The upstream drops our t=0 unit at 60 s and an outside tool
  // takes the slot; quotad still holds that unit until 61 s, so a plain "used 2 vs 2" would adopt
  // nothing and grant into a full upstream window at 61 s.
  LimitSpec l = Sliding("per_minute", 2, absl::Minutes(1));
  l.guard = absl::Seconds(1);
  Use({Feature("f", {l})});
  const absl::Time t0 = clock_.Now();
  ASSERT_TRUE(Acquire().granted);
  clock_.Set(t0 + absl::Seconds(30));
  ASSERT_TRUE(Acquire().granted);
  clock_.Set(t0 + absl::Milliseconds(60300));
  const ReportResult r = Report(200, {{"X-RateLimit-Limit", "2"}, {"X-RateLimit-Remaining", "0"}});
  ASSERT_EQ(r.adopted.size(), 1u);
  EXPECT_EQ(r.adopted[0], "f.per_minute used 1 -> 2");
  clock_.Set(t0 + absl::Seconds(61));
  EXPECT_FALSE(Acquire().granted);
}

TEST_F(ReportTest, ThrottleWithoutRetryAfterWaitsForTheUpstreamsReset) {
  // MediaSilo answers 420 with X-RateLimit-Reset and no Retry-After.
  FeatureSpec f = Feature("f", {Sliding("per_hour", 10000, absl::Hours(1), 3600)});
  f.throttle.status_codes = {429, 420};
  Use({f});
  const absl::Time reset = clock_.Now() + absl::Minutes(17);
  const ReportResult r =
      Report(420, {{"X-RateLimit-Limit", "10000"},
                   {"X-RateLimit-Remaining", "0"},
                   {"X-RateLimit-Reset", absl::StrCat(absl::ToUnixSeconds(reset))}});
  EXPECT_EQ(r.cooldown_until, reset);
  EXPECT_EQ(Acquire().limited_by, "f.cooldown");
  clock_.Set(reset);
  // The adopted units leave at the reset, rounded up to the end of their 1 s bucket.
  const Decision d = Acquire();
  EXPECT_FALSE(d.granted);
  EXPECT_EQ(d.limited_by, "f.per_hour");
  EXPECT_LE(d.retry_at, reset + absl::Seconds(1));
  clock_.Set(d.retry_at);
  EXPECT_TRUE(Acquire().granted);
}

TEST_F(ReportTest, AnUpstreamCountAboveCapacityIsAdoptedAsFull) {
  // Found by the ledger fuzzer: used must never show above capacity.
  Use({Feature("f", {Sliding("per_minute", 8, absl::Minutes(1))})});
  const ReportResult r = Report(429, {{"X-RateLimit-Used", "74"}});
  ASSERT_EQ(r.adopted.size(), 1u);
  EXPECT_EQ(r.adopted[0], "f.per_minute used 0 -> 8");
  EXPECT_EQ(Used("f.per_minute"), 8);
}

}  // namespace
TEST_F(ReportTest, AResetThatHasPassedIsNotAdoptedIntoTheNextWindow) {
  // 3 s into a new minute, a late answer still describes the last one.
  Use({Feature("f", {Calendar("per_minute", 100, CalendarUnit::kMinute)})});
  clock_.Set(Utc(2026, 6, 21, 10, 1, 3));
  const ReportResult r =
      Report(200, {{"X-RateLimit-Limit", "100"},
                   {"X-RateLimit-Remaining", "10"},
                   {"X-RateLimit-Reset", absl::StrCat(absl::ToUnixSeconds(Utc(2026, 6, 21, 10, 1)))}});
  EXPECT_TRUE(r.adopted.empty());
  ASSERT_EQ(r.warnings.size(), 1u);
  EXPECT_NE(r.warnings[0].find("has passed"), std::string::npos) << r.warnings[0];
  EXPECT_EQ(Used("f.per_minute"), 0);
}

TEST_F(ReportTest, AResetOfTheWindowInForceIsAdoptedUpToItsEnd) {
  Use({Feature("f", {Calendar("per_minute", 100, CalendarUnit::kMinute)})});
  clock_.Set(Utc(2026, 6, 21, 10, 1, 3));
  const ReportResult r =
      Report(200, {{"X-RateLimit-Limit", "100"},
                   {"X-RateLimit-Remaining", "10"},
                   {"X-RateLimit-Reset", absl::StrCat(absl::ToUnixSeconds(Utc(2026, 6, 21, 10, 2)))}});
  ASSERT_EQ(r.adopted.size(), 1u);
  EXPECT_EQ(Used("f.per_minute"), 90);
  clock_.Set(Utc(2026, 6, 21, 10, 2));  // the window boundary: the adopted units leave
  EXPECT_EQ(Used("f.per_minute"), 0);
}

TEST_F(ReportTest, AdoptedSlidingUnitsLeaveOnePeriodAfterTheAnswer) {
  // Without a reset the units were charged upstream before the answer: they leave a period
  // later, not a period after the report was processed.
  Use({Feature("f", {Sliding("per_minute", 10, absl::Minutes(1))})});
  const absl::Time seen = clock_.Now();
  clock_.Advance(absl::Seconds(20));
  UpstreamAnswer a;
  a.credential = "key";
  a.feature = "f";
  a.http_status = 200;
  a.headers = {{"X-RateLimit-Limit", "10"}, {"X-RateLimit-Remaining", "0"}};
  a.observed_at = seen;
  ASSERT_OK(ledger_->Report(a));
  EXPECT_FALSE(Acquire().granted);
  clock_.Set(seen + absl::Minutes(1) + absl::Seconds(1));
  EXPECT_TRUE(Acquire().granted);
}

// The sent_at cases: a sliding minute of 10 with a 1 s guard, 5 grants at t0 and one at
// t0 + `last` (the request sent then). Returns t0.
class SentAtTest : public ReportTest {
 protected:
  absl::Time FiveThenOne(absl::Duration last) {
    LimitSpec l = Sliding("per_minute", 10, absl::Minutes(1));
    l.guard = absl::Seconds(1);
    Use({Feature("f", {l})});
    const absl::Time t0 = clock_.Now();
    for (int i = 0; i < 5; ++i) EXPECT_TRUE(Acquire().granted);
    clock_.Set(t0 + last);
    EXPECT_TRUE(Acquire().granted);
    return t0;
  }
  // A 200 with the upstream's count of the minute (`remaining` of 10), seen now.
  UpstreamAnswer Counted(int64_t remaining, absl::Time sent_at) {
    UpstreamAnswer a;
    a.credential = "key";
    a.feature = "f";
    a.http_status = 200;
    a.headers = {{"X-RateLimit-Limit", "10"}, {"X-RateLimit-Remaining", absl::StrCat(remaining)}};
    a.observed_at = clock_.Now();
    a.sent_at = sent_at;
    return a;
  }
};

TEST_F(SentAtTest, AnAnswerDoesNotAdoptQuotadsOwnGrantsThatLeftSinceItWasSent) {
  // The upstream counts all 6 of ours when the last request arrives at 59.5 s; the answer is
  // seen at 60.5 s, when the t0 grants have left the upstream's minute. Compared with the
  // minute before the answer (1 grant), the 5 would be adopted as outside use, for another
  // minute.
  const absl::Time t0 = FiveThenOne(absl::Milliseconds(59500));
  clock_.Set(t0 + absl::Milliseconds(60500));
  UpstreamAnswer a = Counted(4, t0 + absl::Milliseconds(59500));
  ASSERT_OK_AND_ASSIGN(const ReportResult r, ledger_->Report(a));
  EXPECT_TRUE(r.adopted.empty()) << r.adopted[0];
  clock_.Set(t0 + absl::Seconds(61));
  EXPECT_EQ(Used("f.per_minute"), 1);
  // Without sent_at the same answer is compared with the minute before it was seen.
  clock_.Set(t0 + absl::Milliseconds(60500));
  a.sent_at = absl::InfinitePast();
  ASSERT_OK_AND_ASSIGN(const ReportResult old, ledger_->Report(a));
  ASSERT_EQ(old.adopted.size(), 1u);
  EXPECT_EQ(old.adopted[0], "f.per_minute used 1 -> 6");
}

TEST_F(SentAtTest, OutsideUnitsInAnAnswerAreStillAdoptedWithItsSentTime) {
  // As above, but 3 of the 9 units the upstream counts are an outside tool's: 6 of ours may be
  // in the count, so 9 - 6 = 3 are adopted, and they hold the minute until 60.5 s + 1 min.
  const absl::Time t0 = FiveThenOne(absl::Milliseconds(59500));
  clock_.Set(t0 + absl::Milliseconds(60500));
  ASSERT_OK_AND_ASSIGN(const ReportResult r,
                       ledger_->Report(Counted(1, t0 + absl::Milliseconds(59500))));
  ASSERT_EQ(r.adopted.size(), 1u);
  clock_.Set(t0 + absl::Seconds(61));
  EXPECT_EQ(Used("f.per_minute"), 4);  // our 1 and the 3 outside units
}

TEST_F(SentAtTest, ASlowCallsCountIsComparedWithGrantsThatLeftTheWindowSince) {
  // A 15 s call sent at 50 s, seen at 65 s: the t0 grants left the log at 61 s but are kept one
  // period more, so the count of 6 is all ours and nothing is adopted; a count of 9 adopts 3.
  const absl::Time t0 = FiveThenOne(absl::Seconds(50));
  clock_.Set(t0 + absl::Seconds(65));
  ASSERT_OK_AND_ASSIGN(const ReportResult r, ledger_->Report(Counted(4, t0 + absl::Seconds(50))));
  EXPECT_TRUE(r.adopted.empty()) << r.adopted[0];
  EXPECT_EQ(Used("f.per_minute"), 1);
  ASSERT_OK_AND_ASSIGN(const ReportResult more,
                       ledger_->Report(Counted(1, t0 + absl::Seconds(50))));
  ASSERT_EQ(more.adopted.size(), 1u);
  EXPECT_EQ(Used("f.per_minute"), 4);
}

TEST_F(ReportTest, AThrottleOnAHiddenLimitIsLearntThereAndCoolsOnlyFeaturesChargingIt) {
  // The headers describe the minute (with room); the throttle came from the 2 s window.
  FeatureSpec f = Feature("f", {Calendar("per_minute", 100, CalendarUnit::kMinute),
                                Sliding("per_2s", 10, absl::Seconds(2))});
  f.throttle.initial_backoff = absl::Seconds(1);
  f.throttle.max_backoff = absl::Seconds(30);
  Use({f, Feature("g", {Sliding("per_minute", 50, absl::Minutes(1))})});
  for (int i = 0; i < 9; ++i) ASSERT_TRUE(Acquire().granted);
  const ReportResult r = Report(429, {{"X-RateLimit-Limit", "100"}, {"X-RateLimit-Remaining", "50"}});
  // Capped at the 2 s window's period, not the 30 s back-off.
  EXPECT_LE(r.cooldown_until - clock_.Now(), absl::Seconds(2) * 1.3);
  EXPECT_TRUE(Acquire("g").granted);  // a feature on other limits keeps granting
  const std::vector<LimitStatus> usage = *ledger_->Usage("key");
  int64_t per_2s_outside = -1, per_minute_outside = -1;
  for (const LimitStatus& st : usage) {
    if (st.name == "f.per_2s") per_2s_outside = st.outside_estimate;
    if (st.name == "f.per_minute") per_minute_outside = st.outside_estimate;
  }
  EXPECT_EQ(per_2s_outside, 1);  // 10 -> 9 effective
  EXPECT_EQ(per_minute_outside, 0);
  // The estimate decays while no throttle comes: 5% of 10 per 2 s, gone well within a minute.
  clock_.Advance(absl::Minutes(1));
  const std::vector<LimitStatus> later = *ledger_->Usage("key");
  for (const LimitStatus& st : later) {
    if (st.name == "f.per_2s") EXPECT_EQ(st.outside_estimate, 0);
  }
}

}  // namespace quotad
