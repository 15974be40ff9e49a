// The Ledger under concurrent callers: many threads hammer one credential with acquires and
// releases; whatever the interleaving, no window ever holds more than its capacity and no call
// fails unexpectedly. Time moves in phases on a fake clock, between barriers.

#include <atomic>
#include <random>
#include <thread>
#include <vector>

#include "absl/synchronization/barrier.h"
#include "absl/synchronization/mutex.h"
#include "gtest/gtest.h"
#include "service/core/clock.h"
#include "service/core/ledger.h"
#include "tests/support/policy_builders.h"
#include "tests/support/status_matchers.h"

namespace quotad {
namespace {

using testing::Calendar;
using testing::Concurrency;
using testing::Feature;
using testing::OneCredential;
using testing::Sliding;
using testing::Utc;

constexpr int kThreads = 8;
constexpr int kPhases = 240;  // one simulated second each
constexpr int kAttemptsPerPhase = 40;

TEST(LedgerRaceTest, ConcurrentAcquiresNeverOverGrantAnyWindow) {
  FeatureSpec f = Feature(
      "requests",
      {Sliding("per_10s", 37, absl::Seconds(10)), Sliding("per_minute", 150, absl::Minutes(1), 12),
       Calendar("per_minute_cal", 120, CalendarUnit::kMinute), Concurrency("concurrent", 20)});
  FeatureSpec scan = Feature("scan", {Sliding("per_10s", 9, absl::Seconds(10))});
  scan.draws_on = {"requests"};
  FakeClock clock(Utc(2026, 1, 1, 0, 0, 30));
  auto ledger = Ledger::Create(OneCredential("hot", {f, scan}), &clock);
  ASSERT_OK(ledger);

  std::vector<std::atomic<int>> granted(kPhases);  // per phase, both features
  std::vector<std::atomic<int>> scan_granted(kPhases);
  std::atomic<int> held{0};
  std::atomic<int> max_held{0};
  std::atomic<int> errors{0};
  absl::Barrier* start = new absl::Barrier(kThreads + 1);
  std::vector<absl::Barrier*> phase_done(kPhases);
  for (auto& b : phase_done) b = new absl::Barrier(kThreads + 1);
  std::vector<absl::Barrier*> phase_go(kPhases);
  for (auto& b : phase_go) b = new absl::Barrier(kThreads + 1);

  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(t);
      std::vector<LeaseId> mine;
      if (start->Block()) delete start;
      for (int phase = 0; phase < kPhases; ++phase) {
        if (phase_go[phase]->Block()) delete phase_go[phase];
        for (int i = 0; i < kAttemptsPerPhase; ++i) {
          if (!mine.empty() && rng() % 3 == 0) {
            held.fetch_sub(1);
            const size_t k = rng() % mine.size();
            auto r =
                (*ledger)->Release(mine[k], (rng() % 2) ? std::optional<int64_t>(1) : std::nullopt);
            if (!r.ok() && r.status().code() != absl::StatusCode::kNotFound) errors++;
            mine.erase(mine.begin() + k);
            continue;
          }
          const bool is_scan = rng() % 4 == 0;
          AcquireRequest req;
          req.credential = "hot";
          req.feature = is_scan ? "scan" : "requests";
          req.lease_ttl = absl::Seconds(5);
          req.want_limits = false;
          auto d = (*ledger)->Acquire(req);
          if (!d.ok()) {
            errors++;
            continue;
          }
          if (d->granted) {
            const int now_held = held.fetch_add(1) + 1;
            int prev = max_held.load();
            while (now_held > prev && !max_held.compare_exchange_weak(prev, now_held)) {
            }
            granted[phase]++;
            if (is_scan) scan_granted[phase]++;
            mine.push_back(d->lease_id);
          }
        }
        if (phase_done[phase]->Block()) delete phase_done[phase];
      }
    });
  }
  if (start->Block()) delete start;
  for (int phase = 0; phase < kPhases; ++phase) {
    if (phase_go[phase]->Block()) delete phase_go[phase];
    if (phase_done[phase]->Block()) delete phase_done[phase];
    clock.Advance(absl::Seconds(1));
  }
  for (auto& th : threads) th.join();

  EXPECT_EQ(errors.load(), 0);
  EXPECT_LE(max_held.load(), 20);
  // Every grant costs 1 and a release refunds cost - used = 0, so every grant stays charged.
  // Grants of phase p happen at second 30 + p.
  auto window_max = [](const std::vector<std::atomic<int>>& per_phase, int width) {
    int worst = 0;
    for (int p = 0; p + width <= kPhases; ++p) {
      int sum = 0;
      for (int q = p; q < p + width; ++q) sum += per_phase[q];
      worst = std::max(worst, sum);
    }
    return worst;
  };
  EXPECT_EQ(window_max(granted, 10), 37);  // reached, never passed
  EXPECT_EQ(window_max(scan_granted, 10), 9);
  EXPECT_LE(window_max(granted, 60), 150);
  for (int minute = 0; minute * 60 < kPhases + 30; ++minute) {
    int sum = 0;
    for (int p = std::max(0, minute * 60 - 30); p < std::min(kPhases, minute * 60 + 30); ++p) {
      sum += granted[p];
    }
    EXPECT_LE(sum, 120) << "minute " << minute;
  }
}

}  // namespace
}  // namespace quotad
