// Cost of durability: Ledger::Acquire on a 3-limit feature (sliding per minute, calendar day,
// calendar month; capacities large enough that decisions are grants) with the SqliteJournal and
// without (memory only), one and two threads, in the same run. Prints the throughput ratio
// persistent / memory-only. And a cold start (BM_ColdStart) at 100k and 1M credentials, step by
// step (parse, open, compile, restore) and in total.
//
//   build/bench/store/store_bench --benchmark_counters_tabular=true
//   build/bench/store/store_bench --benchmark_filter=ColdStart --benchmark_counters_tabular=true

#include <malloc.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "benchmark/benchmark.h"
#include "service/config/config.h"
#include "service/core/clock.h"
#include "service/core/ledger.h"
#include "service/store/sqlite_journal.h"

namespace quotad {
namespace {

std::string BenchDir() {
  static const std::string* dir = [] {
    const char* base = std::getenv("TMPDIR");
    std::string templ = std::string(base != nullptr ? base : "/tmp") + "/quotad-store-bench-XXXXXX";
    return new std::string(mkdtemp(templ.data()));
  }();
  return *dir;
}

LimitSpec Limit(std::string name, LimitKind kind, int64_t capacity) {
  LimitSpec l;
  l.name = std::move(name);
  l.kind = kind;
  l.capacity = capacity;
  return l;
}

Policy ThreeLimits(int n) {
  FeatureSpec f;
  f.name = "requests";
  LimitSpec minute = Limit("per_minute", LimitKind::kSliding, 1'000'000'000);
  minute.period = absl::Minutes(1);
  minute.sub_buckets = 60;
  LimitSpec day = Limit("per_day", LimitKind::kCalendar, 1'000'000'000);
  day.unit = CalendarUnit::kDay;
  LimitSpec month = Limit("per_month", LimitKind::kCalendar, 1'000'000'000);
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

constexpr int kCredentials = 1000;

// Forwards to the SqliteJournal and times the synchronous Reserve calls.
class TimedJournal : public Journal {
 public:
  explicit TimedJournal(Journal* j) : j_(j) {}
  absl::StatusOr<JournalState> Load() override { return j_->Load(); }
  absl::Status Reserve(const std::vector<Reservation>& r) override {
    const auto t0 = std::chrono::steady_clock::now();
    absl::Status s = j_->Reserve(r);
    const int64_t d =
        std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0)
            .count();
    ns += d;
    ++calls;
    for (int64_t m = max_ns.load(); d > m && !max_ns.compare_exchange_weak(m, d);) {
    }
    return s;
  }
  absl::Status PutLease(const JournalLease& l) override { return j_->PutLease(l); }
  absl::Status RenewLease(const std::string& id, int64_t e) override { return j_->RenewLease(id, e); }
  void DeleteLease(const std::string& id) override { j_->DeleteLease(id); }
  absl::Status PutCooldown(const JournalCooldown& c) override { return j_->PutCooldown(c); }
  absl::Status PutOutside(const JournalOutside& o) override { return j_->PutOutside(o); }
  absl::Status Compact(int64_t now) override { return j_->Compact(now); }
  std::atomic<int64_t> calls{0};
  std::atomic<int64_t> ns{0};
  std::atomic<int64_t> max_ns{0};
 private:
  Journal* j_;
};

struct Fixture {
  explicit Fixture(bool persistent) : names(kCredentials) {
    for (int i = 0; i < kCredentials; ++i) names[i] = absl::StrCat("provider/key-", i);
    LedgerOptions options;
    if (persistent) {
      const std::string path = BenchDir() + "/acquire.db";
      std::filesystem::remove(path);
      journal = *SqliteJournal::Open(path);
      timed = std::make_unique<TimedJournal>(journal.get());
      options.journal = timed.get();
    }
    ledger = *Ledger::Create(ThreeLimits(kCredentials), Clock::Real(), options);
    if (!ledger->Restore().ok()) std::abort();
  }
  std::vector<std::string> names;
  std::unique_ptr<SqliteJournal> journal;
  std::unique_ptr<TimedJournal> timed;
  std::unique_ptr<Ledger> ledger;
};

// One fixture at a time: the memory-only and persistent runs do not share the machine with a
// leftover writer thread.
Fixture* GetFixture(bool persistent) {
  static absl::Mutex mu;
  static auto* current = new std::unique_ptr<Fixture>();
  static bool current_persistent = false;
  absl::MutexLock lock(&mu);
  if (*current == nullptr || current_persistent != persistent) {
    current->reset();
    *current = std::make_unique<Fixture>(persistent);
    current_persistent = persistent;
  }
  return current->get();
}

void BM_Acquire(benchmark::State& state) {
  const bool persistent = state.range(0) != 0;
  Fixture* fx = GetFixture(persistent);
  std::mt19937_64 rng(state.thread_index() + 1);
  std::uniform_int_distribution<int> pick(0, kCredentials - 1);
  AcquireRequest req;
  req.feature = "requests";
  req.want_limits = false;
  int64_t granted = 0;
  for (auto _ : state) {
    req.credential = fx->names[pick(rng)];
    auto d = fx->ledger->Acquire(req);
    granted += d.ok() && d->granted;
    // Leases live 1 s; reclaim them now and then as the server's sweeper would, in memory and
    // in the file.
    if ((granted & 0x3ffff) == 0x3ffff && state.thread_index() == 0) {
      fx->ledger->Sweep();
      if (fx->journal != nullptr) {
        fx->journal->Compact(absl::ToUnixNanos(Clock::Real()->Now())).IgnoreError();
      }
    }
  }
  state.SetItemsProcessed(state.iterations());
  state.counters["granted%"] = 100.0 * granted / std::max<int64_t>(1, state.iterations());
  if (fx->journal != nullptr && state.thread_index() == 0) {
    state.counters["commits"] = static_cast<double>(fx->journal->stats().commits);
    state.counters["reserves"] = static_cast<double>(fx->timed->calls.load());
    state.counters["reserve_us"] =
        fx->timed->ns.load() / 1000.0 / std::max<int64_t>(1, fx->timed->calls.load());
    state.counters["reserve_max_us"] = fx->timed->max_ns.load() / 1000.0;
    state.counters["log_rows"] = static_cast<double>(fx->journal->stats().log_rows);
  }
}
BENCHMARK(BM_Acquire)
    ->ArgNames({"sqlite"})
    ->Arg(0)
    ->Arg(1)
    ->Threads(1)
    ->Threads(2)
    ->UseRealTime()
    ->MinTime(2.0);

// Cold start as the server does it, at 100k and 1M credentials, each with a day reservation in
// the file: parse the YAML (LoadConfigFromString; every credential on the virustotal-public
// profile, one in ten with a per_day override of one of four capacities, so five distinct
// compiled policies), open the file (quick_check included), compile the policy
// (Ledger::Create), Restore (which Loads). With overlap:1, Ledger::CreateRestored reads the file
// while the policy compiles: compile_s is then both, and restore_s 0. Printed: parse_s, open_s, compile_s, restore_s and
// total_s (the iteration time), each the mean over the iterations; compile_cpu, restore_cpu and
// total_cpu are the same steps' CPU time on the calling thread; load_s is Journal::Load alone,
// timed apart (Restore includes it).
struct ColdStartData {
  std::string yaml;
  std::string path;
};

// CPU seconds of the calling thread (the steps run on it): steadier than wall time on a shared
// machine. A step that used other threads (none does now) would show it as wall > CPU.
double ThreadCpuSeconds() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

const ColdStartData& ColdStartFor(int n) {
  static auto* data = new std::map<int, ColdStartData>();
  auto [it, added] = data->try_emplace(n);
  ColdStartData& d = it->second;
  if (!added) return d;
  d.yaml = "credentials:\n";
  d.yaml.reserve(static_cast<size_t>(n) * 110);
  for (int i = 0; i < n; ++i) {
    absl::StrAppend(&d.yaml, "  - {name: vt/key-", i, ", profile: virustotal-public");
    if (i % 10 == 0) {
      absl::StrAppend(&d.yaml, ", overrides: [{feature: requests, limit: per_day, capacity: ",
                      400 + (i / 10) % 4, "}]");
    }
    d.yaml += "}\n";
  }
  d.path = absl::StrCat(BenchDir(), "/coldstart-", n, ".db");
  std::filesystem::remove(d.path);
  auto journal = *SqliteJournal::Open(d.path);
  const int64_t day = absl::ToUnixNanos(absl::FromCivil(
      absl::CivilDay(absl::ToCivilDay(Clock::Real()->Now(), absl::UTCTimeZone())),
      absl::UTCTimeZone()));
  std::vector<Reservation> batch;
  for (int i = 0; i < n; ++i) {
    batch.push_back(Reservation{CounterKey{absl::StrCat("vt/key-", i), "requests.per_day", ""},
                                day, day + absl::ToInt64Nanoseconds(absl::Hours(24)), 100});
    if (batch.size() == 100'000 || i == n - 1) {
      if (!journal->Reserve(batch).ok()) std::abort();
      batch.clear();
    }
  }
  return d;
}

void BM_ColdStart(benchmark::State& state) {
  const int n = static_cast<int>(state.range(0));
  const bool overlap = state.range(1) != 0;
  const ColdStartData& data = ColdStartFor(n);
  ConfigLimits limits;
  limits.max_bytes = static_cast<int64_t>(data.yaml.size()) + 1;
  limits.yaml.max_nodes = 20LL * n + 1000;
  // Seconds per step, summed over the iterations (printed as means).
  double load = 0, parse = 0, open = 0, compile = 0, restore = 0;
  double compile_cpu = 0, restore_cpu = 0, total_cpu = 0;
  auto seconds = [](auto from, auto to) { return std::chrono::duration<double>(to - from).count(); };
  for (auto _ : state) {
    {
      // Load alone (load_s; Restore includes it), untimed.
      state.PauseTiming();
      auto journal = *SqliteJournal::Open(data.path);
      const auto l0 = std::chrono::steady_clock::now();
      absl::StatusOr<JournalState> loaded = journal->Load();
      if (!loaded.ok() || loaded->reservations.size() != static_cast<size_t>(n)) std::abort();
      load += seconds(l0, std::chrono::steady_clock::now());
      loaded = absl::UnknownError("freed");
      journal.reset();
      // Hands the freed chunks back now (glibc would consolidate them at the next large
      // malloc, inside a timed step): each step pays for its own garbage only.
      malloc_trim(0);
      state.ResumeTiming();
    }
    const double cpu_start = ThreadCpuSeconds();
    const auto start = std::chrono::steady_clock::now();
    absl::StatusOr<LoadedConfig> config = LoadConfigFromString(data.yaml, "bench.yaml", limits);
    if (!config.ok()) {
      std::fprintf(stderr, "%s\n", config.status().ToString().c_str());
      std::abort();
    }
    const auto parsed = std::chrono::steady_clock::now();
    auto journal = *SqliteJournal::Open(data.path);
    const auto opened = std::chrono::steady_clock::now();
    LedgerOptions options;
    options.journal = journal.get();
    const double cpu_opened = ThreadCpuSeconds();
    std::unique_ptr<Ledger> ledger;
    if (overlap) {
      // The journal read on its own thread while the policy compiles: one step, as compile_s.
      ledger = *Ledger::CreateRestored(config->policy, Clock::Real(), options);
    } else {
      ledger = *Ledger::Create(config->policy, Clock::Real(), options);
    }
    const auto compiled = std::chrono::steady_clock::now();
    const double cpu_compiled = ThreadCpuSeconds();
    if (!overlap && !ledger->Restore().ok()) std::abort();
    const auto done = std::chrono::steady_clock::now();
    const double cpu_done = ThreadCpuSeconds();
    compile_cpu += cpu_compiled - cpu_opened;
    restore_cpu += cpu_done - cpu_compiled;
    total_cpu += cpu_done - cpu_start;
    state.SetIterationTime(seconds(start, done));
    parse += seconds(start, parsed);
    open += seconds(parsed, opened);
    compile += seconds(opened, compiled);
    restore += seconds(compiled, done);
    state.PauseTiming();
    ledger.reset();
    journal.reset();
    config = absl::UnknownError("freed");
    state.ResumeTiming();
  }
  const auto mean = benchmark::Counter::kAvgIterations;
  state.counters["load_s"] = benchmark::Counter(load, mean);
  state.counters["parse_s"] = benchmark::Counter(parse, mean);
  state.counters["open_s"] = benchmark::Counter(open, mean);
  state.counters["compile_s"] = benchmark::Counter(compile, mean);
  state.counters["restore_s"] = benchmark::Counter(restore, mean);
  state.counters["total_s"] = benchmark::Counter(parse + open + compile + restore, mean);
  state.counters["compile_cpu"] = benchmark::Counter(compile_cpu, mean);
  state.counters["restore_cpu"] = benchmark::Counter(restore_cpu, mean);
  state.counters["total_cpu"] = benchmark::Counter(total_cpu, mean);
  state.counters["credentials"] = n;
  state.counters["yaml_MB"] = static_cast<double>(data.yaml.size()) / (1024.0 * 1024.0);
  state.counters["file_MB"] =
      static_cast<double>(std::filesystem::file_size(data.path)) / (1024.0 * 1024.0);
}
BENCHMARK(BM_ColdStart)
    ->ArgNames({"credentials", "overlap"})
    ->ArgsProduct({{100'000, 1'000'000}, {0, 1}})
    ->Iterations(3)
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);

// Remembers items/s of every BM_Acquire run (each repetition) to print the ratio of the medians
// at the end. With --benchmark_repetitions=N --benchmark_enable_random_interleaving=true the
// memory-only and SQLite runs alternate, so a noisy neighbour hits both.
class RatioReporter : public benchmark::ConsoleReporter {
 public:
  void ReportRuns(const std::vector<Run>& runs) override {
    for (const Run& run : runs) {
      auto it = run.counters.find("items_per_second");
      if (run.run_type == Run::RT_Iteration && run.benchmark_name().rfind("BM_Acquire", 0) == 0 &&
          it != run.counters.end()) {
        rate[absl::StrCat(run.run_name.args, "/threads:", run.threads)].push_back(it->second);
      }
    }
    ConsoleReporter::ReportRuns(runs);
  }
  static double Median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v.size() % 2 == 1 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
  }
  std::map<std::string, std::vector<double>> rate;
};

}  // namespace
}  // namespace quotad

int main(int argc, char** argv) {
  // Debian's Abseil is built with deadlock detection on; production turns it off, and so do we.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  quotad::RatioReporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  for (int threads : {1, 2}) {
    auto mem = reporter.rate.find(absl::StrCat("sqlite:0/threads:", threads));
    auto disk = reporter.rate.find(absl::StrCat("sqlite:1/threads:", threads));
    if (mem != reporter.rate.end() && disk != reporter.rate.end()) {
      const double m = quotad::RatioReporter::Median(mem->second);
      const double d = quotad::RatioReporter::Median(disk->second);
      std::printf("threads=%d runs=%zu/%zu median memory_only=%.0f/s sqlite=%.0f/s ratio=%.3f\n",
                  threads, mem->second.size(), disk->second.size(), m, d, d / m);
    }
  }
  double load[3] = {0, 0, 0};
  if (getloadavg(load, 3) == 3) std::printf("loadavg %.2f %.2f %.2f\n", load[0], load[1], load[2]);
  std::filesystem::remove_all(quotad::BenchDir());
  benchmark::Shutdown();
  return 0;
}
