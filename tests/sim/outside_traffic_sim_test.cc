// The provider simulator with traffic from outside quotad: another tool uses the same key and
// calls the provider model directly, so quotad sees it only in the headers of the answers its
// own workers get. Each provider runs twice over the same outside schedule: workers that do not
// Report (the provider throttles them whenever the outside tool took what quotad thought free)
// and workers that Report every answer to Ledger::Report.
//
// Utilization here is units charged to quotad's workers / (units an ideal client alone would
// have been allowed - units the provider charged to the outside tool in the same run).
//
// Run: ctest -R outside_traffic_sim_test -V   (or the binary, which prints the table).

#include <algorithm>
#include <iostream>
#include <map>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
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
constexpr uint64_t kSeed = 0x5eed'2026'0505ULL;

absl::Time Utc(int y, int m, int d, int hh = 0, int mm = 0, int ss = 0) {
  return absl::FromCivil(absl::CivilSecond(y, m, d, hh, mm, ss), absl::UTCTimeZone());
}

absl::Duration UniformMs(std::mt19937_64& rng, int lo, int hi) {
  return absl::Milliseconds(std::uniform_int_distribution<int>(lo, hi)(rng));
}

// Exponential gaps: a steady (Poisson) stream with the given mean gap.
std::function<absl::Duration(std::mt19937_64&)> Poisson(absl::Duration mean) {
  return [mean](std::mt19937_64& rng) {
    return absl::Nanoseconds(static_cast<int64_t>(
        std::exponential_distribution<double>(1.0)(rng) * absl::ToDoubleNanoseconds(mean)));
  };
}

std::vector<Report>& AllReports() {
  static auto* reports = new std::vector<Report>();
  return *reports;
}

class TablePrinter : public ::testing::Environment {
 public:
  void SetUp() override { std::cout << "policy: " << SimPolicySource() << "\n"; }
  void TearDown() override {
    if (AllReports().empty()) return;
    std::cout << "\n" << FormatOutsideTable(AllReports());
  }
};
const auto* const kPrinter = ::testing::AddGlobalTestEnvironment(new TablePrinter);

class OutsideTrafficSimTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_OK(SimPolicy()); }

  Report RunAndRecord(Scenario s, bool report_answers) {
    s.policy = &*SimPolicy();
    s.workers = kWorkers;
    s.seed = kSeed;
    s.report_answers = report_answers;
    Report r = sim::Run(s);
    AllReports().push_back(r);
    std::cout << FormatOutsideTable({r}) << "  outside sent " << r.outside_sent << ", throttled "
              << r.outside_throttled << "; reports " << r.reports << ", adopted "
              << r.reports_adopted << ", warnings " << r.report_warnings << "; denials "
              << r.denials << "\n";
    for (const auto& [rule, n] : r.throttles_by_rule) {
      std::cout << "  throttled by " << rule << ": " << n << "\n";
    }
    for (const auto& [limit, n] : r.denials_by_limit) {
      std::cout << "  denied by " << limit << ": " << n << " times, workers waited "
                << absl::FormatDuration(r.waited_by_limit[limit]) << "\n";
    }
    for (const std::string& t : r.throttle_samples) std::cout << "  " << t << "\n";
    for (const std::string& w : r.warning_samples) std::cout << "  warning " << w << "\n";
    return r;
  }

  static void ExpectSound(const Report& r) {
    EXPECT_TRUE(r.errors.empty()) << absl::StrJoin(r.errors, "\n");
    EXPECT_EQ(r.report_warnings, 0) << absl::StrJoin(r.warning_samples, "\n");
    EXPECT_LE(r.units_charged + r.outside_charged, r.units_allowed);
    EXPECT_GT(r.outside_charged, 0);
  }
};

// CyberVault Professional, 4 hours (the daily cap is not reached): the outside tool sends 20% of
// the tier's 300 per minute (a Poisson stream of 60 a minute on the generic endpoint). quotad's
// workers run the mix of provider_sim_test.
struct Mix {
  int requests, incidents_read, reports_generate, auth_login, threats_scan;  // percent
};
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

Scenario CyberVaultProfessional() {
  Scenario s;
  s.name = "cybervault-professional";
  s.credential = "cybervault/professional";
  s.upstream = [] { return CyberVault(kCyberVaultProfessional); };
  s.ideal_endpoints = {"requests"};
  s.start = Utc(2026, 3, 3);
  s.end = s.start + absl::Hours(4);
  s.next_job = [](int, std::mt19937_64& rng) { return CyberVaultJob(kProfessionalMix, rng); };
  s.renew = true;
  OutsideTraffic o;
  o.endpoint = "requests";
  o.share = 0.2;
  o.next_gap = Poisson(absl::Minutes(1) / 60);
  s.outside = o;
  return s;
}

// MetaDefender Cloud reputation family, 4 days: the outside tool is a daily job that looks up
// 1,000 hashes (25% of the 4,000 per 24 h), 10 ms apart, at 10:17 each day, the instant
// quotad's workers start: the two race for the window the first request opens.
Scenario MetaDefenderReputation() {
  Scenario s;
  s.name = "metadefender-cloud reputation";
  s.credential = "metadefender/sim";
  s.upstream = [] { return MetaDefenderCloud(); };
  s.ideal_endpoints = {"reputation"};
  s.start = Utc(2026, 3, 2, 10, 17);
  s.end = s.start + absl::Hours(4 * 24);
  s.next_job = [](int, std::mt19937_64& rng) {
    return Job{"reputation", "reputation", 1, 1, UniformMs(rng, 100, 1000)};
  };
  OutsideTraffic o;
  o.endpoint = "reputation";
  o.share = 0.25;
  o.first = absl::ZeroDuration();
  o.burst = 1000;
  o.burst_spacing = absl::Milliseconds(10);
  o.next_gap = [](std::mt19937_64&) { return absl::Hours(24) - absl::Milliseconds(10) * 999; };
  s.outside = o;
  return s;
}

// MediaSilo, 2 days, windows anchored at :17:23 (unknown to quotad): a steady 10% (1,000 an
// hour).
Scenario MediaSiloScenario() {
  Scenario s;
  s.name = "mediasilo (anchor :17:23)";
  s.credential = "mediasilo/sim";
  s.start = Utc(2026, 3, 2, 0, 5);
  s.end = s.start + absl::Hours(2 * 24);
  const absl::Time anchor = Utc(2026, 3, 2, 0, 17, 23);
  s.upstream = [anchor] { return MediaSilo(anchor); };
  s.ideal_endpoints = {"requests"};
  s.next_job = [](int, std::mt19937_64& rng) {
    return Job{"requests", "requests", 1, 1, UniformMs(rng, 50, 500)};
  };
  OutsideTraffic o;
  o.endpoint = "requests";
  o.share = 0.1;
  o.next_gap = Poisson(absl::Hours(1) / 1000);
  s.outside = o;
  return s;
}

// VirusTotal Public, one week: the outside tool is a daily job that looks up 100 hashes (20% of
// the daily 500) at 00:00 UTC, one every 15 s as VirusTotal advises: alone it would never be
// throttled, but it shares the 4 per minute with quotad's workers for its first 25 minutes.
Scenario VirusTotalScenario() {
  Scenario s;
  s.name = "virustotal-public";
  s.credential = "virustotal/sim";
  s.upstream = [] { return VirusTotalPublic(); };
  s.ideal_endpoints = {"requests"};
  s.start = Utc(2026, 1, 1);
  s.end = s.start + absl::Hours(7 * 24);
  s.next_job = [](int, std::mt19937_64& rng) {
    return Job{"requests", "requests", 1, 1, UniformMs(rng, 200, 2000)};
  };
  OutsideTraffic o;
  o.endpoint = "requests";
  o.share = 0.2;
  o.first = absl::ZeroDuration();
  o.burst = 100;
  o.burst_spacing = absl::Seconds(15);
  o.next_gap = [](std::mt19937_64&) { return absl::Hours(24) - absl::Seconds(15) * 99; };
  s.outside = o;
  return s;
}

// Most worker throttles within any one UTC day.
int64_t MaxThrottlesPerUtcDay(const Report& r) {
  std::map<absl::CivilDay, int64_t> per_day;
  for (absl::Time t : r.throttle_times) ++per_day[absl::ToCivilDay(t, absl::UTCTimeZone())];
  int64_t most = 0;
  for (const auto& [day, n] : per_day) most = std::max(most, n);
  return most;
}

// The promise with full headers: at most one throttle per provider window (the race the
// outside tool can win before any answer shows its units), and >= 99% of what it left.
// MetaDefender shows used/remaining/reset-in on every answer, 429 included.
TEST_F(OutsideTrafficSimTest, MetaDefenderReportLeavesOneThrottlePerWindow) {
  const Report off = RunAndRecord(MetaDefenderReputation(), false);
  const Report on = RunAndRecord(MetaDefenderReputation(), true);
  ExpectSound(off);
  ExpectSound(on);
  EXPECT_GT(off.throttles, 1000);  // each refund is granted again and throttled again
  // 4 days from 10:17 are 4 provider windows of 24 h.
  EXPECT_LE(on.throttles, 4) << absl::StrJoin(on.throttle_samples, "\n");
  for (size_t i = 1; i < on.throttle_times.size(); ++i) {
    EXPECT_GE(on.throttle_times[i] - on.throttle_times[i - 1], absl::Hours(24))
        << "two throttles in one 24 h window";
  }
  EXPECT_GE(on.utilization, 99.0);
}

// VirusTotal's 429 carries nothing, so Report can only cool the feature down (60 s, doubling
// while throttles repeat, starting over after any success); it never learns a count. Bound per
// UTC day: while the outside job shares the minute (25 minutes), each throttle starts a cooldown
// of at least 60 s and the in-flight successes reset the doubling: at most 26; after the day's
// cap nothing succeeds, so the cooldowns double: 60 s x (2^11 - 1) covers 24 h, at most 12.
// Total 38; without Report every throttled worker is throttled again after its 60 s back-off.
TEST_F(OutsideTrafficSimTest, VirusTotalReportCoolsDownWithoutHeaders) {
  const Report off = RunAndRecord(VirusTotalScenario(), false);
  const Report on = RunAndRecord(VirusTotalScenario(), true);
  ExpectSound(off);
  ExpectSound(on);
  EXPECT_GT(off.throttles, 1000);
  EXPECT_EQ(on.reports_adopted, 0);  // nothing to adopt
  EXPECT_LE(MaxThrottlesPerUtcDay(on), 38) << absl::StrJoin(on.throttle_samples, "\n");
  // The goal (>= 95% of what the outside job left). 98.65% now: quotad wins more of
  // the shared minutes than before (3,218 units against 2,810), so the outside job leaves more.
  EXPECT_GE(on.utilization, 95.0);
}

// CyberVault with and without Report; its promise is asserted below. MediaSilo: at most one
// throttle per provider hour.
TEST_F(OutsideTrafficSimTest, CyberVaultProfessional) {
  const Report off = RunAndRecord(CyberVaultProfessional(), false);
  const Report on = RunAndRecord(CyberVaultProfessional(), true);
  ExpectSound(off);
  ExpectSound(on);
  EXPECT_LT(on.throttles, off.throttles);
}

// A 420 carries X-RateLimit-Reset and no Retry-After: the feature cools down until that reset,
// and the units adopted from the headers leave at it. Ceiling: 48 of the 49 provider windows the
// span touches, 97.96% before outside traffic.
TEST_F(OutsideTrafficSimTest, MediaSilo) {
  const Report off = RunAndRecord(MediaSiloScenario(), false);
  const Report on = RunAndRecord(MediaSiloScenario(), true);
  ExpectSound(off);
  ExpectSound(on);
  EXPECT_LT(on.throttles, off.throttles);
  EXPECT_LE(on.throttles, 49);
  EXPECT_GE(on.utilization, 97.0);
}

// The table: each seed provider with an outside tool taking 10, 20 or 30% of its binding
// limit, steady (Poisson) or bursty (the same mean in bursts of 20), with the provider's headers
// on or stripped (status only), quotad's workers reporting every answer. Spans are short enough
// for a unit-test run (CyberVault 1 h, MediaSilo 6 h, VirusTotal and MetaDefender 2 days).
// Prints "throttles after the first minute" and utilization of the remainder; asserts what
// must hold everywhere (never over, sound reports) and that reporting never throttles more
// than not reporting; the goals (<= 1 throttle per limit per minute, >= 95%) are
// printed as met/missed: see the closing note of issue 17 for the figures.
struct MatrixCase {
  std::string provider;
  double share;
  bool bursty;
  bool headers;
};

Scenario MatrixScenario(const MatrixCase& c) {
  Scenario s;
  OutsideTraffic o;
  o.share = c.share;
  absl::Duration window;  // the binding window, to set the outside rate
  int64_t capacity = 0;
  const bool headers = c.headers;
  if (c.provider == "cybervault") {
    s = CyberVaultProfessional();
    s.end = s.start + absl::Hours(1);
    s.upstream = [headers] {
      auto up = CyberVault(kCyberVaultProfessional);
      if (!headers) up->set_header_style(HeaderStyle::kNone);
      return up;
    };
    window = absl::Minutes(1);
    capacity = 300;
  } else if (c.provider == "mediasilo") {
    s = MediaSiloScenario();
    s.end = s.start + absl::Hours(6);
    const absl::Time anchor = Utc(2026, 3, 2, 0, 17, 23);
    s.upstream = [anchor, headers] {
      auto up = MediaSilo(anchor);
      if (!headers) up->set_header_style(HeaderStyle::kNone);
      return up;
    };
    window = absl::Hours(1);
    capacity = 10000;
  } else if (c.provider == "virustotal") {
    s = VirusTotalScenario();
    s.end = s.start + absl::Hours(48);
    s.upstream = [headers] {
      auto up = VirusTotalPublic();
      if (!headers) up->set_header_style(HeaderStyle::kNone);
      return up;
    };
    window = absl::Hours(24);
    capacity = 500;
  } else {
    s = MetaDefenderReputation();
    s.end = s.start + absl::Hours(48);
    s.upstream = [headers] {
      auto up = MetaDefenderCloud();
      if (!headers) up->set_header_style(HeaderStyle::kNone);
      return up;
    };
    window = absl::Hours(24);
    capacity = 4000;
  }
  o.endpoint = s.outside->endpoint;
  const double per_window = c.share * static_cast<double>(capacity);
  o.first = absl::InfiniteDuration();
  if (c.bursty) {
    o.burst = 20;
    o.burst_spacing = absl::Milliseconds(50);
    o.next_gap = Poisson(window * (20.0 / per_window));
  } else {
    o.burst = 1;
    o.next_gap = Poisson(window / per_window);
  }
  s.outside = o;
  s.name = absl::StrCat(c.provider, c.bursty ? " bursty" : " steady",
                        c.headers ? " hdr" : " no-hdr");
  return s;
}

class OutsideMatrixTest : public OutsideTrafficSimTest,
                          public ::testing::WithParamInterface<MatrixCase> {};

TEST_P(OutsideMatrixTest, ReportingNeverOverAndThrottlesLess) {
  const MatrixCase c = GetParam();
  const Report off = RunAndRecord(MatrixScenario(c), false);
  const Report on = RunAndRecord(MatrixScenario(c), true);
  EXPECT_TRUE(on.errors.empty()) << absl::StrJoin(on.errors, "\n");
  EXPECT_LE(on.units_charged + on.outside_charged, on.units_allowed);
  EXPECT_LE(on.throttles, off.throttles);
  // Throttles after the first minute, in all and of the limit hit most.
  const absl::Time learnt = MatrixScenario(c).start + absl::Minutes(1);
  int64_t after_first_minute = 0;
  std::map<std::string, int64_t> by_rule;
  for (size_t i = 0; i < on.throttle_times.size(); ++i) {
    if (on.throttle_times[i] < learnt) continue;
    ++after_first_minute;
    ++by_rule[on.throttle_rules[i]];
  }
  int64_t worst = 0;
  std::string worst_rule = "-";
  for (const auto& [rule, n] : by_rule) {
    if (n > worst) std::tie(worst, worst_rule) = std::tie(n, rule);
  }
  const double minutes = std::max(1.0, absl::ToDoubleMinutes(on.span) - 1);
  const double per_limit_per_min = static_cast<double>(worst) / minutes;
  std::cout << "MATRIX " << c.provider << " share=" << 100 * c.share << "% "
            << (c.bursty ? "bursty" : "steady") << " headers=" << (c.headers ? "on" : "off")
            << " throttles_after_1m=" << after_first_minute << " worst_limit=" << worst_rule
            << " per_limit_per_min=" << absl::StrFormat("%.3f", per_limit_per_min)
            << " util=" << absl::StrFormat("%.2f", on.utilization)
            << " (reporting off: throttles=" << off.throttles
            << " util=" << absl::StrFormat("%.2f", off.utilization) << ")"
            << (per_limit_per_min <= 1.0 ? "" : " MISSED-1/min")
            << (on.utilization >= 95.0 ? "" : " MISSED-95%") << "\n";
}

std::vector<MatrixCase> AllCases() {
  std::vector<MatrixCase> out;
  for (const char* p : {"cybervault", "mediasilo", "virustotal", "metadefender"}) {
    for (double share : {0.1, 0.2, 0.3}) {
      for (bool bursty : {false, true}) {
        for (bool headers : {true, false}) out.push_back({p, share, bursty, headers});
      }
    }
  }
  return out;
}

INSTANTIATE_TEST_SUITE_P(Seeds, OutsideMatrixTest, ::testing::ValuesIn(AllCases()),
                         [](const ::testing::TestParamInfo<MatrixCase>& i) {
                           return absl::StrCat(i.param.provider, "_",
                                               static_cast<int>(100 * i.param.share), "_",
                                               i.param.bursty ? "bursty" : "steady", "_",
                                               i.param.headers ? "headers" : "noheaders");
                         });

// A steady outside stream on CyberVault's sliding minute, 4 h. Before issue 17 nearly every unit
// the outside tool won cost quotad one 429 (7,963 throttles); then 135 throttles but 87.3%: an
// answer's count was compared with quotad's grants of the minute before the answer was seen, so
// the grants that had left the upstream's window while the call was out were adopted again as
// outside units, for a whole minute. Compared from one period before the request was sent
// (UpstreamAnswer::sent_at), each limit takes at most one throttle a minute (tier_per_minute
// 234, simultaneous 77 in 239 minutes) and quotad uses 98.6% of what the outside tool left.
TEST_F(OutsideTrafficSimTest, CyberVaultReportLeavesOneThrottlePerLimitPerMinute) {
  const Report on = RunAndRecord(CyberVaultProfessional(), true);
  ExpectSound(on);
  const double minutes = absl::ToDoubleMinutes(on.span) - 1;
  for (const auto& [rule, throttles] : on.throttles_by_rule) {
    EXPECT_LE(static_cast<double>(throttles), minutes) << rule;
  }
  EXPECT_GE(on.utilization, 98.0);
}

}  // namespace
}  // namespace quotad::sim
