// The real quotad binary: start-up on port 0, fail-fast start-up errors, graceful SIGTERM.

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "quotad/v1/quotad.grpc.pb.h"
#include "tests/support/child_process.h"
#include "tests/support/eventually.h"
#include "tests/support/grpc_status_matchers.h"
#include "tests/support/temp_dir.h"

namespace {

using ::quotad::testing::IsOk;
using ::testing::Not;

using grpc::health::v1::Health;
using grpc::health::v1::HealthCheckRequest;
using grpc::health::v1::HealthCheckResponse;

// The real quotad binary, its output in a file; SIGKILLed if the test did not stop it.
class QuotadProcess : public quotad::testing::ChildProcess {
 public:
  explicit QuotadProcess(std::vector<std::string> args)
      : ChildProcess(QUOTAD_BINARY, std::move(args)) {}
};

TEST(BinaryTest, SigtermGoesNotServingEndsWatchersAndExitsZero) {
  QuotadProcess quotad(
      {absl::StrCat("--config=", QUOTAD_TEST_CONFIG), "--listen=127.0.0.1:0", "--memory_only"});
  std::optional<int> port = quotad.WaitForPort(absl::Seconds(20));
  ASSERT_TRUE(port.has_value()) << quotad.log();
  auto channel =
      grpc::CreateChannel(absl::StrCat("127.0.0.1:", *port), grpc::InsecureChannelCredentials());
  auto quota = quotad::v1::Quota::NewStub(channel);
  auto health = Health::NewStub(channel);

  {
    grpc::ClientContext ctx;
    quotad::v1::AcquireRequest req;
    req.set_credential("test/race");
    req.set_feature("calls");
    quotad::v1::AcquireResponse resp;
    ASSERT_OK(quota->Acquire(&ctx, req, &resp));
    EXPECT_TRUE(resp.granted());
  }

  // A Watch stream sees SERVING, then NOT_SERVING on SIGTERM, then its end.
  grpc::ClientContext watch_ctx;
  watch_ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
  HealthCheckRequest watch_req;
  auto reader = health->Watch(&watch_ctx, watch_req);
  HealthCheckResponse update;
  ASSERT_TRUE(reader->Read(&update));
  EXPECT_EQ(update.status(), HealthCheckResponse::SERVING);

  quotad.Signal(SIGTERM);
  ASSERT_TRUE(reader->Read(&update));
  EXPECT_EQ(update.status(), HealthCheckResponse::NOT_SERVING);
  EXPECT_FALSE(reader->Read(&update));
  EXPECT_OK(reader->Finish());

  std::optional<int> code = quotad.WaitForExit(absl::Seconds(20));
  ASSERT_TRUE(code.has_value()) << "quotad did not exit after SIGTERM\n" << quotad.log();
  EXPECT_EQ(*code, 0) << quotad.log();
  EXPECT_NE(quotad.log().find("stopped"), std::string::npos) << quotad.log();

  // New calls are refused.
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(2)));
  HealthCheckResponse resp;
  EXPECT_THAT(health->Check(&ctx, HealthCheckRequest(), &resp), Not(IsOk()));
}

// Runs quotactl with `args`; returns its exit code and fills `output` with stdout and stderr.
int RunQuotactl(const std::string& args, std::string* output) {
  const std::string command = absl::StrCat(QUOTACTL_BINARY, " ", args, " 2>&1");
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return -1;
  output->clear();
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), pipe)) > 0) output->append(buf, n);
  const int status = pclose(pipe);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

TEST(BinaryTest, QuotactlExitCodesAndOutput) {
  QuotadProcess quotad(
      {absl::StrCat("--config=", QUOTAD_TEST_CONFIG), "--listen=127.0.0.1:0", "--memory_only"});
  std::optional<int> port = quotad.WaitForPort(absl::Seconds(20));
  ASSERT_TRUE(port.has_value()) << quotad.log();
  const std::string server = absl::StrCat("--server=127.0.0.1:", *port);
  std::string out;
  EXPECT_EQ(RunQuotactl(server + " acquire test/short jobs --ttl=5s", &out), 0) << out;
  EXPECT_NE(out.find("granted"), std::string::npos) << out;
  EXPECT_NE(out.find("jobs.concurrent"), std::string::npos) << out;
  EXPECT_EQ(RunQuotactl(server + " acquire test/short jobs", &out), 1) << out;
  EXPECT_NE(out.find("denied  by jobs.concurrent"), std::string::npos) << out;
  EXPECT_EQ(RunQuotactl(server + " --json acquire test/short jobs", &out), 1) << out;
  EXPECT_NE(out.find("\"limitedBy\": \"jobs.concurrent\""), std::string::npos) << out;
  EXPECT_EQ(RunQuotactl(server + " acquire nobody/prod requests", &out), 2) << out;
  EXPECT_NE(out.find("NOT_FOUND"), std::string::npos) << out;
  EXPECT_EQ(RunQuotactl(server + " acquire virustotal/prod requests --cost=0", &out), 2) << out;
  EXPECT_NE(out.find("INVALID_ARGUMENT: cost must be positive, got 0"), std::string::npos) << out;
  EXPECT_EQ(RunQuotactl(server + " leases test/short", &out), 0) << out;
  EXPECT_NE(out.find("test/short"), std::string::npos) << out;
  EXPECT_EQ(RunQuotactl(server + " --json usage test/short", &out), 0) << out;
  EXPECT_NE(out.find("\"profile\": \"test-short-ttl\""), std::string::npos) << out;
  EXPECT_EQ(RunQuotactl(server + " credentials", &out), 0) << out;
  EXPECT_NE(out.find("virustotal-public"), std::string::npos) << out;
  EXPECT_EQ(RunQuotactl(server + " renew 0123", &out), 2) << out;
  EXPECT_EQ(RunQuotactl(server + " frobnicate", &out), 2) << out;
  quotad.Signal(SIGTERM);
  EXPECT_EQ(quotad.WaitForExit(absl::Seconds(20)), std::optional<int>(0));
}

TEST(BinaryTest, BadConfigFailsFastWithMessage) {
  char tmpl[] = "/tmp/quotad_bad_config_XXXXXX.yaml";
  const int fd = mkstemps(tmpl, 5);
  const std::string bad = "credentials:\n  - name: x/y\n    profile: no-such-profile\n";
  ASSERT_EQ(write(fd, bad.data(), bad.size()), static_cast<ssize_t>(bad.size()));
  close(fd);
  QuotadProcess quotad({absl::StrCat("--config=", tmpl), "--listen=127.0.0.1:0", "--memory_only"});
  std::optional<int> code = quotad.WaitForExit(absl::Seconds(20));
  unlink(tmpl);
  ASSERT_TRUE(code.has_value());
  EXPECT_NE(*code, 0);
  EXPECT_NE(quotad.log().find("no-such-profile"), std::string::npos) << quotad.log();
}

TEST(BinaryTest, BusyPortFailsFastWithMessage) {
  QuotadProcess first(
      {absl::StrCat("--config=", QUOTAD_TEST_CONFIG), "--listen=127.0.0.1:0", "--memory_only"});
  std::optional<int> port = first.WaitForPort(absl::Seconds(20));
  ASSERT_TRUE(port.has_value()) << first.log();
  const std::string addr = absl::StrCat("127.0.0.1:", *port);
  QuotadProcess second(
      {absl::StrCat("--config=", QUOTAD_TEST_CONFIG), "--listen=" + addr, "--memory_only"});
  std::optional<int> code = second.WaitForExit(absl::Seconds(20));
  ASSERT_TRUE(code.has_value()) << second.log();
  EXPECT_NE(*code, 0);
  EXPECT_NE(second.log().find("cannot listen on " + addr), std::string::npos) << second.log();
  first.Signal(SIGTERM);
  EXPECT_EQ(first.WaitForExit(absl::Seconds(20)), std::optional<int>(0));
}

}  // namespace

namespace config_watch {

// A config directory laid out the way Kubernetes mounts a ConfigMap: quotad.yaml is a symlink
// into a versioned directory, and an update swaps the symlink atomically.
class ConfigDir {
 public:
  void Publish(const std::string& yaml) {
    const std::string dir = dir_.File(absl::StrCat("v", ++version_));
    mkdir(dir.c_str(), 0755);
    std::ofstream(dir + "/quotad.yaml") << yaml;
    const std::string tmp_link = dir_.File("quotad.yaml.tmp");
    unlink(tmp_link.c_str());
    symlink((dir + "/quotad.yaml").c_str(), tmp_link.c_str());
    rename(tmp_link.c_str(), path().c_str());  // atomic swap
  }
  std::string path() const { return dir_.File("quotad.yaml"); }

 private:
  ::quotad::testing::TempDir dir_{"watch"};
  int version_ = 0;
};

std::string DailyConfig(int capacity) {
  return absl::StrCat(
      "profiles:\n"
      "  - name: watched\n"
      "    features:\n"
      "      - name: calls\n"
      "        limits:\n"
      "          - {name: per_day, kind: calendar, unit: day, capacity: ",
      capacity,
      "}\n"
      "credentials:\n"
      "  - {name: watch/key, profile: watched}\n");
}

bool Acquire(quotad::v1::Quota::Stub& quota) {
  grpc::ClientContext ctx;
  quotad::v1::AcquireRequest req;
  req.set_credential("watch/key");
  req.set_feature("calls");
  quotad::v1::AcquireResponse resp;
  EXPECT_OK(quota.Acquire(&ctx, req, &resp));
  return resp.granted();
}

TEST(BinaryTest, ChangedConfigFileIsReloadedKeepingUsageAndABadOneIsRejected) {
  ConfigDir dir;
  dir.Publish(DailyConfig(2));
  QuotadProcess quotad({absl::StrCat("--config=", dir.path()), "--listen=127.0.0.1:0",
                        "--memory_only", "--metrics_listen=", "--sweep_interval=50ms",
                        "--config_watch_interval=50ms"});
  std::optional<int> port = quotad.WaitForPort(absl::Seconds(20));
  ASSERT_TRUE(port.has_value()) << quotad.log();
  auto quota = quotad::v1::Quota::NewStub(
      grpc::CreateChannel(absl::StrCat("127.0.0.1:", *port), grpc::InsecureChannelCredentials()));
  EXPECT_TRUE(Acquire(*quota));
  EXPECT_TRUE(Acquire(*quota));
  EXPECT_FALSE(Acquire(*quota));

  // A new capacity of 5 keeps the 2 used, and applies from the next day: today stays at the
  // stricter of the two configurations (SPEC section 2), so nothing more today.
  dir.Publish(DailyConfig(5));
  ASSERT_TRUE(::quotad::testing::Eventually(
      [&] { return quotad.log().find("config reloaded") != std::string::npos; }, absl::Seconds(20)))
      << quotad.log();
  int granted = 0;
  for (int i = 0; i < 6; ++i) granted += Acquire(*quota);
  EXPECT_EQ(granted, 0);

  // A bad file is rejected and logged; the config in force stays.
  dir.Publish(DailyConfig(-1));
  ASSERT_TRUE(::quotad::testing::Eventually(
      [&] { return quotad.log().find("reload rejected") != std::string::npos; }, absl::Seconds(20)))
      << quotad.log();
  const std::string log = quotad.log();
  ASSERT_NE(log.find("reload rejected"), std::string::npos) << log;
  EXPECT_NE(log.find("capacity"), std::string::npos) << log;  // names the bad field
  EXPECT_FALSE(Acquire(*quota));
  grpc::ClientContext ctx;
  quotad::v1::GetUsageRequest usage_req;
  usage_req.set_credential("watch/key");
  quotad::v1::GetUsageResponse usage;
  ASSERT_OK(quotad::v1::Admin::NewStub(grpc::CreateChannel(absl::StrCat("127.0.0.1:", *port),
                                                           grpc::InsecureChannelCredentials()))
                ->GetUsage(&ctx, usage_req, &usage));
  ASSERT_EQ(usage.limits_size(), 1);
  EXPECT_EQ(usage.limits(0).capacity(), 5);
  EXPECT_EQ(usage.limits(0).used(), 2);
}

}  // namespace config_watch
