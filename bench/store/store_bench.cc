// Cost of durability: Ledger::Acquire on a 3-limit feature (sliding per minute, calendar day,
// calendar month; capacities large enough that decisions are grants) with the SqliteJournal and
// without (memory only), one and two threads, in the same run; and start-up time (Open + Load +
// Ledger::Restore) with 1M reservations of 1M credentials in the file. Prints the throughput
// ratio persistent / memory-only.
//
//   build-store/bench/store/store_bench --benchmark_counters_tabular=true

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

// Start-up with 1M credentials, each with a day reservation in the file: Open (quick_check
// included) + Ledger::Restore (which Loads). Ledger::Create (compiling the policy) is reported
// apart, as create_s.
void BM_StartUp(benchmark::State& state) {
  const int n = static_cast<int>(state.range(0));
  const std::string path = BenchDir() + "/startup.db";
  static const Policy* policy = nullptr;
  if (policy == nullptr) {
    policy = new Policy(ThreeLimits(n));
    std::filesystem::remove(path);
    auto journal = *SqliteJournal::Open(path);
    const int64_t day = absl::ToUnixNanos(absl::FromCivil(
        absl::CivilDay(absl::ToCivilDay(Clock::Real()->Now(), absl::UTCTimeZone())),
        absl::UTCTimeZone()));
    std::vector<Reservation> batch;
    for (int i = 0; i < n; ++i) {
      batch.push_back(Reservation{CounterKey{policy->credentials[i].name, "requests.per_day", ""},
                                  day, day + absl::ToInt64Nanoseconds(absl::Hours(24)), 1000});
      if (batch.size() == 100'000 || i == n - 1) {
        if (!journal->Reserve(batch).ok()) std::abort();
        batch.clear();
      }
    }
  }
  double create_s = 0;
  for (auto _ : state) {
    const auto t0 = std::chrono::steady_clock::now();
    auto ledger = *Ledger::Create(*policy, Clock::Real(), {});
    const auto t1 = std::chrono::steady_clock::now();
    create_s = std::chrono::duration<double>(t1 - t0).count();
    state.PauseTiming();
    ledger.reset();
    {
      // Load alone (reported as load_s; Restore includes it).
      auto journal = *SqliteJournal::Open(path);
      const auto l0 = std::chrono::steady_clock::now();
      if (!journal->Load().ok()) std::abort();
      state.counters["load_s"] =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - l0).count();
    }
    state.ResumeTiming();
    // What is timed: open the file, create the ledger over it... minus create, restore.
    const auto start = std::chrono::steady_clock::now();
    auto journal = *SqliteJournal::Open(path);
    const auto opened = std::chrono::steady_clock::now();
    LedgerOptions options;
    options.journal = journal.get();
    state.PauseTiming();
    ledger = *Ledger::Create(*policy, Clock::Real(), options);
    state.ResumeTiming();
    const auto restore_start = std::chrono::steady_clock::now();
    if (!ledger->Restore().ok()) std::abort();
    const auto done = std::chrono::steady_clock::now();
    state.SetIterationTime(std::chrono::duration<double>(opened - start).count() +
                           std::chrono::duration<double>(done - restore_start).count());
    state.counters["open_s"] = std::chrono::duration<double>(opened - start).count();
    state.counters["restore_s"] = std::chrono::duration<double>(done - restore_start).count();
    state.counters["create_s"] = create_s;
    state.PauseTiming();
    ledger.reset();
    journal.reset();
    state.ResumeTiming();
  }
  state.counters["reservations"] = n;
  state.counters["file_MB"] =
      static_cast<double>(std::filesystem::file_size(path)) / (1024.0 * 1024.0);
}
BENCHMARK(BM_StartUp)
    ->ArgNames({"credentials"})
    ->Arg(1'000'000)
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
