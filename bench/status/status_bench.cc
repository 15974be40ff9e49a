// Renders the status page (snapshot + HTML, and the /api/usage JSON) for many credentials and
// prints the time and memory it takes.
//
//   build/bench/status/status_bench [--credentials=1000] [--rounds=20] [--max_ms=N --max_mb=N]
//
// Each credential has the shape of a real key: a feature with a per-minute sliding window and
// calendar day and month limits, a scoped sliding limit with 3 scopes, a concurrency feature;
// every credential has used units, 2 live leases, and every 10th a cooldown. With --max_ms /
// --max_mb it exits 1 when the median render or the peak memory growth is above them (CTest).

#include <sys/resource.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "service/core/clock.h"
#include "service/core/ledger.h"
#include "service/core/policy.h"
#include "service/server/status_page.h"

namespace {

long PeakRssKb() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_maxrss;
}

long FlagOr(int argc, char** argv, const char* name, long fallback) {
  const std::string prefix = absl::StrCat("--", name, "=");
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], prefix.c_str(), prefix.size()) == 0) {
      return std::atol(argv[i] + prefix.size());
    }
  }
  return fallback;
}

quotad::Policy MakePolicy(int n) {
  using quotad::LimitKind;
  quotad::Policy p;
  for (int i = 0; i < n; ++i) {
    quotad::CredentialSpec c;
    c.name = absl::StrCat("vendor", i % 17, "/key-", i);
    c.profile = "bench-profile";
    quotad::FeatureSpec req;
    req.name = "requests";
    req.limits.push_back({.name = "per_minute", .kind = LimitKind::kSliding, .capacity = 240,
                          .period = absl::Minutes(1), .sub_buckets = 12});
    req.limits.push_back({.name = "per_day", .kind = LimitKind::kCalendar, .capacity = 20000,
                          .unit = quotad::CalendarUnit::kDay});
    req.limits.push_back({.name = "per_month", .kind = LimitKind::kCalendar, .capacity = 500000,
                          .unit = quotad::CalendarUnit::kMonth});
    req.limits.push_back({.name = "per_project", .kind = LimitKind::kSliding, .capacity = 100,
                          .period = absl::Hours(1), .sub_buckets = 6, .scoped = true});
    quotad::FeatureSpec jobs;
    jobs.name = "jobs";
    jobs.limits.push_back({.name = "slots", .kind = LimitKind::kConcurrency, .capacity = 8});
    c.features = {req, jobs};
    p.credentials.push_back(std::move(c));
  }
  return p;
}

}  // namespace

int main(int argc, char** argv) {
  const int n = static_cast<int>(FlagOr(argc, argv, "credentials", 1000));
  const int rounds = static_cast<int>(FlagOr(argc, argv, "rounds", 20));
  const long max_ms = FlagOr(argc, argv, "max_ms", 0);
  const long max_mb = FlagOr(argc, argv, "max_mb", 0);

  quotad::FakeClock clock;
  auto ledger = quotad::Ledger::Create(MakePolicy(n), &clock);
  if (!ledger.ok()) {
    std::fprintf(stderr, "ledger: %s\n", std::string(ledger.status().message()).c_str());
    return 2;
  }
  quotad::ThrottleLog throttles;
  const quotad::Policy policy = (*ledger)->policy();
  for (int i = 0; i < n; ++i) {
    const std::string& name = policy.credentials[i].name;
    for (int s = 0; s < 3; ++s) {
      const std::string scope = absl::StrCat("project-", s);
      for (int k = 0; k < 1 + (i + s) % 20; ++k) {
        (void)(*ledger)->Acquire({.credential = name, .feature = "requests", .scope = scope,
                                  .lease_ttl = absl::Seconds(1), .holder = "bench"});
      }
    }
    for (int k = 0; k < 2; ++k) {
      (void)(*ledger)->Acquire({.credential = name, .feature = "jobs",
                                .lease_ttl = absl::Minutes(10),
                                .holder = absl::StrCat("worker-", k, "<b>")});
    }
    if (i % 10 == 0) {
      quotad::UpstreamAnswer a;
      a.credential = name;
      a.feature = "requests";
      a.http_status = 429;
      a.headers = {{"Retry-After", "60"}};
      (void)(*ledger)->Report(a);
      throttles.Record({name, "requests", 429, clock.Now(), clock.Now() + absl::Seconds(60)});
    }
  }
  clock.Advance(absl::Seconds(2));  // the 1 s request leases expire; the job leases stay

  const long rss_before_kb = PeakRssKb();
  std::vector<double> snapshot_ms, html_ms, json_ms;
  size_t html_bytes = 0, json_bytes = 0, leases = 0;
  for (int r = 0; r < rounds; ++r) {
    const absl::Time t0 = absl::Now();
    const quotad::StatusSnapshot s = quotad::TakeStatusSnapshot(**ledger, &throttles);
    const absl::Time t1 = absl::Now();
    const std::string html = quotad::RenderStatusHtml(s);
    const absl::Time t2 = absl::Now();
    const std::string json = quotad::RenderUsageJson(s);
    const absl::Time t3 = absl::Now();
    snapshot_ms.push_back(absl::ToDoubleMilliseconds(t1 - t0));
    html_ms.push_back(absl::ToDoubleMilliseconds(t2 - t1));
    json_ms.push_back(absl::ToDoubleMilliseconds(t3 - t2));
    html_bytes = html.size();
    json_bytes = json.size();
    leases = s.leases.size();
  }
  const long rss_after_kb = PeakRssKb();
  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  auto max = [](const std::vector<double>& v) { return *std::max_element(v.begin(), v.end()); };
  const double page_ms = median(snapshot_ms) + median(html_ms);
  const double growth_mb = static_cast<double>(rss_after_kb - rss_before_kb) / 1024.0;
  std::printf(
      "status page, %d credentials (%d limits+scopes each), %zu live leases, %d rounds\n"
      "  snapshot   median %8.2f ms  max %8.2f ms\n"
      "  html       median %8.2f ms  max %8.2f ms  %zu bytes\n"
      "  json       median %8.2f ms  max %8.2f ms  %zu bytes\n"
      "  page (snapshot + html) median %.2f ms\n"
      "  peak RSS %.1f MB before rendering, %.1f MB after (+%.1f MB)\n",
      n, 3 + 3 + 1, leases, rounds, median(snapshot_ms), max(snapshot_ms), median(html_ms),
      max(html_ms), html_bytes, median(json_ms), max(json_ms), json_bytes, page_ms,
      rss_before_kb / 1024.0, rss_after_kb / 1024.0, growth_mb);
  if (max_ms > 0 && page_ms > static_cast<double>(max_ms)) {
    std::printf("FAIL: median page render %.2f ms > %ld ms\n", page_ms, max_ms);
    return 1;
  }
  if (max_mb > 0 && growth_mb > static_cast<double>(max_mb)) {
    std::printf("FAIL: memory growth %.1f MB > %ld MB\n", growth_mb, max_mb);
    return 1;
  }
  return 0;
}
