// The status page's rendering and snapshot, on a ledger with a fake clock (no socket).
#include "service/server/status_page.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <memory>
#include <string>

#include "absl/time/civil_time.h"
#include "absl/time/time.h"
#include "service/core/clock.h"
#include "service/core/ledger.h"
#include "tests/support/status_matchers.h"

namespace quotad {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

Policy TestPolicy() {
  Policy p;
  CredentialSpec c;
  c.name = "acme/prod";
  c.profile = "acme";
  FeatureSpec f;
  f.name = "requests";
  f.limits.push_back({.name = "per_minute", .kind = LimitKind::kSliding, .capacity = 10,
                      .period = absl::Minutes(1)});
  FeatureSpec jobs;
  jobs.name = "jobs";
  jobs.limits.push_back({.name = "slots", .kind = LimitKind::kConcurrency, .capacity = 1});
  c.features = {f, jobs};
  p.credentials.push_back(c);
  return p;
}

class StatusPageTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto ledger = Ledger::Create(TestPolicy(), &clock_);
    ASSERT_OK(ledger);
    ledger_ = *std::move(ledger);
  }
  FakeClock clock_;
  std::unique_ptr<Ledger> ledger_;
  ThrottleLog throttles_{3};
};

TEST(HtmlEscapeTest, EscapesMarkupAndQuotes) {
  EXPECT_EQ(HtmlEscape("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;");
}

TEST(ThrottleLogTest, KeepsOnlyTheNewest) {
  ThrottleLog log(2);
  for (int i = 0; i < 5; ++i) log.Record({"c", absl::StrCat("f", i), 429});
  const std::vector<ThrottleRecord> r = log.Recent();
  ASSERT_EQ(r.size(), 2u);
  EXPECT_EQ(r[0].feature, "f4");
  EXPECT_EQ(r[1].feature, "f3");
}

TEST(WindowLengthTest, CalendarMonthIsTheMonthContainingNow) {
  LimitSpec month{.name = "m", .kind = LimitKind::kCalendar, .capacity = 1,
                  .unit = CalendarUnit::kMonth};
  const absl::Time feb = absl::FromCivil(absl::CivilSecond(2026, 2, 10, 0, 0, 0), absl::UTCTimeZone());
  EXPECT_EQ(WindowLength(month, feb), absl::Hours(24 * 28));
  LimitSpec bucket{.name = "b", .kind = LimitKind::kTokenBucket, .capacity = 20,
                   .period = absl::Seconds(1), .rate = 5};
  EXPECT_EQ(WindowLength(bucket, feb), absl::Seconds(4));
  LimitSpec slots{.name = "s", .kind = LimitKind::kConcurrency, .capacity = 1};
  EXPECT_EQ(WindowLength(slots, feb), absl::ZeroDuration());
}

TEST_F(StatusPageTest, PageShowsUsageLeaseHolderAsTextAndCooldown) {
  for (int i = 0; i < 4; ++i) {
    ASSERT_TRUE(ledger_->Acquire({.credential = "acme/prod", .feature = "requests"})->granted);
  }
  ASSERT_TRUE(ledger_->Acquire({.credential = "acme/prod", .feature = "jobs",
                                .holder = "<script>alert(1)</script>"})
                  ->granted);
  UpstreamAnswer a{.credential = "acme/prod", .feature = "requests", .http_status = 429};
  a.headers = {{"Retry-After", "30"}};
  ASSERT_OK(ledger_->Report(a));
  throttles_.Record({"acme/prod", "requests", 429, clock_.Now(), clock_.Now() + absl::Seconds(30)});

  const StatusSnapshot s = TakeStatusSnapshot(*ledger_, &throttles_);
  ASSERT_EQ(s.credentials.size(), 1u);
  EXPECT_EQ(s.credentials[0].cooldowns.size(), 1u);
  const std::string html = RenderStatusHtml(s);
  EXPECT_THAT(html, HasSubstr("data-limit=\"requests.per_minute\" data-scope=\"\" "
                              "data-used=\"4\" data-remaining=\"5\" data-capacity=\"10\""));
  EXPECT_THAT(html, HasSubstr("<meter class=\"bar\" min=\"0\" max=\"10\" value=\"4\""));
  EXPECT_THAT(html, HasSubstr("&lt;script&gt;alert(1)&lt;/script&gt;"));
  EXPECT_THAT(html, Not(HasSubstr("<script>alert")));
  EXPECT_THAT(html, HasSubstr("class=\"cooldown\" data-credential=\"acme/prod\" "
                              "data-feature=\"requests\""));
  EXPECT_THAT(html, HasSubstr("in 30s"));
  const std::string json = RenderUsageJson(s);
  EXPECT_THAT(json, HasSubstr("\\u003cscript\\u003e"));
  EXPECT_THAT(json, HasSubstr("\"throttles\":[{\"credential\":\"acme/prod\""));
}

TEST_F(StatusPageTest, ServesOnlyItsPathsAndMethods) {
  StatusPage page(ledger_.get(), &throttles_);
  EXPECT_FALSE(page.Handle({"GET", "/metrics", ""}).has_value());
  std::optional<HttpReply> post = page.Handle({"POST", "/", ""});
  ASSERT_TRUE(post.has_value());
  EXPECT_EQ(post->status, 405);
  std::optional<HttpReply> unknown = page.Handle({"GET", "/api/usage", "credential=nope"});
  ASSERT_TRUE(unknown.has_value());
  EXPECT_EQ(unknown->status, 404);
  std::optional<HttpReply> one = page.Handle({"GET", "/api/usage", "credential=acme%2Fprod"});
  ASSERT_TRUE(one.has_value());
  EXPECT_EQ(one->status, 200);
  EXPECT_THAT(one->body, HasSubstr("\"credential\":\"acme/prod\""));
}

TEST_F(StatusPageTest, WaitersAppearPerQueue) {
  ASSERT_TRUE(ledger_->Acquire({.credential = "acme/prod", .feature = "jobs"})->granted);
  ledger_->AcquireOrWait({.credential = "acme/prod", .feature = "jobs", .scope = ""},
                         absl::Minutes(1), 0, [](absl::StatusOr<Decision>) {});
  const std::vector<QueueInfo> q = ledger_->Queues();
  ASSERT_EQ(q.size(), 1u);
  EXPECT_EQ(q[0].feature, "jobs");
  EXPECT_EQ(q[0].waiters, 1);
  EXPECT_EQ(q[0].limited_by, "jobs.slots");
  ledger_->AnswerAllWaiters(absl::CancelledError("test over"));
}

}  // namespace
}  // namespace quotad
