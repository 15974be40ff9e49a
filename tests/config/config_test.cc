#include "service/config/config.h"

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/support/status_matchers.h"

namespace quotad {
namespace {

using ::quotad::testing::IsOk;
using ::quotad::testing::StatusIs;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::UnorderedElementsAre;

constexpr char kSource[] = "test.yaml";

const CredentialSpec* FindCredential(const Policy& policy, const std::string& name) {
  for (const CredentialSpec& c : policy.credentials) {
    if (c.name == name) return &c;
  }
  return nullptr;
}

const FeatureSpec* FindFeature(const CredentialSpec& c, const std::string& name) {
  for (const FeatureSpec& f : c.features) {
    if (f.name == name) return &f;
  }
  return nullptr;
}

const LimitSpec* FindLimit(const FeatureSpec& f, const std::string& name) {
  for (const LimitSpec& l : f.limits) {
    if (l.name == name) return &l;
  }
  return nullptr;
}

// The limit `feature.limit` of `credential`; fails the test when missing.
LimitSpec GetLimit(const Policy& policy, const std::string& credential, const std::string& feature,
                   const std::string& limit) {
  const CredentialSpec* c = FindCredential(policy, credential);
  EXPECT_NE(c, nullptr) << credential;
  if (c == nullptr) return {};
  const FeatureSpec* f = FindFeature(*c, feature);
  EXPECT_NE(f, nullptr) << feature;
  if (f == nullptr) return {};
  const LimitSpec* l = FindLimit(*f, limit);
  EXPECT_NE(l, nullptr) << limit;
  return l == nullptr ? LimitSpec{} : *l;
}

Policy MustLoad(const std::string& yaml) {
  absl::StatusOr<Policy> policy = LoadPolicyFromString(yaml, kSource);
  EXPECT_OK(policy) << yaml;
  return policy.ok() ? *policy : Policy{};
}

// The message of the error loading `yaml`; fails the test when it loads or is not
// kInvalidArgument.
std::string LoadError(const std::string& yaml) {
  absl::StatusOr<Policy> policy = LoadPolicyFromString(yaml, kSource);
  EXPECT_THAT(policy, Not(IsOk())) << yaml;
  if (policy.ok()) return "";
  EXPECT_THAT(policy, StatusIs(absl::StatusCode::kInvalidArgument));
  return std::string(policy.status().message());
}

TEST(ConfigTest, ListsTheBuiltinProfiles) {
  EXPECT_THAT(BuiltinProfileNames(),
              UnorderedElementsAre("virustotal-public", "virustotal-premium", "metadefender-cloud",
                                   "mediasilo", "cybervault-starter", "cybervault-professional",
                                   "cybervault-enterprise"));
}

TEST(ConfigTest, EveryBuiltinProfileLoads) {
  for (const std::string& profile : BuiltinProfileNames()) {
    SCOPED_TRACE(profile);
    Policy policy =
        MustLoad(absl::StrCat("credentials:\n  - name: key\n    profile: ", profile, "\n"));
    ASSERT_EQ(policy.credentials.size(), 1u);
    EXPECT_EQ(policy.credentials[0].profile, profile);
    EXPECT_FALSE(policy.credentials[0].features.empty());
    EXPECT_OK(ValidatePolicy(policy));
  }
}

TEST(ConfigTest, FindBuiltinProfileReturnsFactsAndRejectsUnknownNames) {
  absl::StatusOr<v1::Profile> vt = FindBuiltinProfile("virustotal-public");
  ASSERT_OK(vt);
  EXPECT_EQ(vt->facts().at("max_upload_bytes"), 33554432);
  EXPECT_THAT(vt->throttle().status_codes(), ElementsAre(429));
  EXPECT_EQ(vt->throttle().backoff().initial(), "60s");
  absl::StatusOr<v1::Profile> ms = FindBuiltinProfile("mediasilo");
  ASSERT_OK(ms);
  EXPECT_THAT(ms->throttle().status_codes(), ElementsAre(420));
  absl::StatusOr<v1::Profile> missing = FindBuiltinProfile("nope");
  EXPECT_THAT(missing, StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(std::string(missing.status().message()), HasSubstr("mediasilo"));
}

TEST(ConfigTest, VirusTotalPublicMatchesTheSeed) {
  Policy p = MustLoad("credentials:\n  - {name: vt, profile: virustotal-public}\n");
  LimitSpec minute = GetLimit(p, "vt", "requests", "per_minute");
  EXPECT_EQ(minute.kind, LimitKind::kSliding);
  EXPECT_EQ(minute.capacity, 4);
  EXPECT_EQ(minute.period, absl::Seconds(60));
  EXPECT_EQ(minute.sub_buckets, 0);
  LimitSpec day = GetLimit(p, "vt", "requests", "per_day");
  EXPECT_EQ(day.kind, LimitKind::kCalendar);
  EXPECT_EQ(day.capacity, 500);
  EXPECT_EQ(day.unit, CalendarUnit::kDay);
  EXPECT_EQ(day.zone_name, "UTC");
  LimitSpec month = GetLimit(p, "vt", "requests", "per_month");
  EXPECT_EQ(month.capacity, 15500);
  EXPECT_EQ(month.unit, CalendarUnit::kMonth);
}

TEST(ConfigTest, OtherBuiltinProfilesMatchTheSeeds) {
  Policy p = MustLoad(
      "credentials:\n"
      "  - {name: md, profile: metadefender-cloud}\n"
      "  - {name: ms, profile: mediasilo}\n"
      "  - {name: cvs, profile: cybervault-starter}\n"
      "  - {name: cvp, profile: cybervault-professional}\n"
      "  - {name: cve, profile: cybervault-enterprise}\n"
      "  - {name: vtp, profile: virustotal-premium}\n");
  LimitSpec rep = GetLimit(p, "md", "reputation", "per_24h");
  EXPECT_EQ(rep.kind, LimitKind::kRolling);
  EXPECT_EQ(rep.capacity, 4000);
  EXPECT_EQ(rep.period, absl::Hours(24));

  LimitSpec hour = GetLimit(p, "ms", "requests", "per_hour");
  EXPECT_EQ(hour.kind, LimitKind::kSliding);
  EXPECT_EQ(hour.capacity, 10000);
  EXPECT_EQ(hour.period, absl::Hours(1));
  EXPECT_EQ(hour.sub_buckets, 3600);

  EXPECT_EQ(GetLimit(p, "cvs", "requests", "per_minute").capacity, 60);
  EXPECT_EQ(GetLimit(p, "cvs", "requests", "per_day").capacity, 10000);
  EXPECT_EQ(GetLimit(p, "cvs", "requests", "concurrent").kind, LimitKind::kConcurrency);
  EXPECT_EQ(GetLimit(p, "cvs", "requests", "concurrent").capacity, 10);
  EXPECT_EQ(GetLimit(p, "cvp", "requests", "per_minute").capacity, 300);
  EXPECT_EQ(GetLimit(p, "cvp", "requests", "per_day").capacity, 100000);
  EXPECT_EQ(GetLimit(p, "cvp", "requests", "concurrent").capacity, 50);
  EXPECT_EQ(GetLimit(p, "cve", "requests", "per_minute").capacity, 1000);
  EXPECT_EQ(GetLimit(p, "cve", "requests", "per_day").kind, LimitKind::kUnlimited);
  for (const char* tier : {"cvs", "cvp", "cve"}) {
    SCOPED_TRACE(tier);
    const CredentialSpec* c = FindCredential(p, tier);
    ASSERT_NE(c, nullptr);
    const std::vector<std::pair<std::string, int64_t>> endpoints = {
        {"auth_login", 10}, {"threats_scan", 5}, {"reports_generate", 20}, {"incidents_read", 120}};
    for (const auto& [name, per_minute] : endpoints) {
      const FeatureSpec* f = FindFeature(*c, name);
      ASSERT_NE(f, nullptr) << name;
      EXPECT_THAT(f->draws_on, ElementsAre("requests"));
      EXPECT_EQ(GetLimit(p, tier, name, "per_minute").capacity, per_minute);
      EXPECT_EQ(GetLimit(p, tier, name, "per_minute").period, absl::Seconds(60));
    }
  }

  EXPECT_TRUE(GetLimit(p, "vtp", "livehunt_notifications", "per_day").scoped);
  EXPECT_EQ(GetLimit(p, "vtp", "retrohunt_jobs", "concurrent").kind, LimitKind::kConcurrency);
}

TEST(ConfigTest, ExampleConfigLoadsWithOverridesApplied) {
  absl::StatusOr<LoadedConfig> loaded = LoadConfigFile(QUOTAD_EXAMPLE_CONFIG);
  ASSERT_OK(loaded);
  const Policy& p = loaded->policy;
  std::vector<std::string> names;
  for (const CredentialSpec& c : p.credentials) names.push_back(c.name);
  EXPECT_THAT(names,
              UnorderedElementsAre("virustotal/prod", "virustotal/premium", "metadefender/prod",
                                   "mediasilo/prod", "cybervault/prod"));
  EXPECT_EQ(GetLimit(p, "cybervault/prod", "requests", "per_minute").capacity, 400);
  EXPECT_EQ(GetLimit(p, "cybervault/prod", "requests", "per_day").capacity, 100000);
  EXPECT_EQ(GetLimit(p, "virustotal/premium", "retrohunt_jobs", "concurrent").capacity, 5);
  const FeatureSpec* livehunt =
      FindFeature(*FindCredential(p, "virustotal/premium"), "livehunt_notifications");
  ASSERT_NE(livehunt, nullptr);
  EXPECT_EQ(livehunt->max_scopes, 200);
  EXPECT_EQ(loaded->profiles.size(), BuiltinProfileNames().size());
  EXPECT_OK(LoadPolicyFile(QUOTAD_EXAMPLE_CONFIG));
}

TEST(ConfigTest, OverrideChangesOnlyItsLimitAndKeepsTheProfileIntact) {
  Policy p = MustLoad(
      "credentials:\n"
      "  - name: a\n"
      "    profile: cybervault-starter\n"
      "    overrides:\n"
      "      - {feature: threats_scan, limit: per_minute, capacity: 7, period: 2m}\n"
      "      - {feature: requests, default_lease_ttl: 5s}\n"
      "  - {name: b, profile: cybervault-starter}\n");
  LimitSpec a = GetLimit(p, "a", "threats_scan", "per_minute");
  EXPECT_EQ(a.capacity, 7);
  EXPECT_EQ(a.period, absl::Minutes(2));
  EXPECT_EQ(GetLimit(p, "a", "auth_login", "per_minute").capacity, 10);
  EXPECT_EQ(FindFeature(*FindCredential(p, "a"), "requests")->default_lease_ttl, absl::Seconds(5));
  EXPECT_EQ(GetLimit(p, "b", "threats_scan", "per_minute").capacity, 5);
  EXPECT_EQ(FindFeature(*FindCredential(p, "b"), "requests")->default_lease_ttl, absl::Seconds(30));
}

TEST(ConfigTest, OverrideCanChangeTheKind) {
  Policy p = MustLoad(
      "credentials:\n"
      "  - name: cv/enterprise\n"
      "    profile: cybervault-enterprise\n"
      "    overrides:\n"
      "      - {feature: requests, limit: per_day, kind: calendar, capacity: 2000000,\n"
      "         unit: day, zone: Europe/Berlin}\n");
  LimitSpec day = GetLimit(p, "cv/enterprise", "requests", "per_day");
  EXPECT_EQ(day.kind, LimitKind::kCalendar);
  EXPECT_EQ(day.capacity, 2000000);
  EXPECT_EQ(day.zone_name, "Europe/Berlin");
}

TEST(ConfigTest, AcceptsOwnProfilesAndCredentialFeatures) {
  Policy p = MustLoad(R"(
profiles:
  - name: acme
    features:
      - name: calls
        limits:
          - {name: spacing, kind: token_bucket, capacity: 1, rate: 4, period: 1m}
          - {name: per_week, kind: calendar, capacity: 900, unit: week, zone: America/New_York}
credentials:
  - name: acme/prod
    profile: acme
    features:
      - name: exports
        draws_on: [calls]
        max_scopes: 3
        limits:
          - {name: per_hour, kind: rolling, capacity: 2, period: 1h, scoped: true}
  - name: standalone
    features:
      - name: jobs
        default_lease_ttl: 90s
        max_lease_ttl: 1d
        limits: [{name: concurrent, kind: concurrency, capacity: 3}]
)");
  LimitSpec spacing = GetLimit(p, "acme/prod", "calls", "spacing");
  EXPECT_EQ(spacing.kind, LimitKind::kTokenBucket);
  EXPECT_EQ(spacing.rate, 4);
  EXPECT_EQ(GetLimit(p, "acme/prod", "calls", "per_week").unit, CalendarUnit::kWeek);
  EXPECT_TRUE(GetLimit(p, "acme/prod", "exports", "per_hour").scoped);
  const FeatureSpec* jobs = FindFeature(*FindCredential(p, "standalone"), "jobs");
  ASSERT_NE(jobs, nullptr);
  EXPECT_EQ(jobs->default_lease_ttl, absl::Seconds(90));
  EXPECT_EQ(jobs->max_lease_ttl, absl::Hours(24));
}

TEST(ConfigTest, RejectsUnknownFieldWithPath) {
  std::string error = LoadError(
      "credentials:\n"
      "  - name: a\n"
      "    profile: mediasilo\n"
      "    overides: []\n");
  EXPECT_THAT(error, HasSubstr("test.yaml:4:5"));
  EXPECT_THAT(error, HasSubstr("credentials[0].overides"));
  EXPECT_THAT(error, HasSubstr("\"overides\""));
  EXPECT_THAT(error, HasSubstr("overrides"));  // lists the known fields
}

TEST(ConfigTest, RejectsUnknownFieldInsideAProfileLimit) {
  std::string error = LoadError(R"(profiles:
  - name: acme
    features:
      - name: calls
        limits:
          - {name: x, kind: sliding, capacty: 5, period: 1m}
credentials: [{name: a, profile: acme}]
)");
  EXPECT_THAT(error, HasSubstr("test.yaml:6:"));
  EXPECT_THAT(error, HasSubstr("profiles[0].features[0].limits[0].capacty"));
  EXPECT_THAT(error, HasSubstr("\"capacty\""));
}

TEST(ConfigTest, RejectsWrongTypeWithPathAndValue) {
  std::string error = LoadError(
      "credentials:\n"
      "  - name: a\n"
      "    profile: mediasilo\n"
      "    overrides:\n"
      "      - feature: requests\n"
      "        limit: per_hour\n"
      "        capacity: lots\n");
  EXPECT_THAT(error, HasSubstr("test.yaml:7:19"));
  EXPECT_THAT(error, HasSubstr("credentials[0].overrides[0].capacity"));
  // Finding 8 of issue 18: the value is described, never echoed.
  EXPECT_THAT(error, HasSubstr("got a scalar of 4 characters"));
  EXPECT_THAT(error, Not(HasSubstr("lots")));
  EXPECT_THAT(error, HasSubstr("integer"));
}

TEST(ConfigTest, RejectsScalarWhereAListIsExpected) {
  std::string error = LoadError("credentials: virustotal\n");
  EXPECT_THAT(error, HasSubstr("test.yaml:1:14"));
  EXPECT_THAT(error, HasSubstr("credentials"));
  EXPECT_THAT(error, HasSubstr("got a scalar of 10 characters"));
  EXPECT_THAT(error, Not(HasSubstr("virustotal")));
}

TEST(ConfigTest, RejectsUnknownEnumValueListingTheKinds) {
  std::string error = LoadError(R"(profiles:
  - name: acme
    features: [{name: calls, limits: [{name: x, kind: leaky, capacity: 5, period: 1m}]}]
credentials: [{name: a, profile: acme}]
)");
  EXPECT_THAT(error, HasSubstr("profiles[0].features[0].limits[0].kind"));
  EXPECT_THAT(error, HasSubstr("got a scalar of 5 characters"));
  EXPECT_THAT(error, Not(HasSubstr("leaky")));
  EXPECT_THAT(error, HasSubstr("token_bucket"));
}

TEST(ConfigTest, RejectsNegativeCapacityInOverride) {
  std::string error = LoadError(
      "credentials:\n"
      "  - name: vt\n"
      "    profile: virustotal-public\n"
      "    overrides:\n"
      "      - {feature: requests, limit: per_day, capacity: -5}\n");
  EXPECT_THAT(error, HasSubstr("test.yaml:5:"));
  EXPECT_THAT(error, HasSubstr("credentials[0].overrides[0].capacity"));
  EXPECT_THAT(error, HasSubstr("-5"));
}

TEST(ConfigTest, RejectsZeroCapacityInProfile) {
  std::string error = LoadError(R"(profiles:
  - name: acme
    features: [{name: calls, limits: [{name: x, kind: rolling, capacity: 0, period: 1h}]}]
credentials: [{name: a, profile: acme}]
)");
  EXPECT_THAT(error, HasSubstr("test.yaml:3:"));
  EXPECT_THAT(error, HasSubstr("profiles[0].features[0].limits[0].capacity"));
  EXPECT_THAT(error, HasSubstr("got 0"));
}

TEST(ConfigTest, RejectsBadDurations) {
  for (const char* bad : {"-5s", "ten minutes", "60", "0s"}) {
    SCOPED_TRACE(bad);
    std::string error =
        LoadError(absl::StrCat("credentials:\n"
                               "  - name: ms\n"
                               "    profile: mediasilo\n"
                               "    overrides:\n"
                               "      - feature: requests\n"
                               "        limit: per_hour\n"
                               "        period: \"",
                               bad, "\"\n"));
    EXPECT_THAT(error, HasSubstr("test.yaml:7:17"));
    EXPECT_THAT(error, HasSubstr("credentials[0].overrides[0].period"));
    EXPECT_THAT(error, HasSubstr(absl::StrCat("\"", bad, "\"")));
  }
}

TEST(ConfigTest, RejectsBadLeaseTtl) {
  std::string error = LoadError(R"(credentials:
  - name: a
    features:
      - name: jobs
        default_lease_ttl: 2h
        max_lease_ttl: 1h
        limits: [{name: c, kind: concurrency, capacity: 1}]
)");
  EXPECT_THAT(error, HasSubstr("credentials[0].features[0].max_lease_ttl"));
  EXPECT_THAT(error, HasSubstr("test.yaml:6:"));
}

TEST(ConfigTest, RejectsUnknownTimeZone) {
  std::string error = LoadError(
      "credentials:\n"
      "  - name: vt\n"
      "    profile: virustotal-public\n"
      "    overrides:\n"
      "      - {feature: requests, limit: per_day, zone: Mars/Olympus_Mons}\n");
  EXPECT_THAT(error, HasSubstr("test.yaml:5:"));
  EXPECT_THAT(error, HasSubstr("credentials[0].overrides[0].zone"));
  EXPECT_THAT(error, HasSubstr("\"Mars/Olympus_Mons\""));
}

TEST(ConfigTest, RejectsUnknownProfile) {
  std::string error = LoadError(
      "credentials:\n"
      "  - name: vt\n"
      "    profile: virustotal-gold\n");
  EXPECT_THAT(error, HasSubstr("test.yaml:3:14"));
  EXPECT_THAT(error, HasSubstr("credentials[0].profile"));
  EXPECT_THAT(error, HasSubstr("\"virustotal-gold\""));
  EXPECT_THAT(error, HasSubstr("virustotal-public"));  // lists the known ones
}

TEST(ConfigTest, RejectsOverrideOfUnknownLimit) {
  std::string error = LoadError(
      "credentials:\n"
      "  - name: vt\n"
      "    profile: virustotal-public\n"
      "    overrides:\n"
      "      - feature: requests\n"
      "        limit: per_week\n"
      "        capacity: 10\n");
  EXPECT_THAT(error, HasSubstr("test.yaml:6:16"));
  EXPECT_THAT(error, HasSubstr("credentials[0].overrides[0].limit"));
  EXPECT_THAT(error, HasSubstr("\"per_week\""));
  EXPECT_THAT(error, HasSubstr("per_day"));
}

TEST(ConfigTest, RejectsOverrideOfUnknownFeature) {
  std::string error = LoadError(
      "credentials:\n"
      "  - name: vt\n"
      "    profile: virustotal-public\n"
      "    overrides:\n"
      "      - {feature: livehunt_notifications, limit: per_day, capacity: 10}\n");
  EXPECT_THAT(error, HasSubstr("credentials[0].overrides[0].feature"));
  EXPECT_THAT(error, HasSubstr("\"livehunt_notifications\""));
}

TEST(ConfigTest, RejectsSecondOverrideOfTheSameLimit) {
  std::string error = LoadError(
      "credentials:\n"
      "  - name: vt\n"
      "    profile: virustotal-public\n"
      "    overrides:\n"
      "      - {feature: requests, limit: per_day, capacity: 10}\n"
      "      - {feature: requests, limit: per_day, capacity: 20}\n");
  EXPECT_THAT(error, HasSubstr("credentials[0].overrides[1].limit"));
  EXPECT_THAT(error, HasSubstr("test.yaml:6:"));
}

TEST(ConfigTest, RejectsLimitFieldsInAnOverrideWithoutLimit) {
  std::string error = LoadError(
      "credentials:\n"
      "  - name: vt\n"
      "    profile: virustotal-public\n"
      "    overrides: [{feature: requests, capacity: 10}]\n");
  EXPECT_THAT(error, HasSubstr("credentials[0].overrides[0]"));
  EXPECT_THAT(error, HasSubstr("names no limit"));
}

TEST(ConfigTest, RejectsDuplicateCredentialNamingBothLines) {
  std::string error = LoadError(
      "credentials:\n"
      "  - name: virustotal/prod\n"
      "    profile: virustotal-public\n"
      "  - name: virustotal/prod\n"
      "    profile: mediasilo\n");
  EXPECT_THAT(error, HasSubstr("test.yaml:4:11"));
  EXPECT_THAT(error, HasSubstr("credentials[1].name"));
  EXPECT_THAT(error, HasSubstr("\"virustotal/prod\""));
  EXPECT_THAT(error, HasSubstr("test.yaml:2:"));  // where the first one is
}

TEST(ConfigTest, RejectsDrawsOnMissingFeature) {
  std::string error = LoadError(R"(credentials:
  - name: a
    features:
      - name: scan
        draws_on: [requests]
        limits: [{name: per_minute, kind: sliding, capacity: 5, period: 60s}]
)");
  EXPECT_THAT(error, HasSubstr("test.yaml:5:"));
  EXPECT_THAT(error, HasSubstr("credentials[0].features[0].draws_on[0]"));
  EXPECT_THAT(error, HasSubstr("\"requests\""));
}

TEST(ConfigTest, RejectsProfileNamedLikeABuiltin) {
  std::string error = LoadError(R"(profiles:
  - name: mediasilo
    features: [{name: r, limits: [{name: c, kind: concurrency, capacity: 1}]}]
credentials: [{name: a, profile: mediasilo}]
)");
  EXPECT_THAT(error, HasSubstr("profiles[0].name"));
  EXPECT_THAT(error, HasSubstr("\"mediasilo\""));
  EXPECT_THAT(error, HasSubstr("built-in"));
}

TEST(ConfigTest, RejectsFieldThatDoesNotApplyToTheKind) {
  std::string error = LoadError(R"(profiles:
  - name: acme
    features:
      - name: r
        limits:
          - {name: per_day, kind: calendar, capacity: 5, unit: day, period: 24h}
credentials: [{name: a, profile: acme}]
)");
  EXPECT_THAT(error, HasSubstr("profiles[0].features[0].limits[0].period"));
  EXPECT_THAT(error, HasSubstr("calendar"));
  EXPECT_THAT(error, HasSubstr("\"24h\""));
}

TEST(ConfigTest, RejectsLimitWithoutKind) {
  std::string error = LoadError(R"(profiles:
  - name: acme
    features: [{name: r, limits: [{name: x, capacity: 5}]}]
credentials: [{name: a, profile: acme}]
)");
  EXPECT_THAT(error, HasSubstr("profiles[0].features[0].limits[0].kind"));
  EXPECT_THAT(error, HasSubstr("\"x\""));
}

TEST(ConfigTest, RejectsHugeExactSlidingLog) {
  std::string error = LoadError(
      "credentials:\n"
      "  - name: ms\n"
      "    profile: mediasilo\n"
      "    overrides: [{feature: requests, limit: per_hour, capacity: 500000, sub_buckets: 0}]\n");
  EXPECT_THAT(error, HasSubstr("credentials[0].overrides[0].sub_buckets"));
  EXPECT_THAT(error, HasSubstr("500000"));
}

TEST(ConfigTest, RejectsRepeatedKey) {
  std::string error = LoadError(
      "credentials:\n"
      "  - name: a\n"
      "    name: b\n"
      "    profile: mediasilo\n");
  EXPECT_THAT(error, HasSubstr("test.yaml:3:5"));
  EXPECT_THAT(error, HasSubstr("credentials[0].name"));
}

TEST(ConfigTest, RejectsYamlSyntaxErrorWithLine) {
  std::string error = LoadError("credentials:\n  - name: [a\n");
  EXPECT_THAT(error, HasSubstr("test.yaml:"));
  EXPECT_THAT(error, HasSubstr("YAML syntax error"));
}

TEST(ConfigTest, RejectsConfigWithoutCredentials) {
  EXPECT_THAT(LoadError(""), HasSubstr("no credentials"));
  EXPECT_THAT(LoadError("profiles: []\n"), HasSubstr("no credentials"));
}

TEST(ConfigTest, LoadPolicyFileReportsMissingFileWithPath) {
  absl::StatusOr<Policy> policy = LoadPolicyFile("/nonexistent/quotad.yaml");
  EXPECT_THAT(policy, StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(std::string(policy.status().message()), HasSubstr("/nonexistent/quotad.yaml"));
  absl::StatusOr<Policy> dir = LoadPolicyFile("/");
  EXPECT_THAT(dir, StatusIs(absl::StatusCode::kInvalidArgument));
}

}  // namespace
}  // namespace quotad

namespace quotad {
namespace {

TEST(ConfigDocumentsTest, ASecondYamlDocumentIsRejectedWithItsLine) {
  const absl::StatusOr<Policy> policy = LoadPolicyFromString(
      "---\ncredentials:\n  - {name: a/b, profile: mediasilo}\n---\ncredentials: []\n", "two.yaml");
  ASSERT_THAT(policy, Not(IsOk()));
  EXPECT_NE(policy.status().message().find("two.yaml:4:"), std::string::npos) << policy.status();
  EXPECT_NE(policy.status().message().find("second one"), std::string::npos) << policy.status();
  // A leading "---" only opens the one document.
  EXPECT_OK(
      LoadPolicyFromString("---\ncredentials:\n  - {name: a/b, profile: mediasilo}\n", "one.yaml"));
}

TEST(ConfigDocumentsTest, MalformedFlowThatHungYamlCppLoadAllIsAnsweredWithAnError) {
  // Reduced from the config fuzzer's timeout input: yaml-cpp 0.7's LoadAll looped forever on it.
  // The fuzzer's 118-byte minimized input (tests/fuzz/corpus/config/regression-*-min.yaml).
  const std::string yaml(
      "# Example quotad configu# cybervault-s\250\250\250\250\250\250\250"
      "\250100\250\250\250ci, mediasilo\012,# cybervault-s\250\250\250\250"
      "\250\250\250\000\000\000\000\000\001\000\000\250\250\250\250Ncal\001"
      "\000\000\000\000\000\000\000: 400\012",
      118);
  const absl::StatusOr<Policy> policy = LoadPolicyFromString(yaml, "bad.yaml");
  EXPECT_THAT(policy, Not(IsOk()));
}

}  // namespace
}  // namespace quotad
