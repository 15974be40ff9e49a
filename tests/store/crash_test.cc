// kill -9 at random moments: a child process grants in a loop through a Ledger over a
// SqliteJournal and reports every answered grant to the parent through a pipe; the parent kills
// it with SIGKILL at a random moment, and the next life reopens the file and Restores. Across
// all lives, no window grants more than its capacity, leases that hold slots stay held, and
// each crash loses at most one reserve block per counter.

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <memory>
#include <random>
#include <string>

#include "gtest/gtest.h"
#include "service/core/clock.h"
#include "service/core/ledger.h"
#include "service/store/sqlite_journal.h"
#include "tests/support/policy_builders.h"
#include "tests/support/status_matchers.h"
#include "tests/support/temp_dir.h"

namespace quotad {
namespace {

using testing::Calendar;
using testing::Concurrency;
using testing::Feature;
using testing::OneCredential;
using testing::Sliding;
using testing::TempDir;
using testing::Utc;

constexpr int kRounds = 25;
constexpr int64_t kDaily = 40'000;
constexpr int64_t kSlots = 5;
constexpr double kReserveFraction = 0.01;  // a block of 400 units per counter
constexpr int64_t kBlock = static_cast<int64_t>(kDaily * kReserveFraction);

Policy CrashPolicy() {
  return OneCredential(
      "cred", {Feature("f", {Sliding("per_minute", 1'000'000'000, absl::Minutes(1), 60),
                             Calendar("per_day", kDaily, CalendarUnit::kDay),
                             Calendar("per_month", 1'000'000'000, CalendarUnit::kMonth)}),
               Feature("jobs", {Concurrency("slots", kSlots)})});
}

LedgerOptions Options(Journal* journal) {
  LedgerOptions o;
  o.journal = journal;
  o.reserve_fraction = kReserveFraction;
  return o;
}

// One life: grant until killed. Writes 'g' per granted "f" and 'j' per granted "jobs" slot,
// after the grant is answered (the grant a client would have seen). Never returns.
[[noreturn]] void Life(const std::string& path, int life, int fd) {
  auto journal = SqliteJournal::Open(path);
  if (!journal.ok()) {
    std::fprintf(stderr, "life %d: %s\n", life, std::string(journal.status().message()).c_str());
    _exit(3);
  }
  // Every life stays inside one day; time moves forward across lives.
  FakeClock clock(Utc(2026, 3, 10, 8) + absl::Seconds(10 * life));
  auto ledger = Ledger::Create(CrashPolicy(), &clock, Options(journal->get()));
  if (!ledger.ok() || !(*ledger)->Restore().ok()) _exit(4);
  AcquireRequest req;
  req.credential = "cred";
  req.want_limits = false;
  req.lease_ttl = absl::Hours(1);
  for (uint64_t i = 0;; ++i) {
    req.feature = (i % 997 == 0) ? "jobs" : "f";
    auto d = (*ledger)->Acquire(req);
    if (!d.ok()) _exit(5);
    if (d->granted) {
      const char c = req.feature == "jobs" ? 'j' : 'g';
      if (write(fd, &c, 1) != 1) _exit(6);
    }
    clock.Advance(absl::Microseconds(1));
  }
}

TEST(CrashTest, SigkillAtRandomMomentsNeverOverGrantsAndKeepsLeases) {
  TempDir dir;
  const std::string path = dir.File("state.db");
  std::mt19937 rng(std::random_device{}());
  std::uniform_int_distribution<int> delay_us(20'000, 150'000);
  const auto started = std::chrono::steady_clock::now();
  int64_t granted = 0;
  int64_t slots = 0;
  int rounds = 0;
  for (; rounds < kRounds; ++rounds) {
    int fds[2];
    ASSERT_EQ(pipe(fds), 0);
    const pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      close(fds[0]);
      Life(path, rounds, fds[1]);
    }
    close(fds[1]);
    const int delay = delay_us(rng);
    const auto kill_at = std::chrono::steady_clock::now() + std::chrono::microseconds(delay);
    char buf[4096];
    bool killed = false;
    for (;;) {
      const auto now = std::chrono::steady_clock::now();
      if (!killed && now >= kill_at) {
        kill(pid, SIGKILL);
        killed = true;
      }
      pollfd p{fds[0], POLLIN, 0};
      const int wait_ms = killed ? 1000
                                 : static_cast<int>(std::chrono::duration_cast<
                                                        std::chrono::milliseconds>(kill_at - now)
                                                        .count());
      if (poll(&p, 1, std::max(0, wait_ms)) <= 0 && !killed) continue;
      const ssize_t n = read(fds[0], buf, sizeof(buf));
      if (n <= 0) {
        if (killed) break;
        continue;
      }
      for (ssize_t k = 0; k < n; ++k) (buf[k] == 'j' ? slots : granted) += 1;
    }
    close(fds[0]);
    int status = 0;
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)
        << "round " << rounds << ": the child ended by itself, status " << status;
    ASSERT_LE(granted, kDaily) << "over-grant after round " << rounds;
    ASSERT_LE(slots, kSlots) << "a slot was granted twice after round " << rounds;
    ASSERT_LT(std::chrono::steady_clock::now() - started, std::chrono::seconds(60));
  }

  // The last life: a clean restart that exhausts what is left.
  auto journal = SqliteJournal::Open(path);
  ASSERT_OK(journal);
  FakeClock clock(Utc(2026, 3, 10, 8) + absl::Seconds(10 * rounds));
  auto ledger = Ledger::Create(CrashPolicy(), &clock, Options(journal->get()));
  ASSERT_OK(ledger);
  ASSERT_OK((*ledger)->Restore());
  int64_t held = 0;
  for (const LeaseInfo& l : (*ledger)->Leases("cred")) held += l.feature == "jobs";
  EXPECT_GE(held, slots) << "every answered slot is still held";
  AcquireRequest req;
  req.credential = "cred";
  req.feature = "f";
  int64_t rest = 0;
  for (auto d = (*ledger)->Acquire(req); d.ok() && d->granted; d = (*ledger)->Acquire(req)) {
    ++rest;
  }
  req.feature = "jobs";
  int64_t rest_slots = 0;
  for (auto d = (*ledger)->Acquire(req); d.ok() && d->granted; d = (*ledger)->Acquire(req)) {
    ++rest_slots;
  }
  const int64_t lost = kDaily - granted - rest;
  std::printf(
      "crash rounds=%d granted_before_crashes=%lld granted_after=%lld capacity=%lld "
      "lost=%lld (bound %d crashes x %lld block = %lld) slots_held=%lld\n",
      rounds, static_cast<long long>(granted), static_cast<long long>(rest),
      static_cast<long long>(kDaily), static_cast<long long>(lost), rounds,
      static_cast<long long>(kBlock), static_cast<long long>(rounds * kBlock),
      static_cast<long long>(slots));
  EXPECT_GE(rounds, 20);
  EXPECT_LE(granted + rest, kDaily);
  EXPECT_GE(lost, 0);
  EXPECT_LE(lost, rounds * kBlock);
  EXPECT_LE(slots + rest_slots, kSlots);
}

}  // namespace
}  // namespace quotad
