// The never-over simulation (issue 11) as a test and as a tool.
//
//   never_over_sim_test                       CTest: the fixed seed set (about a minute)
//   never_over_sim_test --seed=N              replay one seed (prints the shrunk trace;
//                                             --shrink_seconds=S to shrink longer than 30 s)
//   never_over_sim_test --seed=N --keep=3,17  replay exactly these operations of seed N
//   never_over_sim_test --seeds=N --minutes=M [--first_seed=S] [--ops=K]   run longer
//   ... --without=reset,crash                 generate no operations of these kinds (with
//                                             --without=reset, the lists from before reset)
//
// Prints every violation with its seed and the shortest trace found, then the simulated
// operations run and operations per second.

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "tests/sim/never_over_sim.h"

namespace quotad::sim {
namespace {

constexpr int kFixedSeeds = 200;
constexpr int kFixedOps = 600;

struct Totals {
  int seeds = 0;
  int64_t ops = 0;
  int64_t shrink_ops = 0;
  int failed = 0;
};

Totals RunMany(uint64_t first, int seeds, int ops, absl::Duration limit, absl::Duration shrink,
               std::vector<SeedReport>* failures) {
  Totals t;
  const absl::Time start = absl::Now();
  std::map<std::string, std::vector<uint64_t>> by_invariant;
  for (int i = 0; i < seeds && absl::Now() - start < limit; ++i) {
    SeedReport r = RunSeed(first + i, ops, failures->size() < 8 ? shrink : absl::ZeroDuration());
    ++t.seeds;
    t.ops += r.ops_run;
    t.shrink_ops += r.shrink_ops;
    if (!r.ok) {
      ++t.failed;
      for (const std::string& inv : r.invariants) by_invariant[inv].push_back(r.seed);
      std::printf("%s\n", r.text.c_str());
      std::fflush(stdout);
      failures->push_back(std::move(r));
    }
  }
  for (const auto& [inv, s] : by_invariant) {
    std::printf("never_over: %-20s broken by %zu seeds, first %llu\n", inv.c_str(), s.size(),
                static_cast<unsigned long long>(s.front()));
  }
  const double secs = absl::ToDoubleSeconds(absl::Now() - start);
  std::printf(
      "never_over: %d seeds, %lld simulated operations (+%lld while shrinking) in %.1f s: "
      "%.0f operations/s; %d seeds with a violation\n",
      t.seeds, static_cast<long long>(t.ops), static_cast<long long>(t.shrink_ops), secs,
      static_cast<double>(t.ops + t.shrink_ops) / std::max(secs, 1e-9), t.failed);
  return t;
}

// Findings of the fixed seeds that wait for a fix in service/core: each seed must still break
// exactly its invariant, so that a fix (or a change of the simulation that moves the seed)
// shows here and the entry goes. Documented in README.md.
struct KnownFinding {
  uint64_t seed;
  const char* invariant;
  const char* what;
};
// (Seed 44, "Reset keeps a rolling window's end", was the first; fixed in Counter::Clear. Seed
// 196 was a count taken after sent_at, against Report's contract; the simulation keeps it now.)
const std::vector<KnownFinding> kKnownFindings = {};

TEST(NeverOverSim, FixedSeedsNeverOverGrant) {
  std::vector<SeedReport> failures;
  const Totals t = RunMany(1, kFixedSeeds, kFixedOps, absl::Minutes(2), absl::Seconds(3), &failures);
  std::vector<bool> seen(std::size(kKnownFindings), false);
  for (const SeedReport& r : failures) {
    bool known = false;
    for (size_t i = 0; i < std::size(kKnownFindings); ++i) {
      const KnownFinding& k = kKnownFindings[i];
      if (r.seed == k.seed && r.invariants == std::vector<std::string>{k.invariant}) {
        known = seen[i] = true;
        std::printf("never_over: seed %llu is a known finding (%s)\n",
                    static_cast<unsigned long long>(k.seed), k.what);
      }
    }
    if (!known) ADD_FAILURE() << r.text;
  }
  for (size_t i = 0; i < std::size(kKnownFindings); ++i) {
    const KnownFinding& k = kKnownFindings[i];
    if (!seen[i] && k.seed <= static_cast<uint64_t>(t.seeds)) {  // seeds 1..t.seeds ran
      ADD_FAILURE() << "seed " << k.seed << " no longer breaks " << k.invariant << " (" << k.what
                    << "): fixed? Remove it from kKnownFindings.";
    }
  }
}

}  // namespace
}  // namespace quotad::sim

int main(int argc, char** argv) {
  using namespace quotad::sim;
  int64_t seed = -1, seeds = -1, first = 1, ops = 2000;
  double minutes = 1, shrink_seconds = 30;
  std::string keep, without;
  std::vector<char*> rest = {argv[0]};
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto val = [&](const char* name) -> const char* {
      const size_t n = std::strlen(name);
      return a.compare(0, n, name) == 0 ? a.c_str() + n : nullptr;
    };
    if (const char* v = val("--seed=")) seed = std::atoll(v);
    else if (const char* v = val("--seeds=")) seeds = std::atoll(v);
    else if (const char* v = val("--first_seed=")) first = std::atoll(v);
    else if (const char* v = val("--ops=")) ops = std::atoll(v);
    else if (const char* v = val("--minutes=")) minutes = std::atof(v);
    else if (const char* v = val("--keep=")) keep = v;
    else if (const char* v = val("--without=")) without = v;
    else if (const char* v = val("--shrink_seconds=")) shrink_seconds = std::atof(v);
    else rest.push_back(argv[i]);
  }
  if (!without.empty()) {
    std::vector<int> kinds;
    for (absl::string_view s : absl::StrSplit(without, ',')) {
      const int k = OpKindByName(std::string(s));
      if (k < 0) {
        std::fprintf(stderr, "--without: no operation kind '%s'\n", std::string(s).c_str());
        return 2;
      }
      kinds.push_back(k);
    }
    DisableOpKinds(kinds);
  }
  if (seed >= 0) {
    if (!keep.empty()) {
      std::vector<Op> all = GenerateOps(seed, static_cast<int>(ops));
      std::vector<Op> chosen;
      for (absl::string_view s : absl::StrSplit(keep, ',')) {
        int idx;
        if (absl::SimpleAtoi(s, &idx) && idx >= 0 && idx < static_cast<int>(all.size())) {
          chosen.push_back(all[idx]);
        }
      }
      RunResult r = RunOps(seed, chosen, true, "");
      std::printf("policy: %s", r.policy.c_str());
      for (const std::string& l : r.log) std::printf("    %s\n", l.c_str());
      std::printf("%s\n", r.violation ? ("VIOLATION " + r.violation->invariant + ": " +
                                         r.violation->message).c_str()
                                       : "no violation");
      return r.violation ? 1 : 0;
    }
    SeedReport r = RunSeed(seed, static_cast<int>(ops), absl::Seconds(shrink_seconds));
    std::printf("%s\n", r.ok ? "no violation" : r.text.c_str());
    std::printf("never_over: seed %lld, %lld simulated operations\n", static_cast<long long>(seed),
                static_cast<long long>(r.ops_run));
    return r.ok ? 0 : 1;
  }
  if (seeds > 0) {
    std::vector<SeedReport> failures;
    Totals t = RunMany(first, static_cast<int>(seeds), static_cast<int>(ops),
                       absl::Seconds(minutes * 60), absl::Seconds(10), &failures);
    return t.failed == 0 ? 0 : 1;
  }
  int n = static_cast<int>(rest.size());
  testing::InitGoogleTest(&n, rest.data());
  return RUN_ALL_TESTS();
}
