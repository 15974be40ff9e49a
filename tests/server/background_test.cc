// The server's background work on a FakeClock: advancing the clock fires the wait-queue pump
// and the sweeper's tick; nothing here waits on real time for a timer.

#include "service/server/background.h"

#include <stdlib.h>
#include <unistd.h>

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
    absl::StatusOr<LoadedConfig> config = LoadConfigFromString(kConfig, "background_test.yaml");
    ASSERT_TRUE(config.ok()) << config.status();
    LedgerOptions options;
    options.wake = [this](absl::Time t) { pump_.WakeBy(t); };
    absl::StatusOr<std::unique_ptr<Ledger>> ledger =
        Ledger::Create(config->policy, &clock_, options);
    ASSERT_TRUE(ledger.ok()) << ledger.status();
    ledger_ = *std::move(ledger);
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
  ASSERT_TRUE(answer->ok()) << answer->status();
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
  ASSERT_TRUE(answer->ok()) << answer->status();
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
  std::string dir = (std::filesystem::temp_directory_path() / "quotad_watch_XXXXXX").string();
  ASSERT_NE(mkdtemp(dir.data()), nullptr);
  const std::string path = dir + "/quotad.yaml";
  std::ofstream(path) << "a: 1\n";
  ConfigFileWatch watch(path);
  EXPECT_FALSE(watch.Changed());
  std::ofstream(path + ".new") << "a: 22\n";
  std::filesystem::rename(path + ".new", path);
  EXPECT_TRUE(watch.Changed());
  EXPECT_FALSE(watch.Changed());
  std::filesystem::remove(path);
  EXPECT_FALSE(watch.Changed());
  std::filesystem::remove_all(dir);
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
