#ifndef QUOTAD_TESTS_SIM_NEVER_OVER_SIM_H_
#define QUOTAD_TESTS_SIM_NEVER_OVER_SIM_H_

// The never-over simulation (issue 11): a seeded, deterministic, fault-injecting driver of the
// real quotad::Ledger and the real SqliteJournal, checked after every step against the oracle of
// never_over_oracle.h. FoundationDB's simulation testing and TigerBeetle's VOPR are the models:
// one seed picks the policy, the mix of operations (swarm testing: each seed weighs the kinds
// differently) and every random choice; time is simulated; a violation is shrunk to the shortest
// operation list that still shows it and can be replayed with --seed=N --keep=i,j,...
//
// Single-threaded. Races are injected deterministically: an operation can be preempted at its
// first clock read (time moves and another worker's request runs before it goes on).

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/time/time.h"

namespace quotad::sim {

// One operation: a kind and raw random words, interpreted against the state when it runs (so that
// dropping operations while shrinking still leaves a runnable list).
struct Op {
  int index = 0;  // position in the seed's generated list, for --keep
  int kind = 0;
  uint64_t a = 0, b = 0, c = 0, d = 0;
};

struct Violation {
  int step = 0;           // position in the list that was run
  std::string invariant;  // over-grant, concurrency, renew-after-expiry, waiter-passed, ...
  std::string message;
};

struct RunResult {
  std::optional<Violation> violation;  // the first (or the first of the target invariant)
  std::vector<Violation> all;          // the first of each invariant
  std::vector<std::string> log;  // one line per operation (when asked for)
  int64_t ops_run = 0;
  std::string policy;  // the initial policy, described
};

std::vector<Op> GenerateOps(uint64_t seed, int count);
// `target`: stop at the first violation of this invariant (and report only it); "" runs all.
RunResult RunOps(uint64_t seed, const std::vector<Op>& ops, bool log, const std::string& target);

// Runs one seed; on a violation shrinks it (within `shrink_budget`) and describes the shortest
// trace found.
struct SeedReport {
  uint64_t seed = 0;
  bool ok = true;
  std::string invariant;                // the first
  std::vector<std::string> invariants;  // every invariant broken
  std::string text;       // seed, invariant, message, trace, replay command
  int64_t ops_run = 0;    // by the first run
  int64_t shrink_ops = 0; // by the shrinking runs
  std::vector<int> kept;  // op indices of the shortest trace
};
SeedReport RunSeed(uint64_t seed, int ops, absl::Duration shrink_budget);

const char* OpKindName(int kind);
// The kind named `name` ("reset"), or -1.
int OpKindByName(const std::string& name);
// GenerateOps gives these kinds no weight from now on (the other kinds keep theirs; leaving out
// the kinds added last, e.g. reset, gives the lists generated before they were added), to
// compare runs with and without them. Not thread-safe.
void DisableOpKinds(const std::vector<int>& kinds);

}  // namespace quotad::sim

#endif  // QUOTAD_TESTS_SIM_NEVER_OVER_SIM_H_
