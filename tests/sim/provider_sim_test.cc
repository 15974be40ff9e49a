// The provider simulator: 64 workers per provider share one credential through quotad's Ledger
// (policy from the shipped profiles) and call a model of the provider's own enforcement. Zero
// upstream throttles and at least 99% of what the provider would have allowed, or the test fails.
//
// Run: ctest -R provider_sim_test --output-on-failure   (or the binary itself, which prints the
// table).

#include <iostream>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/civil_time.h"
#include "gtest/gtest.h"
#include "tests/sim/sim_policy.h"
#include "tests/sim/simulator.h"
#include "tests/sim/upstream.h"
#include "tests/support/status_matchers.h"

namespace quotad::sim {
namespace {

constexpr int kWorkers = 64;
constexpr uint64_t kSeed = 0x5eed'2026'0101ULL;
constexpr double kMinUtilization = 99.0;

absl::Time Utc(int y, int m, int d, int hh = 0, int mm = 0, int ss = 0) {
  return absl::FromCivil(absl::CivilSecond(y, m, d, hh, mm, ss), absl::UTCTimeZone());
}

absl::Duration UniformMs(std::mt19937_64& rng, int lo, int hi) {
  return absl::Milliseconds(std::uniform_int_distribution<int>(lo, hi)(rng));
}

// Every report, printed together when the program ends.
std::vector<Report>& AllReports() {
  static auto* reports = new std::vector<Report>();
  return *reports;
}

class TablePrinter : public ::testing::Environment {
 public:
  void SetUp() override { std::cout << "policy: " << SimPolicySource() << "\n"; }
  void TearDown() override {
    if (AllReports().empty()) return;
    std::cout << "\n" << FormatTable(AllReports());
  }
};
const auto* const kPrinter = ::testing::AddGlobalTestEnvironment(new TablePrinter);

class ProviderSimTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_OK(SimPolicy()); }

  Report RunAndRecord(Scenario s) {
    s.policy = &*SimPolicy();
    s.workers = kWorkers;
    s.seed = kSeed;
    Report r = sim::Run(s);
    AllReports().push_back(r);
    std::cout << FormatTable({r}) << "  denials " << r.denials << ", expired releases "
              << r.expired_releases << ", provider max in flight " << r.max_in_flight << "\n";
    for (const auto& [limit, n] : r.denials_by_limit) {
      std::cout << "  denied by " << limit << ": " << n << " times, workers waited "
                << absl::FormatDuration(r.waited_by_limit[limit]) << "\n";
    }
    return r;
  }

  // The main assertions: no engine errors, no upstream throttle, utilization >= 99%.
  static void ExpectPromiseKept(const Report& r) {
    EXPECT_TRUE(r.errors.empty()) << absl::StrJoin(r.errors, "\n");
    EXPECT_EQ(r.throttles, 0) << "first throttles:\n" << absl::StrJoin(r.throttle_samples, "\n");
    EXPECT_GE(r.utilization, kMinUtilization)
        << r.units_charged << " of " << r.units_allowed << " units";
    EXPECT_LE(r.units_charged, r.units_allowed);
  }
};

// A canonical text of a policy, one limit per line, for comparing two policies.
std::string Describe(const Policy& policy) {
  std::string out;
  for (const CredentialSpec& c : policy.credentials) {
    for (const FeatureSpec& f : c.features) {
      absl::StrAppend(&out, c.name, " (", c.profile, ") ", f.name, " draws_on=[",
                      absl::StrJoin(f.draws_on, ","),
                      "] ttl=", absl::FormatDuration(f.default_lease_ttl), "/",
                      absl::FormatDuration(f.max_lease_ttl), "\n");
      for (const LimitSpec& l : f.limits) {
        absl::StrAppend(&out, "  ", l.name, " ", LimitKindName(l.kind), " cap=", l.capacity,
                        " period=", absl::FormatDuration(l.period), " rate=", l.rate,
                        " unit=", CalendarUnitName(l.unit), " zone=", l.zone_name,
                        " sub_buckets=", l.sub_buckets, " scoped=", l.scoped, "\n");
      }
    }
  }
  return out;
}

// The shipped profiles the simulation runs are the presets of SPEC section 3.
TEST_F(ProviderSimTest, ShippedProfilesMatchSpecPresets) {
  EXPECT_EQ(Describe(*SimPolicy()), Describe(HandBuiltPolicy()));
}

// VirusTotal Public, 2026-01-01 to 2026-03-01: January has 31 days, so the 15,500 monthly cap
// is reached on the 31st (500 x 31); February stops at its 28 daily caps.
TEST_F(ProviderSimTest, VirusTotalPublicTwoMonths) {
  Scenario s;
  s.name = "virustotal-public";
  s.credential = "virustotal/sim";
  s.upstream = [] { return VirusTotalPublic(); };
  s.ideal_endpoints = {"requests"};
  s.start = Utc(2026, 1, 1);
  s.end = Utc(2026, 3, 1);
  s.next_job = [](int, std::mt19937_64& rng) {
    return Job{"requests", "requests", 1, 1, UniformMs(rng, 200, 2000)};
  };
  const Report r = RunAndRecord(s);
  ExpectPromiseKept(r);
  EXPECT_EQ(r.units_allowed, 15500 + 28 * 500);  // analytic check of the ideal client
}

// MetaDefender Cloud, 4 days from 10:17 UTC: 56 workers on the reputation family (70% single
// lookups, 30% bulk lookups of 2-20 hashes, where the provider charges only found, distinct
// hashes: the worker acquires the batch and releases with the count charged), 8 on prevention
// (file scans of 5-30 s).
TEST_F(ProviderSimTest, MetaDefenderCloudFourDays) {
  Scenario s;
  s.name = "metadefender-cloud";
  s.credential = "metadefender/sim";
  s.upstream = [] { return MetaDefenderCloud(); };
  s.ideal_endpoints = {"reputation", "prevention"};
  s.start = Utc(2026, 3, 2, 10, 17);
  s.end = s.start + absl::Hours(4 * 24);
  s.next_job = [](int worker, std::mt19937_64& rng) {
    if (worker % 8 == 7) {
      return Job{"prevention", "prevention", 1, 1, UniformMs(rng, 5000, 30000)};
    }
    if (std::uniform_int_distribution<int>(0, 9)(rng) < 7) {
      return Job{"reputation", "reputation", 1, 1, UniformMs(rng, 100, 1000)};
    }
    const int64_t batch = std::uniform_int_distribution<int>(2, 20)(rng);
    int64_t charged = 0;
    std::uniform_int_distribution<int> percent(0, 99);
    for (int64_t i = 0; i < batch; ++i) {
      const bool found = percent(rng) < 70;
      const bool duplicate = i > 0 && percent(rng) < 10;  // free within one request
      if (found && !duplicate) ++charged;
    }
    return Job{"reputation", "reputation", batch, charged, UniformMs(rng, 200, 3000)};
  };
  const Report r = RunAndRecord(s);
  ExpectPromiseKept(r);
  EXPECT_EQ(r.units_allowed, 4 * (4000 + 100));
}

// MediaSilo, 7 days: the provider's hourly windows start at 17 min 23 s past the hour, which
// quotad does not know; its sliding hour satisfies any anchor. Analytically, a sliding hour can
// use at most N of the N + 1 provider windows a span of N unaligned hours touches: 168/169 =
// 99.41% here (and under 99% for spans under 100 hours).
TEST_F(ProviderSimTest, MediaSiloSevenDaysUnknownAnchor) {
  Scenario s;
  s.name = "mediasilo (anchor :17:23)";
  s.credential = "mediasilo/sim";
  s.start = Utc(2026, 3, 2, 0, 5);
  s.end = s.start + absl::Hours(7 * 24);
  const absl::Time anchor = Utc(2026, 3, 2, 0, 17, 23);
  s.upstream = [anchor] { return MediaSilo(anchor); };
  s.ideal_endpoints = {"requests"};
  s.next_job = [](int, std::mt19937_64& rng) {
    return Job{"requests", "requests", 1, 1, UniformMs(rng, 50, 500)};
  };
  const Report r = RunAndRecord(s);
  ExpectPromiseKept(r);
  EXPECT_EQ(r.units_allowed, 169 * 10000);
}

// CyberVault: a mix of endpoint classes; report generation takes up to 45 s, longer than the
// 30 s lease, so workers renew while in flight. Every request holds one of the tier's
// simultaneous slots from the grant until its answer.
//
// A worker keeps its job until it is granted, so an endpoint whose share of the demand exceeds
// its override (e.g. 10% threats_scan at 300/min is 30/min against 5/min) would stall the pool
// and the tier limits could not be reached by this workload at all. The mix of each tier is
// therefore chosen so that the tier's limits bind, as in the ideal client's denominator; the
// overrides still deny the bursts.
struct Mix {
  int requests, incidents_read, reports_generate, auth_login, threats_scan;  // percent
};
// At 60/min: 6 threats_scan/min against 5, 9 reports against 20: the overrides deny often.
constexpr Mix kStarterMix{45, 25, 15, 5, 10};
// At 300/min: 90 incidents_read of 120, 15 reports of 20, 6 auth_login of 10, 3 threats_scan of 5.
constexpr Mix kProfessionalMix{62, 30, 5, 2, 1};

Job CyberVaultJob(const Mix& mix, std::mt19937_64& rng) {
  int p = std::uniform_int_distribution<int>(0, 99)(rng);
  if ((p -= mix.requests) < 0) return Job{"requests", "requests", 1, 1, UniformMs(rng, 80, 800)};
  if ((p -= mix.incidents_read) < 0) {
    return Job{"incidents_read", "incidents_read", 1, 1, UniformMs(rng, 50, 400)};
  }
  if ((p -= mix.reports_generate) < 0) {
    return Job{"reports_generate", "reports_generate", 1, 1, UniformMs(rng, 2000, 45000)};
  }
  if ((p -= mix.auth_login) < 0)
    return Job{"auth_login", "auth_login", 1, 1, UniformMs(rng, 100, 300)};
  return Job{"threats_scan", "threats_scan", 1, 1, UniformMs(rng, 300, 2000)};
}

Scenario CyberVaultScenario(const CyberVaultTier& tier, const Mix& mix, std::string credential,
                            int days) {
  Scenario s;
  s.name = "cybervault-" + tier.name;
  s.credential = std::move(credential);
  s.upstream = [tier] { return CyberVault(tier); };
  s.ideal_endpoints = {"requests"};
  s.start = Utc(2026, 3, 2, 9, 30);
  s.end = s.start + absl::Hours(days * 24);
  s.next_job = [mix](int, std::mt19937_64& rng) { return CyberVaultJob(mix, rng); };
  s.renew = true;
  return s;
}

// 3 days from 09:30 UTC touch 4 UTC days, each capped at the daily limit.
TEST_F(ProviderSimTest, CyberVaultStarterThreeDays) {
  const Report r =
      RunAndRecord(CyberVaultScenario(kCyberVaultStarter, kStarterMix, "cybervault/starter", 3));
  ExpectPromiseKept(r);
  EXPECT_EQ(r.units_allowed, 4 * 10000);
  EXPECT_LE(r.max_in_flight, kCyberVaultStarter.simultaneous);
}

TEST_F(ProviderSimTest, CyberVaultProfessionalThreeDays) {
  const Report r = RunAndRecord(
      CyberVaultScenario(kCyberVaultProfessional, kProfessionalMix, "cybervault/professional", 3));
  ExpectPromiseKept(r);
  EXPECT_EQ(r.units_allowed, 4 * 100000);
  EXPECT_LE(r.max_in_flight, kCyberVaultProfessional.simultaneous);
}

// MetaDefender's window opens at the first request the PROVIDER sees, quotad's at its first
// grant. Here every request reaches the provider a constant 50 ms after its grant.
Scenario MetaDefenderDelayed(std::string name,
                             std::function<absl::Duration(std::mt19937_64&)> delay) {
  Scenario s;
  s.name = std::move(name);
  s.credential = "metadefender/sim";
  s.upstream = [] { return MetaDefenderCloud(); };
  s.ideal_endpoints = {"reputation"};
  s.start = Utc(2026, 3, 2, 10, 17);
  s.end = s.start + absl::Hours(4 * 24);
  s.next_job = [](int, std::mt19937_64& rng) {
    return Job{"reputation", "reputation", 1, 1, UniformMs(rng, 100, 1000)};
  };
  s.network_delay = std::move(delay);
  return s;
}

TEST_F(ProviderSimTest, MetaDefenderRollingWindowWithConstantDelay) {
  const Report r =
      RunAndRecord(MetaDefenderDelayed("metadefender rolling, +50ms const",
                                       [](std::mt19937_64&) { return absl::Milliseconds(50); }));
  ExpectPromiseKept(r);
}

// With a delay that varies (10-90 ms, 10 days), the provider's window opens at the first request's
// ARRIVAL, which can be later than quotad's grant by more than a later request's delay. Without a
// margin quotad's window reopened while the provider's was still full (18 throttles in 10 days);
// the shipped rolling preset's `guard: 5s` keeps quotad's window open that much longer.
TEST_F(ProviderSimTest, MetaDefenderRollingWindowWithJitteredDelay) {
  Scenario s = MetaDefenderDelayed("metadefender rolling, +10-90ms", [](std::mt19937_64& rng) {
    return absl::Microseconds(std::uniform_int_distribution<int>(10000, 90000)(rng));
  });
  s.end = s.start + absl::Hours(10 * 24);
  const Report r = RunAndRecord(s);
  ExpectPromiseKept(r);
}

// The same 50 ms delay across a calendar boundary. Starting at 21:30 UTC, the starter tier's
// 10,000/day is not reached before midnight, so quotad grants up to 23:59:59.999; the requests
// granted in the last 50 ms arrive after 00:00 and the provider counts them in the new day.
// Without a guard quotad then filled the new day to 10,000 on its own and was throttled from
// 03:13 on the second day; the shipped `guard: 1s` (a charge in the last second of a day also
// counts in the next) keeps the promise. Utilization is ~96.5% of the ideal, and the same
// workload WITHOUT any delay reaches the same figure (28,010 of 29,000): in the first, partial
// evening the daily cap never binds, the per-minute limit and 10 concurrent jobs of the mix do,
// and the ideal (IdealUnits) sends one unit at a time with no job duration. So the bound kept
// here is the guard's own: at most what the per-minute limit lets through in one guard (60 units)
// lost per day boundary, against the undelayed run.
TEST_F(ProviderSimTest, CyberVaultDailyCapWithConstantDelayCostsOnlyTheGuard) {
  Scenario s = CyberVaultScenario(kCyberVaultStarter, kStarterMix, "cybervault/starter", 2);
  s.start = Utc(2026, 3, 2, 21, 30);
  s.end = s.start + absl::Hours(2 * 24);
  Scenario undelayed = s;
  undelayed.name = "cybervault-starter, 21:30, no delay";
  s.name = "cybervault-starter, 21:30, +50ms";
  s.network_delay = [](std::mt19937_64&) { return absl::Milliseconds(50); };
  const Report base = RunAndRecord(undelayed);
  const Report delayed = RunAndRecord(s);
  EXPECT_TRUE(delayed.errors.empty()) << absl::StrJoin(delayed.errors, "\n");
  EXPECT_EQ(base.throttles, 0);
  EXPECT_EQ(delayed.throttles, 0) << absl::StrJoin(delayed.throttle_samples, "\n");
  EXPECT_LE(delayed.units_charged, delayed.units_allowed);
  const int64_t boundaries = 2;  // midnights inside the run
  EXPECT_GE(delayed.units_charged, base.units_charged - boundaries * 60)
      << delayed.units_charged << " with the delay, " << base.units_charged << " without";
}

}  // namespace
}  // namespace quotad::sim
