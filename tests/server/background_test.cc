// The server's background work (service/server/background.h) on a FakeClock: advancing the clock
// fires the wait-queue pump and the sweeper's tick; nothing here waits on real time for a timer.
// Also the config file watch and the blocking worker.

#include "service/server/background.h"

#include <atomic>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "service/config/config.h"
#include "service/core/clock.h"
#include "service/core/ledger.h"
#include "tests/support/status_matchers.h"
#include "tests/support/temp_dir.h"

namespace quotad {
namespace {

constexpr char kConfig[] = R"(
credentials:
  - name: team-a/key
    features:
      - name: jobs
        limits:
          - {name: slots, kind: concurrency, capacity: 1}
      - name: requests
        limits:
          - {name: per_minute, kind: rolling, capacity: 1, period: 1m}
)";

class WaitQueuePumpTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_OK_AND_ASSIGN(LoadedConfig config,
                         LoadConfigFromString(kConfig, "background_test.yaml"));
    LedgerOptions options;
    options.wake = [this](absl::Time t) { pump_.WakeBy(t); };
    ASSERT_OK_AND_ASSIGN(ledger_, Ledger::Create(config.policy, &clock_, options));
    pump_.Start(ledger_.get());
  }
  void TearDown() override { pump_.Stop(); }

  AcquireRequest Request(const char* feature) {
    AcquireRequest req;
    req.credential = "team-a/key";
    req.feature = feature;
    return req;
  }

  FakeClock clock_;
  WaitQueuePump pump_{&clock_};
  std::unique_ptr<Ledger> ledger_;
};

TEST_F(WaitQueuePumpTest, DeniesAWaiterAtItsDeadlineWhenTheClockGetsThere) {
  ASSERT_TRUE(ledger_->Acquire(Request("jobs")).value().granted);
  std::optional<absl::StatusOr<Decision>> answer;
  ledger_->AcquireOrWait(Request("jobs"), absl::Seconds(5), 0,
                         [&](absl::StatusOr<Decision> d) { answer = std::move(d); });
  clock_.Advance(absl::Seconds(4));
  EXPECT_FALSE(answer.has_value());
  clock_.Advance(absl::Seconds(1));
  ASSERT_TRUE(answer.has_value());
  ASSERT_OK(*answer);
  EXPECT_FALSE((*answer)->granted);
}

TEST_F(WaitQueuePumpTest, GrantsAWaiterWhenTheWindowMovesOn) {
  ASSERT_TRUE(ledger_->Acquire(Request("requests")).value().granted);
  std::optional<absl::StatusOr<Decision>> answer;
  ledger_->AcquireOrWait(Request("requests"), absl::Minutes(5), 0,
                         [&](absl::StatusOr<Decision> d) { answer = std::move(d); });
  EXPECT_FALSE(answer.has_value());
  clock_.Advance(absl::Minutes(1) + absl::Seconds(1));
  ASSERT_TRUE(answer.has_value());
  ASSERT_OK(*answer);
  EXPECT_TRUE((*answer)->granted);
}

TEST(SweeperTest, RunsEachJobAtItsIntervalOnTheClocksTicks) {
  FakeClock clock;
  std::atomic<int> every_tick{0};
  std::atomic<int> every_ten{0};
  Sweeper sweeper(&clock, absl::Seconds(1),
                  {{"every_tick", absl::ZeroDuration(), [&] { ++every_tick; }},
                   {"every_ten", absl::Seconds(10), [&] { ++every_ten; }}});
  EXPECT_THAT(sweeper.JobNames(), ::testing::ElementsAre("every_tick", "every_ten"));
  sweeper.Start();
  EXPECT_EQ(sweeper.ticks_done(), 0);
  clock.Advance(absl::Seconds(1));
  sweeper.AwaitTicks(1);
  EXPECT_EQ(every_tick.load(), 1);
  EXPECT_EQ(every_ten.load(), 1);  // every job runs on the first tick
  for (int i = 2; i <= 10; ++i) {
    clock.Advance(absl::Seconds(1));
    sweeper.AwaitTicks(i);
  }
  EXPECT_EQ(every_tick.load(), 10);
  EXPECT_EQ(every_ten.load(), 1);
  clock.Advance(absl::Seconds(1));
  sweeper.AwaitTicks(11);
  EXPECT_EQ(every_ten.load(), 2);
  sweeper.Stop();
  clock.Advance(absl::Seconds(5));
  EXPECT_EQ(every_tick.load(), 11);
}

TEST(ConfigFileWatchTest, SeesANewVersionOnceAndIgnoresAMissingFile) {
  const testing::TempDir dir("watch");
  const std::string path = dir.WriteFile("quotad.yaml", "a: 1\n");
  ConfigFileWatch watch(path);
  EXPECT_FALSE(watch.Changed());
  std::ofstream(path + ".new") << "a: 22\n";
  std::filesystem::rename(path + ".new", path);
  EXPECT_TRUE(watch.Changed());
  EXPECT_FALSE(watch.Changed());
  std::filesystem::remove(path);
  EXPECT_FALSE(watch.Changed());
}

TEST(BlockingWorkerTest, CancelsWhatIsQueuedAtStop) {
  BlockingWorker worker;
  worker.Stop();
  bool ran = false;
  bool cancelled = false;
  worker.Schedule([&] { ran = true; }, [&] { cancelled = true; });
  EXPECT_FALSE(ran);
  EXPECT_TRUE(cancelled);
}

}  // namespace
}  // namespace quotad
