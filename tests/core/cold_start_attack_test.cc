// Attacks on the cold-start branch (merged at bdc96d0): the string fingerprint that decided which
// credentials share a compiled policy, and whether a credential is unchanged on a reload, became
// SameFeatures plus a hash (compiled_policy.{h,cc}); ValidatePolicy stopped allocating per
// credential (policy.cc); a reload reserves its maps, interns profile names and keys credentials
// by a view of their name (ledger_reload.cc, ledger.h); Ledger::CreateRestored reads the journal
// on a thread of its own while the policy compiles (ledger_restore.cc).
//
// What is attacked, each group below says more:
// - features that differ in exactly one field (every field of LimitSpec, FeatureSpec and
//   ThrottleSpec, doubles in the last bit, a zone by name and by value) never share a compiled
//   policy, and a reload that changes one such field takes effect; one that changes nothing
//   keeps the version and the counters;
// - features with the same hash but not the same (a zone that differs under the same name);
// - reloads that swap two credentials' features, rename profiles, drop and re-add credentials;
// - ValidatePolicy still refuses every bad value with the message it gave before the branch;
// - CreateRestored gives the ledger Create + Restore gives (usage, leases, later grants), with a
//   journal written under another policy, a corrupt one, one with records of credentials no
//   longer configured, and under many credentials (the read racing the compile).
// The policy the ledger reports (Ledger::policy, read from the compiled version in force) is
// compared with the policy given field by field by this file's own comparison, not SameFeatures.

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "service/core/clock.h"
#include "service/core/journal.h"
#include "service/core/ledger.h"
#include "service/core/names.h"
#include "service/core/policy.h"
#include "service/store/memory_journal.h"
#include "tests/support/policy_builders.h"
#include "tests/support/status_matchers.h"

namespace quotad {
namespace {

using namespace ::quotad::testing;  // NOLINT: the policy builders
using ::testing::HasSubstr;

// ---- This file's own comparison (bitwise for doubles: 0.1 and its neighbour differ).

bool SameBits(double a, double b) { return std::memcmp(&a, &b, sizeof a) == 0; }

std::string Diff(const LimitSpec& a, const LimitSpec& b) {
  if (a.name != b.name) return "name";
  if (a.kind != b.kind) return "kind";
  if (a.capacity != b.capacity) return "capacity";
  if (a.period != b.period) return "period";
  if (a.rate != b.rate) return "rate";
  if (a.unit != b.unit) return "unit";
  if (a.zone_name != b.zone_name) return "zone_name";
  if (a.zone != b.zone) return "zone";
  if (a.sub_buckets != b.sub_buckets) return "sub_buckets";
  if (a.scoped != b.scoped) return "scoped";
  if (a.guard != b.guard) return "guard";
  return "";
}

// Empty when `a` and `b` are the same in every field; else the first field that differs.
std::string Diff(const std::vector<FeatureSpec>& a, const std::vector<FeatureSpec>& b) {
  if (a.size() != b.size()) return "feature count";
  for (size_t i = 0; i < a.size(); ++i) {
    const FeatureSpec& x = a[i];
    const FeatureSpec& y = b[i];
    const std::string at = absl::StrCat("feature ", i, " ");
    if (x.name != y.name) return at + "name";
    if (x.draws_on != y.draws_on) return at + "draws_on";
    if (x.default_lease_ttl != y.default_lease_ttl) return at + "default_lease_ttl";
    if (x.max_lease_ttl != y.max_lease_ttl) return at + "max_lease_ttl";
    if (x.max_scopes != y.max_scopes) return at + "max_scopes";
    if (x.throttle.status_codes != y.throttle.status_codes) return at + "status_codes";
    if (x.throttle.initial_backoff != y.throttle.initial_backoff) return at + "initial_backoff";
    if (!SameBits(x.throttle.multiplier, y.throttle.multiplier)) return at + "multiplier";
    if (x.throttle.max_backoff != y.throttle.max_backoff) return at + "max_backoff";
    if (!SameBits(x.throttle.jitter_min, y.throttle.jitter_min)) return at + "jitter_min";
    if (!SameBits(x.throttle.jitter_max, y.throttle.jitter_max)) return at + "jitter_max";
    if (x.limits.size() != y.limits.size()) return at + "limit count";
    for (size_t j = 0; j < x.limits.size(); ++j) {
      if (std::string d = Diff(x.limits[j], y.limits[j]); !d.empty()) {
        return absl::StrCat(at, "limit ", j, " ", d);
      }
    }
  }
  return "";
}

// The features the ledger enforces for `credential` (from the compiled version in force).
std::vector<FeatureSpec> Enforced(const Ledger& ledger, absl::string_view credential) {
  for (const CredentialSpec& c : ledger.policy().credentials) {
    if (c.name == credential) return c.features;
  }
  return {};
}

std::string ProfileOf(const Ledger& ledger, absl::string_view credential) {
  for (const CredentialSpec& c : ledger.policy().credentials) {
    if (c.name == credential) return c.profile;
  }
  return "<not configured>";
}

// Three features using every field; f draws on g and h (two, so that their order can change).
std::vector<FeatureSpec> Base() {
  LimitSpec s = Sliding("s", 10, absl::Minutes(1));
  LimitSpec c = Calendar("c", 20, CalendarUnit::kDay, "UTC");
  LimitSpec b = Bucket("b", 5, absl::Seconds(1), 8);
  LimitSpec k = Concurrency("k", 3);
  FeatureSpec f = Feature("f", {s, c, b, k}, {"g", "h"});
  f.throttle.status_codes = {429, 503};
  f.throttle.multiplier = 1.5;
  f.throttle.jitter_min = 0.1;
  f.throttle.jitter_max = 0.3;
  FeatureSpec g = Feature("g", {Sliding("gs", 100, absl::Hours(1))});
  FeatureSpec h = Feature("h", {Calendar("hc", 50, CalendarUnit::kHour)});
  return {f, g, h};
}

struct Mutation {
  std::string name;
  std::function<void(std::vector<FeatureSpec>&)> apply;
};

LimitSpec& L(std::vector<FeatureSpec>& fs, const std::string& name) {
  for (LimitSpec& l : fs[0].limits) {
    if (l.name == name) return l;
  }
  ADD_FAILURE() << "no limit " << name;
  return fs[0].limits[0];
}

// Each changes exactly one field (or one order) of Base().
std::vector<Mutation> Mutations() {
  std::vector<Mutation> m;
  auto add = [&](std::string name, std::function<void(std::vector<FeatureSpec>&)> f) {
    m.push_back({std::move(name), std::move(f)});
  };
  add("limit_name", [](auto& fs) { L(fs, "s").name = "s2"; });
  add("kind", [](auto& fs) { L(fs, "s").kind = LimitKind::kRolling; });
  add("capacity", [](auto& fs) { L(fs, "s").capacity = 9; });
  add("period_1ns", [](auto& fs) { L(fs, "s").period += absl::Nanoseconds(1); });
  add("guard_1ns", [](auto& fs) { L(fs, "s").guard = absl::Nanoseconds(1); });
  add("sub_buckets", [](auto& fs) { L(fs, "s").sub_buckets = 2; });
  add("scoped", [](auto& fs) { L(fs, "s").scoped = true; });
  add("rate", [](auto& fs) { L(fs, "b").rate = 6; });
  add("burst", [](auto& fs) { L(fs, "b").capacity = 9; });
  add("bucket_period_1ns", [](auto& fs) { L(fs, "b").period += absl::Nanoseconds(1); });
  add("slots", [](auto& fs) { L(fs, "k").capacity = 2; });
  add("unit", [](auto& fs) { L(fs, "c").unit = CalendarUnit::kHour; });
  add("zone_other_name_same_rules", [](auto& fs) {
    LimitSpec& c = L(fs, "c");
    c.zone_name = "Etc/UTC";
    ASSERT_TRUE(absl::LoadTimeZone("Etc/UTC", &c.zone));
  });
  add("zone_other_zone", [](auto& fs) {
    LimitSpec& c = L(fs, "c");
    c.zone_name = "America/New_York";
    ASSERT_TRUE(absl::LoadTimeZone("America/New_York", &c.zone));
  });
  // Same name, same hash (the hash reads the name), another zone: must still not be the same.
  add("zone_value_only", [](auto& fs) {
    ASSERT_TRUE(absl::LoadTimeZone("Asia/Tokyo", &L(fs, "c").zone));
  });
  add("limit_order", [](auto& fs) { std::swap(fs[0].limits[0], fs[0].limits[1]); });
  add("limit_added", [](auto& fs) { fs[0].limits.push_back(Sliding("extra", 7, absl::Hours(1))); });
  add("limit_removed", [](auto& fs) { fs[0].limits.pop_back(); });
  add("feature_name", [](auto& fs) { fs[0].name = "f2"; });
  add("feature_order", [](auto& fs) { std::swap(fs[1], fs[2]); });
  add("draws_on_order", [](auto& fs) { fs[0].draws_on = {"h", "g"}; });
  add("draws_on_fewer", [](auto& fs) { fs[0].draws_on = {"g"}; });
  add("default_ttl_1ns", [](auto& fs) { fs[0].default_lease_ttl += absl::Nanoseconds(1); });
  add("max_ttl_1ns", [](auto& fs) { fs[0].max_lease_ttl -= absl::Nanoseconds(1); });
  add("max_scopes", [](auto& fs) { fs[0].max_scopes = 10001; });
  add("status_codes_order", [](auto& fs) { fs[0].throttle.status_codes = {503, 429}; });
  add("status_codes_fewer", [](auto& fs) { fs[0].throttle.status_codes = {429}; });
  add("initial_backoff_1ns",
      [](auto& fs) { fs[0].throttle.initial_backoff += absl::Nanoseconds(1); });
  add("max_backoff_1ns", [](auto& fs) { fs[0].throttle.max_backoff += absl::Nanoseconds(1); });
  // The old fingerprint printed doubles with 6 significant digits: these merged under it.
  add("multiplier_7th_digit", [](auto& fs) { fs[0].throttle.multiplier = 1.5000001; });
  add("multiplier_last_bit",
      [](auto& fs) { fs[0].throttle.multiplier = std::nextafter(1.5, 2.0); });
  add("jitter_min_7th_digit", [](auto& fs) { fs[0].throttle.jitter_min = 0.1000001; });
  add("jitter_min_last_bit",
      [](auto& fs) { fs[0].throttle.jitter_min = std::nextafter(0.1, 1.0); });
  add("jitter_max_7th_digit", [](auto& fs) { fs[0].throttle.jitter_max = 0.3000001; });
  add("jitter_max_last_bit",
      [](auto& fs) { fs[0].throttle.jitter_max = std::nextafter(0.3, 0.0); });
  add("g_limit_capacity", [](auto& fs) { fs[1].limits[0].capacity = 99; });
  return m;
}

void PrintTo(const Mutation& m, std::ostream* os) { *os << m.name; }

std::vector<FeatureSpec> Mutated(const Mutation& m) {
  std::vector<FeatureSpec> fs = Base();
  m.apply(fs);
  return fs;
}

class OneFieldTest : public ::testing::TestWithParam<Mutation> {};

// The mutation really changes something, and the policy still validates.
TEST_P(OneFieldTest, MutationIsValidAndDiffers) {
  EXPECT_NE(Diff(Base(), Mutated(GetParam())), "");
  Policy p;
  p.credentials.push_back(Credential("m", "", Mutated(GetParam())));
  EXPECT_OK(ValidatePolicy(p));
}

// a, c and e have the base features, b and d the mutated ones, in both arrangements (the reload
// compares with the previous credential's features before hashing): every credential enforces
// exactly its own features, and there are exactly two compiled versions.
TEST_P(OneFieldTest, NeverSharesACompiledPolicy) {
  FakeClock clock(Utc(2026, 6, 1, 10));
  const std::vector<FeatureSpec> base = Base();
  const std::vector<FeatureSpec> mutated = Mutated(GetParam());
  for (bool base_first : {true, false}) {
    Policy p;
    const std::vector<FeatureSpec>& one = base_first ? base : mutated;
    const std::vector<FeatureSpec>& two = base_first ? mutated : base;
    p.credentials = {Credential("a", "", one), Credential("b", "", two),
                     Credential("c", "", one), Credential("d", "", two),
                     Credential("e", "", two), Credential("f", "", one)};
    ASSERT_OK_AND_ASSIGN(std::unique_ptr<Ledger> ledger, Ledger::Create(p, &clock));
    for (const CredentialSpec& c : p.credentials) {
      EXPECT_EQ(Diff(Enforced(*ledger, c.name), c.features), "")
          << "credential " << c.name << " enforces features not its own (base_first "
          << base_first << ")";
    }
    EXPECT_EQ(ledger->Footprint().versions, 2u);
  }
}

// A reload that changes the one field takes effect; one that changes nothing (a fresh copy of
// the same features) keeps the version and the counters.
TEST_P(OneFieldTest, ReloadTakesEffectAndAnEmptyReloadKeepsCounters) {
  FakeClock clock(Utc(2026, 6, 1, 10));
  Policy before = OneCredential("x", Base());
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Ledger> ledger, Ledger::Create(before, &clock));
  ASSERT_OK_AND_ASSIGN(Decision d, ledger->Acquire(AcquireRequest{
                                       .credential = "x", .feature = "g", .cost = 3}));
  ASSERT_TRUE(d.granted);
  ASSERT_OK(ledger->Release(d.lease_id, std::nullopt).status());
  ASSERT_OK_AND_ASSIGN(std::vector<LimitStatus> usage_before, ledger->Usage("x"));

  Policy after = OneCredential("x", Mutated(GetParam()));
  ASSERT_OK(ledger->Reload(after));
  EXPECT_EQ(Diff(Enforced(*ledger, "x"), after.credentials[0].features), "")
      << "the reload did not take effect";

  // Back to the base, then the same again from a fresh copy: nothing changes the second time.
  ASSERT_OK(ledger->Reload(OneCredential("x", Base())));
  EXPECT_EQ(Diff(Enforced(*ledger, "x"), Base()), "");
  const size_t versions = ledger->Footprint().versions;
  ASSERT_OK_AND_ASSIGN(std::vector<LimitStatus> usage_mid, ledger->Usage("x"));
  ASSERT_OK(ledger->Reload(OneCredential("x", Base())));
  EXPECT_EQ(ledger->Footprint().versions, versions) << "an unchanged reload made a new version";
  ASSERT_OK_AND_ASSIGN(std::vector<LimitStatus> usage_after, ledger->Usage("x"));
  ASSERT_EQ(usage_after.size(), usage_mid.size());
  for (size_t i = 0; i < usage_after.size(); ++i) {
    EXPECT_EQ(usage_after[i].name, usage_mid[i].name);
    EXPECT_EQ(usage_after[i].used, usage_mid[i].used) << usage_after[i].name;
  }
  // g.gs was never changed: its 3 units are still counted after all three reloads.
  int64_t gs = -1;
  for (const LimitStatus& s : usage_after) {
    if (s.name == "g.gs") gs = s.used;
  }
  EXPECT_EQ(gs, 3);
  (void)usage_before;
}

INSTANTIATE_TEST_SUITE_P(EveryField, OneFieldTest, ::testing::ValuesIn(Mutations()),
                         [](const ::testing::TestParamInfo<Mutation>& info) {
                           return info.param.name;
                         });

// ---- Grants: sharing or a missed reload would show as a grant beyond the limit.

AcquireRequest Req(absl::string_view credential, int64_t cost = 1) {
  return AcquireRequest{.credential = credential, .feature = "f", .cost = cost};
}

int Grants(Ledger& ledger, absl::string_view credential, int at_most = 1000) {
  int n = 0;
  while (n < at_most) {
    absl::StatusOr<Decision> d = ledger.Acquire(Req(credential));
    if (!d.ok() || !d->granted) break;
    ++n;
  }
  return n;
}

Policy Caps(std::vector<std::pair<std::string, int64_t>> caps) {
  Policy p;
  for (auto& [name, cap] : caps) {
    p.credentials.push_back(
        Credential(name, "p", {Feature("f", {Calendar("per_day", cap, CalendarUnit::kDay)})}));
  }
  return p;
}

// Interleaved capacities (a run of the same features, then another, then the first again).
TEST(ColdStartAttackTest, CredentialsOneCapacityApartGrantTheirOwn) {
  FakeClock clock(Utc(2026, 6, 1, 10));
  ASSERT_OK_AND_ASSIGN(
      std::unique_ptr<Ledger> ledger,
      Ledger::Create(Caps({{"a", 5}, {"b", 5}, {"c", 4}, {"d", 5}, {"e", 4}, {"f", 4}}), &clock));
  EXPECT_EQ(Grants(*ledger, "a"), 5);
  EXPECT_EQ(Grants(*ledger, "b"), 5);
  EXPECT_EQ(Grants(*ledger, "c"), 4);
  EXPECT_EQ(Grants(*ledger, "d"), 5);
  EXPECT_EQ(Grants(*ledger, "e"), 4);
  EXPECT_EQ(Grants(*ledger, "f"), 4);
}

// A reload swaps the capacities of a and b (c follows a). Right after a reload the ledger grants
// no more than the stricter of the old and the new configuration (SPEC: limit semantics): a, cut
// to 3, grants 1 more; b, raised to 6, still 1 more in this window; c, cut to 3 with nothing
// used, 3. Swapped back, each is at the stricter of the two already.
TEST(ColdStartAttackTest, ReloadSwappingTwoCredentialsFeatures) {
  FakeClock clock(Utc(2026, 6, 1, 10));
  const Policy first = Caps({{"a", 6}, {"b", 3}, {"c", 6}});
  const Policy swapped = Caps({{"a", 3}, {"b", 6}, {"c", 3}});
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Ledger> ledger, Ledger::Create(first, &clock));
  ASSERT_EQ(Grants(*ledger, "a", 2), 2);
  ASSERT_EQ(Grants(*ledger, "b", 2), 2);
  ASSERT_OK(ledger->Reload(swapped));
  for (const CredentialSpec& c : swapped.credentials) {
    EXPECT_EQ(Diff(Enforced(*ledger, c.name), c.features), "") << c.name;
  }
  EXPECT_EQ(Grants(*ledger, "a"), 1);
  EXPECT_EQ(Grants(*ledger, "b"), 1);
  EXPECT_EQ(Grants(*ledger, "c"), 3);
  ASSERT_OK(ledger->Reload(first));
  for (const CredentialSpec& c : first.credentials) {
    EXPECT_EQ(Diff(Enforced(*ledger, c.name), c.features), "") << c.name;
  }
  EXPECT_EQ(Grants(*ledger, "a"), 0);
  EXPECT_EQ(Grants(*ledger, "b"), 0);
  EXPECT_EQ(Grants(*ledger, "c"), 0);
  // The next day each has its configured capacity again.
  clock.Advance(absl::Hours(24));
  EXPECT_EQ(Grants(*ledger, "a"), 6);
  EXPECT_EQ(Grants(*ledger, "b"), 3);
  EXPECT_EQ(Grants(*ledger, "c"), 6);
}

// A capacity lowered by a reload that otherwise repeats the policy: the lower one holds.
TEST(ColdStartAttackTest, LoweredCapacityAmongUnchangedCredentialsTakesEffect) {
  FakeClock clock(Utc(2026, 6, 1, 10));
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Ledger> ledger,
                       Ledger::Create(Caps({{"a", 10}, {"b", 10}, {"c", 10}}), &clock));
  ASSERT_EQ(Grants(*ledger, "b", 4), 4);
  ASSERT_OK(ledger->Reload(Caps({{"a", 10}, {"b", 5}, {"c", 10}})));
  EXPECT_EQ(Grants(*ledger, "b"), 1);
  EXPECT_EQ(Grants(*ledger, "a"), 10);
}

// A throttle multiplier that is NaN compares unequal to itself: such features are never "the
// same", not even a fresh copy of themselves. Each reload then makes a new version; the counters
// must still be carried and old versions pruned, not piled up.
TEST(ColdStartAttackTest, NanMultiplierReloadsKeepCountersAndPrune) {
  FakeClock clock(Utc(2026, 6, 1, 10));
  auto policy = [] {
    Policy p = Caps({{"a", 5}, {"b", 5}});
    for (CredentialSpec& c : p.credentials) c.features[0].throttle.multiplier = std::nan("");
    return p;
  };
  if (!ValidatePolicy(policy()).ok()) GTEST_SKIP() << "a NaN multiplier is refused";
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Ledger> ledger, Ledger::Create(policy(), &clock));
  ASSERT_EQ(Grants(*ledger, "a", 3), 3);
  for (int i = 0; i < 20; ++i) ASSERT_OK(ledger->Reload(policy()));
  EXPECT_EQ(Grants(*ledger, "a"), 2);
  EXPECT_EQ(Grants(*ledger, "b"), 5);
  EXPECT_LE(ledger->Footprint().versions, 4u) << "versions piled up over 20 reloads";
}

// ---- Profiles (interned) and credentials (keyed by a view of their name).

TEST(ColdStartAttackTest, ProfilesRenamedAndInterned) {
  FakeClock clock(Utc(2026, 6, 1, 10));
  auto policy = [](std::vector<std::pair<std::string, std::string>> names) {
    Policy p;
    for (auto& [cred, profile] : names) {
      p.credentials.push_back(
          Credential(cred, profile, {Feature("f", {Calendar("d", 5, CalendarUnit::kDay)})}));
    }
    return p;
  };
  Policy first = policy({{"a", "p1"}, {"b", "p1"}, {"c", ""}, {"d", "p2"}, {"e", "p1"}});
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Ledger> ledger, Ledger::Create(first, &clock));
  for (const CredentialSpec& c : first.credentials) EXPECT_EQ(ProfileOf(*ledger, c.name), c.profile);
  // Renames, swaps, a profile emptied, new ones; many reloads so that the interned set grows.
  for (int i = 0; i < 50; ++i) {
    const std::string n = absl::StrCat("q", i);
    Policy p = policy({{"a", n}, {"b", "p2"}, {"c", n}, {"d", ""}, {"e", absl::StrCat(n, "x")}});
    ASSERT_OK(ledger->Reload(p));
    for (const CredentialSpec& c : p.credentials) {
      EXPECT_EQ(ProfileOf(*ledger, c.name), c.profile) << "reload " << i;
    }
  }
  ASSERT_OK(ledger->Reload(first));
  for (const CredentialSpec& c : first.credentials) EXPECT_EQ(ProfileOf(*ledger, c.name), c.profile);
}

// A credential dropped by one reload and configured again by the next keeps what it counted;
// a reload that adds thousands (the by-name maps rehash) finds every credential afterwards.
TEST(ColdStartAttackTest, DroppedAndReaddedCredentialKeepsItsCountAcrossRehash) {
  FakeClock clock(Utc(2026, 6, 1, 10));
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Ledger> ledger,
                       Ledger::Create(Caps({{"a", 5}, {"b", 5}}), &clock));
  ASSERT_EQ(Grants(*ledger, "b", 4), 4);
  ASSERT_OK(ledger->Reload(Caps({{"a", 5}})));
  EXPECT_THAT(ledger->Acquire(Req("b")), StatusIs(absl::StatusCode::kNotFound));
  std::vector<std::pair<std::string, int64_t>> many = {{"a", 5}};
  for (int i = 0; i < 5000; ++i) many.push_back({absl::StrCat("n", i), 1 + i % 7});
  many.push_back({"b", 5});
  ASSERT_OK(ledger->Reload(Caps(many)));
  EXPECT_EQ(Grants(*ledger, "b"), 1) << "b forgot the 4 units it granted before it was dropped";
  for (int i = 0; i < 5000; i += 499) {
    EXPECT_EQ(Grants(*ledger, absl::StrCat("n", i)), 1 + i % 7) << i;
  }
  EXPECT_EQ(ledger->policy().credentials.size(), many.size());
}

// ---- ValidatePolicy: every bad value refused with the message the previous version gave
// (git show 3194d1b:service/core/policy.cc; the expected texts are built as it built them).

struct BadCase {
  std::string name;
  std::function<void(Policy&)> break_it;
  std::string message;
};

Policy GoodPolicy() {
  Policy p;
  p.credentials.push_back(Credential("ok", "", {Feature("f", {Sliding("s", 5, absl::Minutes(1))})}));
  p.credentials.push_back(Credential(
      "x", "", {Feature("f", {Sliding("s", 5, absl::Minutes(1)), Concurrency("k", 2)}, {"g"}),
                Feature("g", {Calendar("d", 5, CalendarUnit::kDay)})}));
  return p;
}

std::vector<BadCase> BadCases() {
  const std::string xf = "credential 'x' feature 'f'";
  std::vector<BadCase> v;
  v.push_back({"empty_credential", [](Policy& p) { p.credentials[1].name = ""; },
               std::string(CheckCredentialName("").message())});
  v.push_back({"bad_credential_chars", [](Policy& p) { p.credentials[1].name = "x y"; },
               std::string(CheckCredentialName("x y").message())});
  v.push_back({"duplicate_credential", [](Policy& p) { p.credentials[1].name = "ok"; },
               "duplicate credential 'ok'"});
  v.push_back({"no_features", [](Policy& p) { p.credentials[1].features.clear(); },
               "credential 'x' has no features"});
  v.push_back({"empty_feature", [](Policy& p) { p.credentials[1].features[1].name = ""; },
               std::string(CheckFeatureName("", "credential 'x' feature").message())});
  v.push_back({"duplicate_feature", [](Policy& p) { p.credentials[1].features[1].name = "f"; },
               xf + ": duplicate feature"});
  v.push_back({"empty_limit", [](Policy& p) { p.credentials[1].features[0].limits[1].name = ""; },
               std::string(CheckLimitName("", xf + " limit").message())});
  v.push_back({"duplicate_limit",
               [](Policy& p) { p.credentials[1].features[0].limits[1].name = "s"; },
               xf + ": duplicate limit 's'"});
  v.push_back({"capacity_0", [](Policy& p) { p.credentials[1].features[0].limits[0].capacity = 0; },
               absl::StrCat(xf, " limit 's': bad capacity 0 (must be 1..", kMaxCapacity, ")")});
  v.push_back({"capacity_negative",
               [](Policy& p) { p.credentials[1].features[0].limits[1].capacity = -3; },
               absl::StrCat(xf, " limit 'k': bad capacity -3 (must be 1..", kMaxCapacity, ")")});
  v.push_back({"capacity_too_big",
               [](Policy& p) { p.credentials[1].features[0].limits[0].capacity = kMaxCapacity + 1; },
               absl::StrCat(xf, " limit 's': bad capacity ", kMaxCapacity + 1, " (must be 1..",
                            kMaxCapacity, ")")});
  v.push_back({"period_0",
               [](Policy& p) { p.credentials[1].features[0].limits[0].period = absl::ZeroDuration(); },
               xf + " limit 's': bad period 0"});
  v.push_back({"guard_negative",
               [](Policy& p) {
                 p.credentials[1].features[0].limits[0].guard = -absl::Seconds(1);
               },
               xf + " limit 's': bad guard -1s"});
  v.push_back({"sub_buckets_negative",
               [](Policy& p) { p.credentials[1].features[0].limits[0].sub_buckets = -1; },
               xf + " limit 's': bad sub_buckets -1"});
  v.push_back({"calendar_no_unit",
               [](Policy& p) { p.credentials[1].features[1].limits[0].unit = CalendarUnit::kNone; },
               "credential 'x' feature 'g' limit 'd': bad unit none (calendar needs a unit)"});
  v.push_back({"ttl_zero",
               [](Policy& p) {
                 p.credentials[1].features[0].default_lease_ttl = absl::ZeroDuration();
               },
               xf + ": bad lease ttls default 0 max 24h"});
  v.push_back({"ttl_max_below_default",
               [](Policy& p) { p.credentials[1].features[0].max_lease_ttl = absl::Seconds(30); },
               xf + ": bad lease ttls default 1m max 30s"});
  v.push_back({"max_scopes_0", [](Policy& p) { p.credentials[1].features[0].max_scopes = 0; },
               xf + ": bad max_scopes 0"});
  v.push_back({"draws_on_self", [](Policy& p) { p.credentials[1].features[0].draws_on = {"f"}; },
               xf + ": bad draws_on 'f'"});
  v.push_back({"draws_on_missing",
               [](Policy& p) { p.credentials[1].features[0].draws_on = {"g", "nope"}; },
               xf + ": bad draws_on 'nope'"});
  // The reused per-credential sets: names seen in the first credential must not leak into the
  // second (a feature or limit of the same name is fine there; a draws_on on a feature only
  // the first credential has is not).
  v.push_back({"draws_on_other_credentials_feature",
               [](Policy& p) {
                 p.credentials[0].features.push_back(Feature("only_in_ok", {Concurrency("k", 1)}));
                 p.credentials[1].features[0].draws_on = {"only_in_ok"};
               },
               xf + ": bad draws_on 'only_in_ok'"});
  return v;
}

TEST(ColdStartAttackTest, ValidatePolicyRefusesAsBefore) {
  ASSERT_OK(ValidatePolicy(GoodPolicy()));
  for (const BadCase& c : BadCases()) {
    Policy p = GoodPolicy();
    c.break_it(p);
    EXPECT_THAT(ValidatePolicy(p),
                StatusIs(absl::StatusCode::kInvalidArgument, ::testing::Eq(c.message)))
        << c.name;
    // And the ledger refuses it, on creation and on reload (the old policy stays).
    FakeClock clock(Utc(2026, 6, 1, 10));
    EXPECT_FALSE(Ledger::Create(p, &clock).ok()) << c.name;
    ASSERT_OK_AND_ASSIGN(std::unique_ptr<Ledger> ledger, Ledger::Create(GoodPolicy(), &clock));
    EXPECT_FALSE(ledger->Reload(p).ok()) << c.name;
    EXPECT_EQ(Diff(Enforced(*ledger, "x"), GoodPolicy().credentials[1].features), "") << c.name;
  }
}

// The same names in every credential (the reused sets are cleared between credentials).
TEST(ColdStartAttackTest, ValidatePolicyAcceptsTheSameNamesInEveryCredential) {
  Policy p;
  for (int i = 0; i < 100; ++i) {
    p.credentials.push_back(Credential(
        absl::StrCat("c", i), "p",
        {Feature("f", {Sliding("s", 5, absl::Minutes(1))}, {"g"}), Feature("g", {Concurrency("s", 1)})}));
  }
  EXPECT_OK(ValidatePolicy(p));
  p.credentials[99].features[1].limits.push_back(Concurrency("s", 2));
  EXPECT_THAT(ValidatePolicy(p), StatusIs(absl::StatusCode::kInvalidArgument,
                                          ::testing::Eq("credential 'c99' feature 'g': duplicate "
                                                        "limit 's'")));
}

// ---- CreateRestored against Create + Restore.

// A journal that hands out a fixed state (a corrupt one, say) and takes writes into memory.
class FixedStateJournal : public MemoryJournal {
 public:
  explicit FixedStateJournal(JournalState state) : state_(std::move(state)) {}
  absl::StatusOr<JournalState> Load() override { return state_; }

 private:
  const JournalState state_;
};

// A fresh journal holding what `from` holds.
std::unique_ptr<MemoryJournal> CopyOf(Journal& from) {
  auto to = std::make_unique<MemoryJournal>();
  absl::StatusOr<JournalState> s = from.Load();
  EXPECT_OK(s.status());
  if (!s.ok()) return to;
  EXPECT_OK(to->Reserve(s->reservations));
  for (const JournalLease& l : s->leases) EXPECT_OK(to->PutLease(l));
  for (const JournalCooldown& c : s->cooldowns) EXPECT_OK(to->PutCooldown(c));
  for (const JournalOutside& o : s->outside) EXPECT_OK(to->PutOutside(o));
  return to;
}

std::string Describe(Ledger& ledger) {
  std::string out;
  for (const CredentialSpec& c : ledger.policy().credentials) {
    absl::StatusOr<std::vector<LimitStatus>> usage = ledger.Usage(c.name);
    if (!usage.ok()) {
      absl::StrAppend(&out, c.name, ": ", usage.status().ToString(), "\n");
      continue;
    }
    for (const LimitStatus& s : *usage) {
      absl::StrAppend(&out, c.name, " ", s.name, "[", s.scope, "] used=", s.used,
                      " remaining=", s.remaining, " reset=", absl::FormatTime(s.reset),
                      s.cooldown ? " cooldown" : "", "\n");
    }
    std::vector<std::string> leases;
    for (const LeaseInfo& l : ledger.Leases(c.name)) {
      leases.push_back(absl::StrCat(l.id.ToString(), " ", l.feature, "[", l.scope, "] cost=", l.cost,
                                    " expiry=", absl::FormatTime(l.expiry)));
    }
    std::sort(leases.begin(), leases.end());
    for (const std::string& l : leases) absl::StrAppend(&out, c.name, " lease ", l, "\n");
  }
  return out;
}

// What the same acquires (each feature, then each again with a scope) grant on `ledger`.
std::string Then(Ledger& ledger) {
  std::string out;
  for (const CredentialSpec& c : ledger.policy().credentials) {
    for (const FeatureSpec& f : c.features) {
      for (int i = 0; i < 12; ++i) {
        absl::StatusOr<Decision> d = ledger.Acquire(AcquireRequest{
            .credential = c.name, .feature = f.name, .scope = i % 2 ? "s1" : "", .cost = 1});
        absl::StrAppend(&out, d.ok() ? (d->granted ? "G" : "d") : "E");
      }
      absl::StrAppend(&out, " ");
    }
  }
  return out;
}

struct Started {
  absl::Status status;
  std::string state;  // Describe, right after the start
  std::string then;   // Then, afterwards
};

// Starts a ledger under `policy` from a copy of `journal`, either way, and describes it.
Started Start(const Policy& policy, Journal& journal, bool create_restored, FakeClock& clock) {
  std::unique_ptr<MemoryJournal> copy = CopyOf(journal);
  LedgerOptions o{.journal = copy.get(), .jitter_seed = 7};
  Started out;
  absl::StatusOr<std::unique_ptr<Ledger>> l;
  if (create_restored) {
    l = Ledger::CreateRestored(policy, &clock, o);
  } else {
    l = Ledger::Create(policy, &clock, o);
    if (l.ok()) {
      if (absl::Status s = (*l)->Restore(); !s.ok()) l = s;
    }
  }
  if (!l.ok()) {
    out.status = l.status();
    return out;
  }
  out.state = Describe(**l);
  out.then = Then(**l);
  return out;
}

void ExpectSameStart(const Policy& policy, Journal& journal, FakeClock& clock) {
  Started a = Start(policy, journal, /*create_restored=*/false, clock);
  Started b = Start(policy, journal, /*create_restored=*/true, clock);
  EXPECT_EQ(a.status, b.status);
  EXPECT_EQ(a.state, b.state);
  EXPECT_EQ(a.then, b.then);
}

// Scoped and unscoped limits of every kind, two features drawing on each other, per credential.
std::vector<FeatureSpec> Rich(int64_t cap) {
  LimitSpec scoped = Sliding("scoped", cap, absl::Minutes(10));
  scoped.scoped = true;
  return {Feature("f",
                  {Calendar("day", cap * 3, CalendarUnit::kDay), Sliding("min", cap, absl::Minutes(1)),
                   Bucket("b", 2, absl::Seconds(1), cap), Concurrency("k", cap), scoped},
                  {"g"}),
          Feature("g", {Rolling("roll", cap * 2, absl::Hours(1))})};
}

// Writes a journal under `policy`: grants on every credential and feature, some released.
void Fill(const Policy& policy, Journal& journal, FakeClock& clock, int per_feature) {
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Ledger> ledger,
                       Ledger::Create(policy, &clock, LedgerOptions{.journal = &journal}));
  ASSERT_OK(ledger->Restore());
  std::vector<LeaseId> leases;
  for (const CredentialSpec& c : policy.credentials) {
    for (const FeatureSpec& f : c.features) {
      for (int i = 0; i < per_feature; ++i) {
        absl::StatusOr<Decision> d = ledger->Acquire(AcquireRequest{
            .credential = c.name, .feature = f.name, .scope = i % 3 ? "s1" : "s2", .cost = 1,
            .lease_ttl = absl::Minutes(30)});
        ASSERT_OK(d.status());
        if (d->granted) leases.push_back(d->lease_id);
      }
    }
  }
  for (size_t i = 0; i < leases.size(); i += 3) {
    ASSERT_OK(ledger->Release(leases[i], i % 2 ? std::optional<int64_t>(0) : std::nullopt).status());
  }
  clock.Advance(absl::Seconds(20));
}

Policy RichPolicy(int n, int64_t cap) {
  Policy p;
  for (int i = 0; i < n; ++i) p.credentials.push_back(Credential(absl::StrCat("c", i), "p", Rich(cap)));
  return p;
}

TEST(CreateRestoredAttackTest, SameLedgerAsCreateThenRestore) {
  FakeClock clock(Utc(2026, 6, 1, 10));
  MemoryJournal journal;
  const Policy p = RichPolicy(4, 6);
  Fill(p, journal, clock, 5);
  ExpectSameStart(p, journal, clock);
  // Something was restored at all (else the comparison proves little).
  Started s = Start(p, journal, true, clock);
  EXPECT_THAT(s.state, HasSubstr(" lease "));
  EXPECT_THAT(s.state, HasSubstr("f.day[] used=")) << s.state;
  EXPECT_THAT(s.state, ::testing::Not(HasSubstr("f.day[] used=0 "))) << s.state;
}

// A journal written under another policy: a credential gone, one added, capacities lowered and
// raised, a limit renamed, a kind changed.
TEST(CreateRestoredAttackTest, JournalOfAnotherPolicy) {
  FakeClock clock(Utc(2026, 6, 1, 10));
  MemoryJournal journal;
  Fill(RichPolicy(4, 6), journal, clock, 5);
  Policy other = RichPolicy(5, 4);   // c4 is new; capacities lowered
  other.credentials.erase(other.credentials.begin() + 1);  // c1 gone
  other.credentials[0].features[0].limits[1].name = "min2";  // renamed
  other.credentials[1].features[0].limits[1].kind = LimitKind::kRolling;  // kind changed
  other.credentials[2].features = Rich(9);  // raised
  ExpectSameStart(other, journal, clock);
  // Never over: c0's day cap under the new policy is 12; it had granted some already.
  Started s = Start(other, journal, true, clock);
  ASSERT_OK(s.status);
}

// Was a bug: Restore ignored the records of credentials no longer configured. b (10 a day)
// grants 8 and the journal holds its reservation; the ledger restarts under a policy without b;
// a reload the same day configures b again, and b granted 10 more (18 in one day against 10),
// both ways of starting. Restore now keeps those records (Credential::unplaced) and the reload
// that brings b back restores them, as a restart with b configured would have.
TEST(CreateRestoredAttackTest, RecordsOfADroppedCredentialRestoredWhenItComesBack) {
  for (bool create_restored : {false, true}) {
    FakeClock clock(Utc(2026, 6, 1, 10));
    MemoryJournal journal;
    const Policy both = Caps({{"a", 10}, {"b", 10}});
    {
      ASSERT_OK_AND_ASSIGN(std::unique_ptr<Ledger> ledger,
                           Ledger::Create(both, &clock, LedgerOptions{.journal = &journal}));
      ASSERT_EQ(Grants(*ledger, "b", 8), 8);
    }
    const Policy only_a = Caps({{"a", 10}});
    absl::StatusOr<std::unique_ptr<Ledger>> l;
    if (create_restored) {
      l = Ledger::CreateRestored(only_a, &clock, LedgerOptions{.journal = &journal});
    } else {
      l = Ledger::Create(only_a, &clock, LedgerOptions{.journal = &journal});
      if (l.ok()) ASSERT_OK((*l)->Restore());
    }
    ASSERT_OK(l.status());
    ASSERT_OK((*l)->Reload(both));
    EXPECT_LE(Grants(**l, "b"), 2) << "b granted its daily 10 again after 8 (create_restored "
                                   << create_restored << ")";
  }
}

// ---- Records a restore could not place, restored by the reload that configures them again.

// A ledger under `policy` restored from `journal`, either way of starting.
std::unique_ptr<Ledger> Restarted(const Policy& policy, FakeClock& clock, Journal& journal,
                                  bool create_restored) {
  absl::StatusOr<std::unique_ptr<Ledger>> l;
  if (create_restored) {
    l = Ledger::CreateRestored(policy, &clock, LedgerOptions{.journal = &journal});
  } else {
    l = Ledger::Create(policy, &clock, LedgerOptions{.journal = &journal});
    if (l.ok()) {
      if (absl::Status s = (*l)->Restore(); !s.ok()) l = s;
    }
  }
  EXPECT_OK(l.status());
  return l.ok() ? *std::move(l) : nullptr;
}

Policy OneCredential(std::string name, std::vector<LimitSpec> limits) {
  Policy p;
  p.credentials.push_back(Credential(std::move(name), "p", {Feature("f", std::move(limits))}));
  return p;
}

// A limit (not the credential) removed by the policy a restart runs under and re-added by a
// reload the same day: its 8 of 10 still count, as in a ledger that never restarted (which
// keeps the removed limit's counter).
TEST(RestoreUnplacedTest, DroppedLimitReaddedAfterARestartKeepsItsCount) {
  const Policy both = OneCredential("a", {Calendar("day", 10, CalendarUnit::kDay),
                                          Calendar("hour", 100, CalendarUnit::kHour)});
  const Policy hour_only = OneCredential("a", {Calendar("hour", 100, CalendarUnit::kHour)});
  int in_process;
  {
    FakeClock clock(Utc(2026, 6, 1, 10));
    ASSERT_OK_AND_ASSIGN(std::unique_ptr<Ledger> ledger, Ledger::Create(both, &clock));
    ASSERT_EQ(Grants(*ledger, "a", 8), 8);
    ASSERT_OK(ledger->Reload(hour_only));
    ASSERT_OK(ledger->Reload(both));
    in_process = Grants(*ledger, "a");
  }
  EXPECT_EQ(in_process, 2);
  for (bool create_restored : {false, true}) {
    FakeClock clock(Utc(2026, 6, 1, 10));
    MemoryJournal journal;
    {
      ASSERT_OK_AND_ASSIGN(std::unique_ptr<Ledger> ledger,
                           Ledger::Create(both, &clock, LedgerOptions{.journal = &journal}));
      ASSERT_EQ(Grants(*ledger, "a", 8), 8);
    }
    std::unique_ptr<Ledger> l = Restarted(hour_only, clock, journal, create_restored);
    ASSERT_NE(l, nullptr);
    ASSERT_OK(l->Reload(both));
    EXPECT_LE(Grants(*l, "a"), in_process) << "create_restored " << create_restored;
  }
}

// b is dropped by the policy a restart runs under and comes back with its limit changed
// (capacity, kind, window). Coming back, it is exactly as strict as a restart under the policy
// that brings it back (the records are restored as that restart would have), and never looser
// than a ledger that never restarted where the journal is enough to tell: the same window shape
// keeps the 8 under the new capacity. (The stricter of old and new that a running ledger keeps
// for a raised capacity needs the old rule, which the journal does not hold: a plain restart
// under a changed file has the same limit. Another window shape: see the DISABLED test below.)
struct ChangedLimit {
  LimitSpec limit;
  bool same_shape;  // the records of a calendar day map onto it as they are
};

std::vector<ChangedLimit> ChangedLimits() {
  return {{Calendar("per_day", 20, CalendarUnit::kDay), true},
          {Calendar("per_day", 6, CalendarUnit::kDay), true},
          {Sliding("per_day", 10, absl::Hours(24)), true},
          {Rolling("per_day", 12, absl::Hours(24)), true},
          {Bucket("per_day", 1, absl::Hours(1), 10), false},
          {Calendar("per_day", 10, CalendarUnit::kHour), false}};
}

// What b grants in a ledger that never restarted: 8, a reload without b, a reload with `back`.
int InProcessGrants(const Policy& first, const Policy& only_a, const Policy& back) {
  FakeClock clock(Utc(2026, 6, 1, 10));
  absl::StatusOr<std::unique_ptr<Ledger>> ledger = Ledger::Create(first, &clock);
  EXPECT_OK(ledger.status());
  if (!ledger.ok()) return -1;
  EXPECT_EQ(Grants(**ledger, "b", 8), 8);
  clock.Advance(absl::Minutes(5));
  EXPECT_OK((*ledger)->Reload(only_a));
  clock.Advance(absl::Minutes(5));
  EXPECT_OK((*ledger)->Reload(back));
  return Grants(**ledger, "b");
}

TEST(RestoreUnplacedTest, ReaddedCredentialWithAChangedLimitAsStrictAsARestartWithIt) {
  const Policy first = Caps({{"a", 10}, {"b", 10}});
  const Policy only_a = Caps({{"a", 10}});
  for (const ChangedLimit& changed : ChangedLimits()) {
    const LimitSpec& limit = changed.limit;
    Policy back = only_a;
    back.credentials.push_back(Credential("b", "p", {Feature("f", {limit})}));
    const int in_process = InProcessGrants(first, only_a, back);
    for (bool create_restored : {false, true}) {
      const std::string what = absl::StrCat("kind ", static_cast<int>(limit.kind), " capacity ",
                                            limit.capacity, " create_restored ", create_restored);
      FakeClock clock(Utc(2026, 6, 1, 10));
      MemoryJournal journal;
      {
        ASSERT_OK_AND_ASSIGN(std::unique_ptr<Ledger> ledger,
                             Ledger::Create(first, &clock, LedgerOptions{.journal = &journal}));
        ASSERT_EQ(Grants(*ledger, "b", 8), 8);
      }
      clock.Advance(absl::Minutes(5));
      std::unique_ptr<MemoryJournal> copy = CopyOf(journal);
      std::unique_ptr<Ledger> dropped = Restarted(only_a, clock, journal, create_restored);
      ASSERT_NE(dropped, nullptr);
      clock.Advance(absl::Minutes(5));
      ASSERT_OK(dropped->Reload(back));
      std::unique_ptr<Ledger> direct = Restarted(back, clock, *copy, create_restored);
      ASSERT_NE(direct, nullptr);
      const int granted = Grants(*dropped, "b");
      EXPECT_EQ(granted, Grants(*direct, "b")) << what;
      if (changed.same_shape) {
        EXPECT_LE(granted, std::max<int64_t>(0, limit.capacity - 8)) << what;
        if (limit.capacity <= 10) EXPECT_LE(granted, in_process) << what;
      }
    }
  }
}

// BUG (not of the drop: a plain restart does the same; the fix belongs in Counter::Restore,
// service/core/limits*.cc): a restart under a policy that changed a limit's window shape
// (a calendar day become an hour, or a token bucket) forgets the units the journal holds for
// it: b grants 8 at 10:00, restarts at 10:05 with 10 an hour (or a bucket of 10) and grants 10
// more in the same hour: 18 against 10. A running ledger's reload carries them (2 more).
TEST(RestoreUnplacedTest, DISABLED_Bug_RestartUnderAnotherWindowShapeForgetsTheUnits) {
  const Policy first = Caps({{"a", 10}, {"b", 10}});
  const Policy only_a = Caps({{"a", 10}});
  for (const ChangedLimit& changed : ChangedLimits()) {
    Policy back = only_a;
    back.credentials.push_back(Credential("b", "p", {Feature("f", {changed.limit})}));
    const int in_process = InProcessGrants(first, only_a, back);
    FakeClock clock(Utc(2026, 6, 1, 10));
    MemoryJournal journal;
    {
      ASSERT_OK_AND_ASSIGN(std::unique_ptr<Ledger> ledger,
                           Ledger::Create(first, &clock, LedgerOptions{.journal = &journal}));
      ASSERT_EQ(Grants(*ledger, "b", 8), 8);
    }
    clock.Advance(absl::Minutes(10));
    std::unique_ptr<Ledger> direct = Restarted(back, clock, journal, false);
    ASSERT_NE(direct, nullptr);
    EXPECT_LE(Grants(*direct, "b"), std::max<int64_t>(in_process, changed.limit.capacity - 8))
        << "kind " << static_cast<int>(changed.limit.kind);
  }
}

// Records whose end passed while their credential was dropped are not applied: b comes back the
// next day, under a 48-hour sliding limit (which would count yesterday's 8 if they were), and
// grants its 10, as a ledger that never restarted does.
TEST(RestoreUnplacedTest, RecordsThatEndedWhileDroppedAreNotApplied) {
  const Policy first = Caps({{"a", 10}, {"b", 10}});
  const Policy only_a = Caps({{"a", 10}});
  for (const LimitSpec& limit :
       {Calendar("per_day", 10, CalendarUnit::kDay), Sliding("per_day", 10, absl::Hours(48))}) {
    Policy back = only_a;
    back.credentials.push_back(Credential("b", "p", {Feature("f", {limit})}));
    int in_process;
    {
      FakeClock clock(Utc(2026, 6, 1, 22));
      ASSERT_OK_AND_ASSIGN(std::unique_ptr<Ledger> ledger, Ledger::Create(first, &clock));
      ASSERT_EQ(Grants(*ledger, "b", 8), 8);
      ASSERT_OK(ledger->Reload(only_a));
      clock.Advance(absl::Hours(3));  // the next day
      ASSERT_OK(ledger->Reload(back));
      in_process = Grants(*ledger, "b");
    }
    EXPECT_EQ(in_process, 10);
    for (bool create_restored : {false, true}) {
      FakeClock clock(Utc(2026, 6, 1, 22));
      MemoryJournal journal;
      {
        ASSERT_OK_AND_ASSIGN(std::unique_ptr<Ledger> ledger,
                             Ledger::Create(first, &clock, LedgerOptions{.journal = &journal}));
        ASSERT_EQ(Grants(*ledger, "b", 8), 8);
      }
      std::unique_ptr<Ledger> l = Restarted(only_a, clock, journal, create_restored);
      ASSERT_NE(l, nullptr);
      clock.Advance(absl::Hours(3));
      ASSERT_OK(l->Reload(back));
      EXPECT_EQ(Grants(*l, "b"), in_process)
          << "kind " << static_cast<int>(limit.kind) << " create_restored " << create_restored;
    }
  }
}

// A second restart while b is still dropped: the journal still has b's records (nothing
// dropped them), so the reload after it restores them too.
TEST(RestoreUnplacedTest, SecondRestartWhileStillDroppedKeepsThem) {
  const Policy both = Caps({{"a", 10}, {"b", 10}});
  const Policy only_a = Caps({{"a", 10}});
  for (bool create_restored : {false, true}) {
    FakeClock clock(Utc(2026, 6, 1, 10));
    MemoryJournal journal;
    {
      ASSERT_OK_AND_ASSIGN(std::unique_ptr<Ledger> ledger,
                           Ledger::Create(both, &clock, LedgerOptions{.journal = &journal}));
      ASSERT_EQ(Grants(*ledger, "b", 8), 8);
    }
    {
      std::unique_ptr<Ledger> l = Restarted(only_a, clock, journal, create_restored);
      ASSERT_NE(l, nullptr);
      ASSERT_EQ(Grants(*l, "a", 3), 3);
      clock.Advance(absl::Minutes(10));
    }
    std::unique_ptr<Ledger> l = Restarted(only_a, clock, journal, !create_restored);
    ASSERT_NE(l, nullptr);
    ASSERT_OK(l->Reload(both));
    EXPECT_LE(Grants(*l, "b"), 2) << "create_restored " << create_restored;
    EXPECT_LE(Grants(*l, "a"), 7);
  }
}

// A lease of a dropped credential still holds its slot when the credential comes back (as in a
// ledger that never restarted, whose lease table keeps it).
TEST(RestoreUnplacedTest, LeaseOfADroppedCredentialHoldsItsSlotWhenItComesBack) {
  const Policy both = [] {
    Policy p = Caps({{"a", 10}});
    p.credentials.push_back(Credential("b", "p", {Feature("f", {Concurrency("k", 2)})}));
    return p;
  }();
  const Policy only_a = Caps({{"a", 10}});
  for (bool create_restored : {false, true}) {
    FakeClock clock(Utc(2026, 6, 1, 10));
    MemoryJournal journal;
    {
      ASSERT_OK_AND_ASSIGN(std::unique_ptr<Ledger> ledger,
                           Ledger::Create(both, &clock, LedgerOptions{.journal = &journal}));
      ASSERT_OK_AND_ASSIGN(Decision d, ledger->Acquire(AcquireRequest{
                                           .credential = "b", .feature = "f", .cost = 1,
                                           .lease_ttl = absl::Minutes(30)}));
      ASSERT_TRUE(d.granted);
    }
    std::unique_ptr<Ledger> l = Restarted(only_a, clock, journal, create_restored);
    ASSERT_NE(l, nullptr);
    ASSERT_OK(l->Reload(both));
    EXPECT_EQ(l->Leases("b").size(), 1u) << "create_restored " << create_restored;
    EXPECT_EQ(Grants(*l, "b"), 1) << "create_restored " << create_restored;
  }
}

// Corrupt records: unparsable lease ids, unknown credentials, features and limits, token lists
// of the wrong length, negative units, expired and far-future times, duplicates. Both ways of
// starting must agree (both refuse, or both give the same ledger).
TEST(CreateRestoredAttackTest, CorruptJournalGivesTheSameResultEitherWay) {
  FakeClock clock(Utc(2026, 6, 1, 10));
  const int64_t now = absl::ToUnixNanos(clock.Now());
  MemoryJournal good;
  const Policy p = RichPolicy(2, 6);
  Fill(p, good, clock, 4);
  ASSERT_OK_AND_ASSIGN(JournalState state, good.Load());
  ASSERT_FALSE(state.leases.empty());
  JournalState bad = state;
  bad.leases.push_back(JournalLease{.id = "not-a-lease-id", .credential = "c0", .feature = "f",
                                    .cost = 3, .granted_ns = now, .expiry_ns = now + 1'000'000'000'000});
  JournalLease wrong_tokens = state.leases[0];
  wrong_tokens.tokens.resize(wrong_tokens.tokens.size() + 5, 42);
  bad.leases.push_back(wrong_tokens);
  JournalLease unknown_feature = state.leases[1 % state.leases.size()];
  unknown_feature.feature = "nope";
  bad.leases.push_back(unknown_feature);
  JournalLease unknown_cred = state.leases[0];
  unknown_cred.credential = "gone";
  bad.leases.push_back(unknown_cred);
  bad.reservations.push_back(Reservation{{"gone", "f.day", ""}, now, now + 1000, 5});
  bad.reservations.push_back(Reservation{{"c0", "f.nope", ""}, now, now + 1000, 5});
  bad.reservations.push_back(Reservation{{"c0", "f.day", ""}, now - 1, now + 1'000'000'000'000, -7});
  bad.reservations.push_back(
      Reservation{{"c1", "f.min", ""}, now - 5'000'000'000, std::numeric_limits<int64_t>::max(), 3});
  bad.reservations.push_back(Reservation{{"c1", "f.b", ""}, now, now + 10, 1LL << 62});
  bad.cooldowns.push_back(JournalCooldown{"c0", "nope", now + 1'000'000'000});
  bad.cooldowns.push_back(JournalCooldown{"gone", "f", now + 1'000'000'000});
  bad.outside.push_back(JournalOutside{"c1", "f.nope", 5000, now, now + 10, 2, now + 1'000'000'000});
  FixedStateJournal a(bad);
  FixedStateJournal b(bad);
  Started x = Start(p, a, false, clock);
  Started y = Start(p, b, true, clock);
  EXPECT_EQ(x.status, y.status);
  EXPECT_EQ(x.state, y.state);
  EXPECT_EQ(x.then, y.then);
}

// Many credentials: the journal is read while thousands compile. Each round compares the two.
TEST(CreateRestoredAttackTest, ManyCredentialsReadWhileCompiling) {
  FakeClock clock(Utc(2026, 6, 1, 10));
  MemoryJournal journal;
  Policy p;
  for (int i = 0; i < 3000; ++i) {
    // Runs of the same features (shared versions) broken by others.
    p.credentials.push_back(Credential(absl::StrCat("c", i), absl::StrCat("p", i % 3),
                                       {Feature("f", {Calendar("day", 5 + i % 4, CalendarUnit::kDay),
                                                      Concurrency("k", 2)})}));
  }
  {
    ASSERT_OK_AND_ASSIGN(std::unique_ptr<Ledger> ledger,
                         Ledger::Create(p, &clock, LedgerOptions{.journal = &journal}));
    for (int i = 0; i < 3000; i += 7) {
      ASSERT_OK(ledger->Acquire(AcquireRequest{.credential = absl::StrCat("c", i), .feature = "f",
                                               .cost = 1 + i % 2, .lease_ttl = absl::Hours(1)})
                    .status());
    }
  }
  std::string first;
  for (int round = 0; round < 3; ++round) {
    absl::StatusOr<std::unique_ptr<Ledger>> l =
        Ledger::CreateRestored(p, &clock, LedgerOptions{.journal = &journal});
    ASSERT_OK(l.status());
    std::string d = Describe(**l);
    if (round == 0) {
      absl::StatusOr<std::unique_ptr<Ledger>> r =
          Ledger::Create(p, &clock, LedgerOptions{.journal = &journal});
      ASSERT_OK(r.status());
      ASSERT_OK((*r)->Restore());
      first = Describe(**r);
    }
    EXPECT_EQ(d, first) << "round " << round;
  }
  EXPECT_THAT(first, HasSubstr("c2996 lease"));
}

}  // namespace
}  // namespace quotad
