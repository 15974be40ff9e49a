// Decision cost of Ledger::Acquire on a 3-limit feature, with 1k and 1M credentials, one and
// two threads, random access; and the memory each (credential, limit) state takes.
//
//   build/bench/core/core_bench --benchmark_counters_tabular=true

#include <malloc.h>

#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "benchmark/benchmark.h"
#include "service/core/clock.h"
#include "service/core/ledger.h"
#include "service/core/limits.h"

namespace quotad {
namespace {

LimitSpec Limit(std::string name, LimitKind kind, int64_t capacity) {
  LimitSpec l;
  l.name = std::move(name);
  l.kind = kind;
  l.capacity = capacity;
  return l;
}

// `tight`: the VirusTotal public preset (sliding 4/min exact log, 500/day, 15,500/month), so
// most decisions past the first few are denials. Otherwise the same three kinds with room
// enough that every decision is a grant (and creates a lease).
Policy ManyCredentials(int n, bool tight) {
  FeatureSpec f;
  f.name = "requests";
  LimitSpec minute = Limit("per_minute", LimitKind::kSliding, tight ? 4 : 1'000'000'000);
  minute.period = absl::Minutes(1);
  minute.sub_buckets = tight ? 0 : 60;
  LimitSpec day = Limit("per_day", LimitKind::kCalendar, tight ? 500 : 1'000'000'000);
  day.unit = CalendarUnit::kDay;
  LimitSpec month = Limit("per_month", LimitKind::kCalendar, tight ? 15'500 : 1'000'000'000);
  month.unit = CalendarUnit::kMonth;
  f.limits = {minute, day, month};
  f.default_lease_ttl = absl::Seconds(1);
  Policy p;
  p.credentials.reserve(n);
  for (int i = 0; i < n; ++i) {
    CredentialSpec c;
    c.name = absl::StrCat("provider/key-", i);
    c.profile = "bench";
    c.features = {f};
    p.credentials.push_back(std::move(c));
  }
  return p;
}

struct Fixture {
  Fixture(int n, bool tight) : names(n) {
    for (int i = 0; i < n; ++i) names[i] = absl::StrCat("provider/key-", i);
    ledger = *Ledger::Create(ManyCredentials(n, tight), Clock::Real());
  }
  std::vector<std::string> names;
  std::unique_ptr<Ledger> ledger;
};

Fixture* GetFixture(int n, bool tight) {
  static auto* fixtures = new std::map<std::pair<int, bool>, std::unique_ptr<Fixture>>();
  static absl::Mutex mu;
  absl::MutexLock lock(&mu);
  auto& f = (*fixtures)[{n, tight}];
  if (f == nullptr) f = std::make_unique<Fixture>(n, tight);
  return f.get();
}

// `live`: about how many leases the lease table holds. 0: leases of 1 s swept every 1M grants
// (about a million live at this speed, as with a server granting 1M/s). Otherwise each lease
// lives 1 ms and the table is swept every `live` grants, so a grant's own work shows apart from
// the cache misses of a large table.
void BM_Acquire(benchmark::State& state) {
  const int n = static_cast<int>(state.range(0));
  const bool tight = state.range(1) != 0;
  const int64_t live = state.range(2);
  Fixture* fx = GetFixture(n, tight);
  std::mt19937_64 rng(state.thread_index() + 1);
  std::uniform_int_distribution<int> pick(0, n - 1);
  AcquireRequest req;
  req.feature = "requests";
  req.want_limits = false;
  if (live > 0) req.lease_ttl = absl::Milliseconds(1);
  const int64_t sweep_every = live > 0 ? live : int64_t{1} << 20;
  int64_t granted = 0;
  int64_t swept = 0;
  int64_t since_sweep = 0;
  for (auto _ : state) {
    req.credential = fx->names[pick(rng)];
    auto d = fx->ledger->Acquire(req);
    granted += d->granted;
    // Reclaim expired leases now and then, as the server's sweeper would.
    if (++since_sweep == sweep_every && state.thread_index() == 0) {
      since_sweep = 0;
      state.PauseTiming();
      swept += fx->ledger->Sweep();
      state.ResumeTiming();
    }
  }
  state.SetItemsProcessed(state.iterations());
  state.counters["granted%"] = 100.0 * granted / std::max<int64_t>(1, state.iterations());
}
BENCHMARK(BM_Acquire)
    ->ArgNames({"credentials", "tight", "live"})
    ->Args({1000, 1, 0})
    ->Args({1000, 0, 0})
    ->Args({1000, 0, 10000})
    ->Args({1000000, 1, 0})
    ->Args({1000000, 0, 0})
    ->Threads(1)
    ->Threads(2)
    ->UseRealTime();

// Heap bytes per credential (everything: names, tables, compiled policy shares, counters) and per
// (credential, limit) state, after every credential has been charged once so that each counter
// holds its state (the sliding log its first entry). `tight` has an exact sliding log; the other
// a 60-bucket sliding window (60 x 8 bytes of buckets).
void BM_MemoryPerState(benchmark::State& state) {
  const int n = static_cast<int>(state.range(0));
  const bool tight = state.range(1) != 0;
  for (auto _ : state) {
    const Policy policy = ManyCredentials(n, tight);
    malloc_trim(0);
    const size_t before = mallinfo2().uordblks;
    FakeClock clock;
    auto ledger = *Ledger::Create(policy, &clock);
    const size_t after_create = mallinfo2().uordblks;
    AcquireRequest req;
    req.feature = "requests";
    req.want_limits = false;
    for (int i = 0; i < n; ++i) {
      req.credential = policy.credentials[i].name;
      benchmark::DoNotOptimize(ledger->Acquire(req));
    }
    clock.Advance(absl::Seconds(2));  // every lease has expired
    ledger->Sweep();
    const size_t after_charged = mallinfo2().uordblks;
    state.counters["bytes/credential"] = static_cast<double>(after_charged - before) / n;
    // A (credential, limit) state: the Counter, its slot for scoped counters, and what charging
    // allocated (the exact sliding log's ring; nothing for calendar windows).
    state.counters["state_bytes"] =
        sizeof(Counter) + sizeof(absl::flat_hash_map<std::string, Counter>);
    state.counters["charged_extra/limit"] =
        static_cast<double>(after_charged - after_create) / n / 3;
    state.counters["policy_bytes/credential"] = static_cast<double>(after_create - before) / n;
  }
}
BENCHMARK(BM_MemoryPerState)
    ->ArgNames({"credentials", "tight"})
    ->Args({100000, 1})
    ->Args({100000, 0})
    ->Iterations(1)
    ->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace quotad

int main(int argc, char** argv) {
  // Debian's Abseil is built with deadlock detection on; production turns it off, and so do we.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
