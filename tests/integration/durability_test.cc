// The real quotad binary on a real SQLite state file: restarts keep usage and leases, a
// request_id retry is answered the same across a restart, a corrupt file stops start-up, and a
// crash loop (SIGKILL at random moments under concurrent load, restart on the same file) never
// grants more than a window's capacity across all lives of the process.

#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <fstream>
#include <memory>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/civil_time.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "quotad/v1/quotad.grpc.pb.h"
#include "tests/support/eventually.h"
#include "tests/support/grpc_status_matchers.h"
#include "tests/support/temp_dir.h"

namespace quotad {
namespace {

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// One quotad process with its output in `log_path`. SIGKILLed if the test did not stop it.
class Quotad {
 public:
  Quotad(const std::string& state, const std::string& log_path, std::vector<std::string> extra = {})
      : log_path_(log_path) {
    std::vector<std::string> args = {
        QUOTAD_BINARY, absl::StrCat("--config=", QUOTAD_DURABLE_CONFIG), "--listen=127.0.0.1:0",
        absl::StrCat("--state=", state), "--cq_threads=2"};
    for (std::string& a : extra) args.push_back(std::move(a));
    const int fd = ::open(log_path.c_str(), O_CREAT | O_TRUNC | O_WRONLY, 0644);
    pid_ = fork();
    if (pid_ == 0) {
      dup2(fd, STDERR_FILENO);
      dup2(fd, STDOUT_FILENO);
      std::vector<char*> argv;
      for (std::string& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv(QUOTAD_BINARY, argv.data());
      _exit(127);
    }
    close(fd);
  }
  ~Quotad() { Kill(); }

  std::string log() const { return ReadFile(log_path_); }

  // "127.0.0.1:PORT" once the server listens; empty when it exited or `timeout` passed.
  std::string WaitForAddress(absl::Duration timeout = absl::Seconds(20)) {
    std::string address;
    ::quotad::testing::Eventually(
        [&] {
          const std::string text = log();
          const size_t at = text.find("listening address=");
          if (at != std::string::npos) {
            const size_t end = text.find_first_of(" \n", at + 18);
            address = text.substr(at + 18, end - at - 18);
            return true;
          }
          return Exited(absl::ZeroDuration()).has_value();
        },
        timeout);
    return address;
  }

  // Exit code (or -signal) once exited within `timeout`.
  std::optional<int> Exited(absl::Duration timeout) {
    ::quotad::testing::Eventually(
        [&] {
          if (status_.has_value()) return true;
          int status = 0;
          if (waitpid(pid_, &status, WNOHANG) != pid_) return false;
          status_ = WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
          return true;
        },
        timeout);
    return status_;
  }

  void Kill() {
    if (status_.has_value() || pid_ <= 0) return;
    kill(pid_, SIGKILL);
    int status = 0;
    waitpid(pid_, &status, 0);
    status_ = -SIGKILL;
  }

  // SIGTERM and wait for a clean exit.
  std::optional<int> Stop() {
    kill(pid_, SIGTERM);
    return Exited(absl::Seconds(20));
  }

 private:
  std::string log_path_;
  pid_t pid_ = -1;
  std::optional<int> status_;
};

struct Client {
  explicit Client(const std::string& address)
      : channel(grpc::CreateChannel(address, grpc::InsecureChannelCredentials())),
        quota(v1::Quota::NewStub(channel)),
        admin(v1::Admin::NewStub(channel)) {}

  grpc::Status Acquire(const v1::AcquireRequest& req, v1::AcquireResponse* resp) {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
    return quota->Acquire(&ctx, req, resp);
  }

  int64_t Used(const std::string& credential, const std::string& limit) {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
    v1::GetUsageRequest req;
    req.set_credential(credential);
    v1::GetUsageResponse resp;
    grpc::Status s = admin->GetUsage(&ctx, req, &resp);
    EXPECT_OK(s);
    for (const v1::LimitStatus& l : resp.limits()) {
      if (l.name() == limit) return l.used();
    }
    return -1;
  }

  std::vector<std::string> LeaseIds(const std::string& credential) {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
    v1::ListLeasesRequest req;
    req.set_credential(credential);
    std::vector<std::string> ids;
    for (;;) {  // every page
      grpc::ClientContext page_ctx;
      page_ctx.set_deadline(ctx.deadline());
      v1::ListLeasesResponse resp;
      EXPECT_OK(admin->ListLeases(&page_ctx, req, &resp));
      for (const v1::Lease& l : resp.leases()) ids.push_back(l.lease_id());
      if (resp.next_page_token().empty()) break;
      req.set_page_token(resp.next_page_token());
    }
    return ids;
  }

  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::Quota::Stub> quota;
  std::unique_ptr<v1::Admin::Stub> admin;
};

v1::AcquireRequest Req(const std::string& credential, const std::string& feature) {
  v1::AcquireRequest r;
  r.set_credential(credential);
  r.set_feature(feature);
  return r;
}

absl::CivilDay TodayUtc() { return absl::ToCivilDay(absl::Now(), absl::UTCTimeZone()); }

class DurabilityTest : public ::testing::Test {
 protected:
  ::quotad::testing::TempDir dir_{"durability"};
  const std::string state_ = dir_.File("state.db");
  const std::string log_ = dir_.File("quotad.log");
};

TEST_F(DurabilityTest, SigkillAndRestartKeepUsageAndLeases) {
  const absl::CivilDay day = TodayUtc();
  std::string lease;
  {
    Quotad q(state_, log_);
    const std::string addr = q.WaitForAddress();
    ASSERT_FALSE(addr.empty()) << q.log();
    Client c(addr);
    for (int i = 0; i < 25; ++i) {
      v1::AcquireResponse r;
      ASSERT_OK(c.Acquire(Req("test/daily", "calls"), &r));
      ASSERT_TRUE(r.granted());
    }
    v1::AcquireResponse job;
    ASSERT_OK(c.Acquire(Req("test/daily", "jobs"), &job));
    ASSERT_TRUE(job.granted());
    lease = job.lease_id();
    q.Kill();
  }
  Quotad q(state_, log_);
  const std::string addr = q.WaitForAddress();
  ASSERT_FALSE(addr.empty()) << q.log();
  Client c(addr);
  if (TodayUtc() != day) GTEST_SKIP() << "the daily window turned over during the test";
  // Never below what was granted; above only by the reserved block a crash may leave unused.
  const int64_t used = c.Used("test/daily", "calls.per_day");
  EXPECT_GE(used, 25);
  EXPECT_LE(used, 25 + 200);
  const std::vector<std::string> ids = c.LeaseIds("test/daily");
  EXPECT_NE(std::find(ids.begin(), ids.end(), lease), ids.end()) << "lease " << lease << " lost";
  v1::AcquireResponse second_job;
  ASSERT_OK(c.Acquire(Req("test/daily", "jobs"), &second_job));
  EXPECT_FALSE(second_job.granted()) << "the restored lease must still hold the only slot";
  EXPECT_EQ(second_job.limited_by(), "jobs.concurrent");
  EXPECT_EQ(q.Stop(), 0) << q.log();
}

TEST_F(DurabilityTest, RequestIdRetryIsAnsweredTheSameAcrossARestart) {
  v1::AcquireRequest req = Req("test/dedup", "calls");
  req.set_request_id("upload-42");
  std::string first_lease;
  int64_t used_before = 0;
  {
    Quotad q(state_, log_);
    const std::string addr = q.WaitForAddress();
    ASSERT_FALSE(addr.empty()) << q.log();
    Client c(addr);
    v1::AcquireResponse r;
    ASSERT_OK(c.Acquire(req, &r));
    ASSERT_TRUE(r.granted());
    first_lease = r.lease_id();
    used_before = c.Used("test/dedup", "calls.per_day");
    EXPECT_EQ(q.Stop(), 0) << q.log();  // a clean stop writes the queued answers
  }
  Quotad q(state_, log_);
  const std::string addr = q.WaitForAddress();
  ASSERT_FALSE(addr.empty()) << q.log();
  Client c(addr);
  v1::AcquireResponse again;
  ASSERT_OK(c.Acquire(req, &again));
  EXPECT_TRUE(again.granted());
  EXPECT_EQ(again.lease_id(), first_lease);
  EXPECT_LE(c.Used("test/dedup", "calls.per_day"), std::max<int64_t>(used_before, 1) + 200);
  // The retry charged nothing: the next new request is the only new charge.
  const int64_t after_retry = c.Used("test/dedup", "calls.per_day");
  v1::AcquireResponse fresh;
  ASSERT_OK(c.Acquire(Req("test/dedup", "calls"), &fresh));
  EXPECT_EQ(c.Used("test/dedup", "calls.per_day"), after_retry + 1);
  EXPECT_EQ(q.Stop(), 0) << q.log();
}

TEST_F(DurabilityTest, CorruptStateFileStopsStartUpUnlessResetIsAsked) {
  {
    std::ofstream out(state_);
    out << "this is not a database";
  }
  {
    Quotad q(state_, log_);
    EXPECT_EQ(q.Exited(absl::Seconds(20)), 1);
    EXPECT_NE(q.log().find(state_), std::string::npos) << q.log();
    EXPECT_NE(q.log().find("corrupt"), std::string::npos) << q.log();
  }
  {
    Quotad q("", log_, {"--state="});
    EXPECT_EQ(q.Exited(absl::Seconds(20)), 1);
    EXPECT_NE(q.log().find("--memory_only"), std::string::npos) << q.log();
  }
  Quotad q(state_, log_, {"--reset_corrupt_state"});
  ASSERT_FALSE(q.WaitForAddress().empty()) << q.log();
  EXPECT_EQ(q.Stop(), 0);
}

// At least 20 lives: concurrent clients acquire on a 6000-per-day credential while the server
// is SIGKILLed at a random moment; each life restarts on the same file. The units granted over
// all lives never pass the capacity, the ledger's count never falls below them, and the slot
// taken in the first life stays held.
TEST_F(DurabilityTest, CrashLoopNeverOverGrantsAndKeepsLeases) {
  constexpr int kRounds = 20;
  constexpr int kClients = 4;
  constexpr int64_t kCapacity = 6000;
  const absl::CivilDay day = TodayUtc();
  std::mt19937 rng(std::random_device{}());
  // The kill comes after a random number of grants of the round (a point in the traffic, not a
  // time: the same on a fast and a slow machine).
  std::uniform_int_distribution<int64_t> kill_after_grants(1, 200);
  int64_t granted_total = 0;
  std::string slot_lease;
  const absl::Time began = absl::Now();
  for (int round = 0; round < kRounds; ++round) {
    Quotad q(state_, log_, {"--reserve_fraction=0.002"});
    const std::string addr = q.WaitForAddress();
    ASSERT_FALSE(addr.empty()) << "round " << round << ": " << q.log();
    Client admin(addr);
    if (round == 0) {
      v1::AcquireResponse job;
      ASSERT_OK(admin.Acquire(Req("test/crash", "jobs"), &job));
      ASSERT_TRUE(job.granted());
      slot_lease = job.lease_id();
    } else {
      const std::vector<std::string> ids = admin.LeaseIds("test/crash");
      EXPECT_NE(std::find(ids.begin(), ids.end(), slot_lease), ids.end())
          << "round " << round << ": slot lease lost";
      v1::AcquireResponse job;
      ASSERT_OK(admin.Acquire(Req("test/crash", "jobs"), &job));
      EXPECT_FALSE(job.granted()) << "round " << round << ": slot granted twice";
      const int64_t used = admin.Used("test/crash", "calls.per_day");
      EXPECT_GE(used, granted_total) << "round " << round << ": count fell below the grants";
    }
    std::atomic<bool> stop{false};
    std::atomic<int64_t> granted{0};
    std::vector<std::thread> clients;
    for (int i = 0; i < kClients; ++i) {
      clients.emplace_back([&] {
        Client c(addr);
        while (!stop.load()) {
          v1::AcquireResponse r;
          grpc::Status s = c.Acquire(Req("test/crash", "calls"), &r);
          if (!s.ok()) return;  // killed
          if (r.granted()) granted.fetch_add(1);
        }
      });
    }
    // Kill at a random point once the clients run (bounded: they stop on the first error).
    const int64_t kill_after = kill_after_grants(rng);
    ::quotad::testing::Eventually([&] { return granted.load() >= kill_after; }, absl::Seconds(20),
                                  absl::Microseconds(200));
    q.Kill();
    stop.store(true);
    for (std::thread& t : clients) t.join();
    granted_total += granted.load();
    ASSERT_LE(granted_total, kCapacity) << "round " << round << ": over-granted";
  }
  Quotad q(state_, log_);
  const std::string addr = q.WaitForAddress();
  ASSERT_FALSE(addr.empty()) << q.log();
  Client c(addr);
  if (TodayUtc() != day) GTEST_SKIP() << "the daily window turned over during the test";
  const int64_t used = c.Used("test/crash", "calls.per_day");
  EXPECT_GE(used, granted_total);
  EXPECT_LE(used, kCapacity);
  const std::vector<std::string> ids = c.LeaseIds("test/crash");
  EXPECT_NE(std::find(ids.begin(), ids.end(), slot_lease), ids.end());
  EXPECT_EQ(q.Stop(), 0);
  std::printf("crash loop: rounds=%d granted=%lld used_after=%lld capacity=%lld took=%s\n", kRounds,
              static_cast<long long>(granted_total), static_cast<long long>(used),
              static_cast<long long>(kCapacity), absl::FormatDuration(absl::Now() - began).c_str());
  EXPECT_LT(absl::Now() - began, absl::Seconds(90));
}

}  // namespace
}  // namespace quotad
