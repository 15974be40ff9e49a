// CompiledCredential and the queries on it (compiled_policy.h): the tables the ledger runs.

#include "service/core/compiled_policy.h"

#include <vector>

#include "gtest/gtest.h"
#include "tests/support/policy_builders.h"

namespace quotad {
namespace {

using testing::Calendar;
using testing::Concurrency;
using testing::Feature;
using testing::Sliding;
using testing::Unlimited;

// "requests" (minute 4, day 1000), "scan" (own slots 2, a scoped minute, draws on requests),
// "free" (unlimited only).
std::vector<FeatureSpec> Features() {
  LimitSpec per_scope = Sliding("per_scope", 10, absl::Minutes(1));
  per_scope.scoped = true;
  FeatureSpec scan = Feature("scan", {Concurrency("slots", 2), per_scope});
  scan.draws_on = {"requests"};
  return {Feature("requests", {Sliding("minute", 4, absl::Minutes(1)),
                               Calendar("day", 1000, CalendarUnit::kDay)}),
          std::move(scan), Feature("free", {Unlimited("count")})};
}

TEST(CompiledPolicyTest, FeatureChargesItsOwnRulesThenTheUnscopedRulesItDrawsOn) {
  const CompiledCredential cc(Features());
  const int scan = cc.FindFeature("scan");
  ASSERT_GE(scan, 0);
  std::vector<std::string> names;
  for (int r : cc.features[scan].rules) names.push_back(cc.rules[r].full_name);
  EXPECT_EQ(names, (std::vector<std::string>{"scan.slots", "scan.per_scope", "requests.minute",
                                             "requests.day"}));
  EXPECT_TRUE(cc.features[scan].has_concurrency);
  EXPECT_EQ(cc.rules[cc.features[scan].first_scoped_rule].full_name, "scan.per_scope");
  EXPECT_EQ(cc.features[scan].min_capacity, 2);
  EXPECT_EQ(cc.rule_index.at("requests.day"), 1);
  EXPECT_EQ(cc.FindFeature("nope"), -1);
}

TEST(CompiledPolicyTest, FingerprintChangesWithAnyLimitField) {
  std::vector<FeatureSpec> a = Features();
  std::vector<FeatureSpec> b = Features();
  EXPECT_EQ(Fingerprint(a), Fingerprint(b));
  b[0].limits[1].capacity = 999;
  EXPECT_NE(Fingerprint(a), Fingerprint(b));
}

TEST(CompiledPolicyTest, CurrentRuleFollowsTheLimitByNameAcrossVersions) {
  const CompiledCredential then(Features());
  std::vector<FeatureSpec> next = Features();
  next[0].limits.erase(next[0].limits.begin());  // requests.minute removed
  const CompiledCredential now(next);
  EXPECT_EQ(CurrentRule(then, then, 1), 1);
  EXPECT_EQ(CurrentRule(then, now, then.rule_index.at("requests.minute")), -1);
  EXPECT_EQ(CurrentRule(then, now, then.rule_index.at("requests.day")),
            now.rule_index.at("requests.day"));
}

TEST(CompiledPolicyTest, ShareCounterOnlyForCountersThatCanDeny) {
  const CompiledCredential cc(Features());
  const int requests = cc.FindFeature("requests");
  const int scan = cc.FindFeature("scan");
  const int free = cc.FindFeature("free");
  EXPECT_TRUE(ShareCounter(cc, scan, "a", requests, ""));  // requests.minute, unscoped
  EXPECT_TRUE(ShareCounter(cc, scan, "a", scan, "b"));     // scan.slots, unscoped
  EXPECT_FALSE(ShareCounter(cc, requests, "", free, ""));
  EXPECT_FALSE(ShareCounter(cc, free, "", free, ""));  // unlimited holds nobody back
}

TEST(CompiledPolicyTest, LongestWindowCoversGuardAndDaylightSaving) {
  LimitSpec day = Calendar("day", 10, CalendarUnit::kDay);
  day.guard = absl::Minutes(2);
  EXPECT_EQ(LongestWindow(Rule(day, "f.day")), absl::Hours(25) + absl::Minutes(2));
  EXPECT_EQ(LongestWindow(Rule(Sliding("m", 10, absl::Minutes(1)), "f.m")), absl::Minutes(1));
  EXPECT_EQ(LongestWindow(Rule(Concurrency("s", 1), "f.s")), absl::ZeroDuration());
  EXPECT_EQ(RecoveryNs(Rule(day, "f.day")), absl::ToInt64Nanoseconds(absl::Hours(25)));
  EXPECT_FALSE(Estimable(Rule(Concurrency("s", 1), "f.s")));  // one slot: nothing to share
  EXPECT_TRUE(Estimable(Rule(day, "f.day")));
}

}  // namespace
}  // namespace quotad
