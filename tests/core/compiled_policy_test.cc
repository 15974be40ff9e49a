// CompiledCredential and the queries on it (compiled_policy.h): the tables the ledger runs.

#include "service/core/compiled_policy.h"

#include <utility>
#include <vector>

#include "absl/hash/hash.h"

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

// Every field compiling reads, changed alone: the features are no longer the same (and so
// compile to a CompiledCredential of their own). A field SameFeatures missed would let two
// credentials share one policy, one of them under the other's limits.
TEST(CompiledPolicyTest, SameFeaturesSeesAChangeToAnyField) {
  using Edit = void (*)(std::vector<FeatureSpec>&);
  const std::vector<std::pair<const char*, Edit>> edits = {
      {"limit name", [](auto& f) { f[0].limits[1].name = "day2"; }},
      {"limit kind", [](auto& f) { f[0].limits[0].kind = LimitKind::kRolling; }},
      {"limit capacity", [](auto& f) { f[0].limits[1].capacity = 999; }},
      {"limit period", [](auto& f) { f[0].limits[0].period = absl::Seconds(61); }},
      {"limit rate", [](auto& f) { f[0].limits[0].rate = 7; }},
      {"limit unit", [](auto& f) { f[0].limits[1].unit = CalendarUnit::kWeek; }},
      {"limit zone",
       [](auto& f) {
         f[0].limits[1].zone_name = "Europe/Paris";
         absl::LoadTimeZone("Europe/Paris", &f[0].limits[1].zone);
       }},
      {"limit zone value only",
       [](auto& f) { absl::LoadTimeZone("Europe/Paris", &f[0].limits[1].zone); }},
      {"limit sub_buckets", [](auto& f) { f[0].limits[0].sub_buckets = 60; }},
      {"limit scoped", [](auto& f) { f[0].limits[0].scoped = true; }},
      {"limit guard", [](auto& f) { f[0].limits[0].guard = absl::Seconds(1); }},
      {"limit added", [](auto& f) { f[0].limits.push_back(Unlimited("more")); }},
      {"limits reordered", [](auto& f) { std::swap(f[0].limits[0], f[0].limits[1]); }},
      {"feature name", [](auto& f) { f[2].name = "gratis"; }},
      {"feature draws_on", [](auto& f) { f[1].draws_on.clear(); }},
      {"feature default_lease_ttl",
       [](auto& f) { f[0].default_lease_ttl = absl::Seconds(59); }},
      {"feature max_lease_ttl", [](auto& f) { f[0].max_lease_ttl = absl::Hours(23); }},
      {"feature max_scopes", [](auto& f) { f[1].max_scopes = 9999; }},
      {"feature removed", [](auto& f) { f.pop_back(); }},
      {"features reordered", [](auto& f) { std::swap(f[0], f[2]); }},
      {"throttle status_codes", [](auto& f) { f[0].throttle.status_codes.push_back(503); }},
      {"throttle initial_backoff",
       [](auto& f) { f[0].throttle.initial_backoff = absl::Seconds(2); }},
      // Closer than the fingerprint string's six significant digits ever told apart.
      {"throttle multiplier", [](auto& f) { f[0].throttle.multiplier = 2.0000001; }},
      {"throttle max_backoff", [](auto& f) { f[0].throttle.max_backoff = absl::Minutes(6); }},
      {"throttle jitter_min", [](auto& f) { f[0].throttle.jitter_min = 0.1; }},
      {"throttle jitter_max", [](auto& f) { f[0].throttle.jitter_max = 0.5; }},
  };
  const std::vector<FeatureSpec> a = Features();
  const std::vector<FeatureSpec> same = Features();
  EXPECT_TRUE(SameFeatures(a, same));
  EXPECT_EQ(absl::HashOf(FeaturesKey{&a}), absl::HashOf(FeaturesKey{&same}));
  for (const auto& [what, edit] : edits) {
    SCOPED_TRACE(what);
    std::vector<FeatureSpec> b = Features();
    edit(b);
    EXPECT_FALSE(SameFeatures(a, b));
    EXPECT_FALSE(SameFeatures(b, a));
    EXPECT_FALSE(FeaturesKey{&a} == FeaturesKey{&b});
  }
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
