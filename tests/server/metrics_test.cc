// Metrics (service/server/metrics.h): the counters and gauges as the server feeds them, their
// refresh from a real ledger on a fake clock, and the HTTP endpoint that serves them.

#include "service/server/metrics.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "service/config/config.h"
#include "service/core/clock.h"
#include "service/core/ledger.h"
#include "tests/server/http_get.h"
#include "tests/support/status_matchers.h"

namespace quotad {
namespace {

using ::quotad::testing::StatusIs;
using ::testing::HasSubstr;
using ::testing::Not;

constexpr char kConfig[] = R"(
credentials:
  - name: team-a/key
    features:
      - name: requests
        limits:
          - {name: per_minute, kind: sliding, capacity: 2, period: 1m}
      - name: jobs
        limits:
          - {name: slots, kind: concurrency, capacity: 1}
  - name: team-b/key
    features:
      - name: requests
        limits:
          - {name: per_day, kind: calendar, capacity: 100, unit: day}
)";

class MetricsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_OK_AND_ASSIGN(LoadedConfig config, LoadConfigFromString(kConfig, "metrics_test.yaml"));
    ASSERT_OK_AND_ASSIGN(ledger_, Ledger::Create(config.policy, &clock_));
    ASSERT_OK_AND_ASSIGN(metrics_, Metrics::Create(""));
  }

  // Acquires through the ledger and reports the decision the way the server does.
  Decision Acquire(const std::string& credential, const std::string& feature) {
    AcquireRequest req;
    req.credential = credential;
    req.feature = feature;
    absl::StatusOr<Decision> d = ledger_->Acquire(req);
    EXPECT_OK(d);
    if (!d.ok()) return {};
    metrics_->OnDecision("Acquire", credential, feature, d->granted, d->limited_by,
                         absl::Microseconds(20));
    return *d;
  }

  FakeClock clock_;
  std::unique_ptr<Ledger> ledger_;
  std::unique_ptr<Metrics> metrics_;
};

TEST_F(MetricsTest, CountsGrantsAndDenialsByLimit) {
  Acquire("team-a/key", "requests");
  Acquire("team-a/key", "requests");
  Acquire("team-a/key", "requests");
  const std::string text = metrics_->Serialize();
  EXPECT_THAT(text, HasSubstr("quotad_decisions_total{credential=\"team-a/key\",feature="
                              "\"requests\",result=\"granted\"} 2"));
  EXPECT_THAT(text, HasSubstr("quotad_decisions_total{credential=\"team-a/key\",feature="
                              "\"requests\",result=\"denied\"} 1"));
  EXPECT_THAT(text, HasSubstr("quotad_denials_total{credential=\"team-a/key\",limit="
                              "\"requests.per_minute\"} 1"));
  EXPECT_THAT(text, HasSubstr("quotad_decision_latency_seconds_count{method=\"Acquire\"} 3"));
}

TEST_F(MetricsTest, RefreshSetsRemainingCapacityAndLiveLeases) {
  Acquire("team-a/key", "requests");
  Acquire("team-a/key", "jobs");
  metrics_->Refresh(*ledger_, clock_.Now());
  const std::string text = metrics_->Serialize();
  EXPECT_THAT(text, HasSubstr("quotad_remaining_units{credential=\"team-a/key\",limit="
                              "\"requests.per_minute\"} 1"));
  EXPECT_THAT(text, HasSubstr("quotad_capacity_units{credential=\"team-a/key\",limit="
                              "\"requests.per_minute\"} 2"));
  EXPECT_THAT(text, HasSubstr("quotad_remaining_units{credential=\"team-a/key\",limit="
                              "\"jobs.slots\"} 0"));
  EXPECT_THAT(text, HasSubstr("quotad_remaining_units{credential=\"team-b/key\",limit="
                              "\"requests.per_day\"} 100"));
  EXPECT_THAT(text, HasSubstr("quotad_live_leases{credential=\"team-a/key\"} 2"));
  EXPECT_THAT(text, HasSubstr("quotad_live_leases{credential=\"team-b/key\"} 0"));
  EXPECT_THAT(text, HasSubstr("quotad_queue_depth 0"));
}

TEST_F(MetricsTest, RefreshMovesWithTheWindow) {
  Acquire("team-a/key", "requests");
  Acquire("team-a/key", "requests");
  metrics_->Refresh(*ledger_, clock_.Now());
  EXPECT_THAT(metrics_->Serialize(),
              HasSubstr("quotad_remaining_units{credential=\"team-a/key\",limit="
                        "\"requests.per_minute\"} 0"));
  clock_.Advance(absl::Minutes(2));
  metrics_->Refresh(*ledger_, clock_.Now());
  EXPECT_THAT(metrics_->Serialize(),
              HasSubstr("quotad_remaining_units{credential=\"team-a/key\",limit="
                        "\"requests.per_minute\"} 2"));
}

TEST_F(MetricsTest, RemovedCredentialsLoseTheirSeriesOnReload) {
  metrics_->Refresh(*ledger_, clock_.Now());
  EXPECT_THAT(metrics_->Serialize(), HasSubstr("credential=\"team-b/key\""));
  absl::StatusOr<LoadedConfig> smaller = LoadConfigFromString(R"(
credentials:
  - name: team-a/key
    features:
      - name: requests
        limits:
          - {name: per_minute, kind: sliding, capacity: 2, period: 1m}
)",
                                                              "smaller.yaml");
  ASSERT_OK(smaller);
  ASSERT_OK(ledger_->Reload(smaller->policy));
  metrics_->Refresh(*ledger_, clock_.Now());
  const std::string text = metrics_->Serialize();
  EXPECT_THAT(text, Not(HasSubstr("quotad_remaining_units{credential=\"team-b/key\"")));
  EXPECT_THAT(text, Not(HasSubstr("quotad_live_leases{credential=\"team-b/key\"")));
  EXPECT_THAT(text, Not(HasSubstr("jobs.slots")));
}

TEST_F(MetricsTest, CooldownIsActiveUntilItEnds) {
  metrics_->OnCooldown("team-a/key", "requests", clock_.Now() + absl::Seconds(30));
  metrics_->Refresh(*ledger_, clock_.Now());
  std::string text = metrics_->Serialize();
  EXPECT_THAT(text, HasSubstr("quotad_cooldowns_total{credential=\"team-a/key\",feature="
                              "\"requests\"} 1"));
  EXPECT_THAT(text, HasSubstr("quotad_cooldown_active{credential=\"team-a/key\",feature="
                              "\"requests\"} 1"));
  clock_.Advance(absl::Seconds(31));
  metrics_->Refresh(*ledger_, clock_.Now());
  EXPECT_THAT(metrics_->Serialize(),
              HasSubstr("quotad_cooldown_active{credential=\"team-a/key\",feature="
                        "\"requests\"} 0"));
}

TEST_F(MetricsTest, CountsErrorsAuthFailuresWaitsStoreErrorsAndReloads) {
  metrics_->OnRequestError("Acquire", "NOT_FOUND");
  metrics_->OnRequestError("Acquire", "NOT_FOUND");
  metrics_->OnAuthFailure("unauthenticated");
  metrics_->OnWait("team-a/key");
  metrics_->OnStoreError("reserve");
  metrics_->OnConfigReload(false);
  const std::string text = metrics_->Serialize();
  EXPECT_THAT(text,
              HasSubstr("quotad_request_errors_total{code=\"NOT_FOUND\",method=\"Acquire\"} 2"));
  EXPECT_THAT(text, HasSubstr("quotad_auth_failures_total{reason=\"unauthenticated\"} 1"));
  EXPECT_THAT(text, HasSubstr("quotad_waits_total{credential=\"team-a/key\"} 1"));
  EXPECT_THAT(text, HasSubstr("quotad_store_errors_total{operation=\"reserve\"} 1"));
  EXPECT_THAT(text, HasSubstr("quotad_config_reloads_total{result=\"rejected\"} 1"));
}

TEST_F(MetricsTest, StateFileAndWalSizesAreGauges) {
  metrics_->SetStateFileSizes(3 << 20, 4096);
  const std::string text = metrics_->Serialize();
  EXPECT_THAT(text, HasSubstr("quotad_state_file_bytes 3145728"));
  EXPECT_THAT(text, HasSubstr("quotad_state_wal_bytes 4096"));
}

TEST_F(MetricsTest, ServesTheRegistryOverHttp) {
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Metrics> served, Metrics::Create("127.0.0.1:0"));
  ASSERT_GT(served->port(), 0);
  served->OnDecision("Acquire", "team-a/key", "requests", true, "", absl::Microseconds(5));
  const std::string body = testing::HttpGet(served->port(), "/metrics");
  EXPECT_THAT(body, HasSubstr("quotad_decisions_total{credential=\"team-a/key\",feature="
                              "\"requests\",result=\"granted\"} 1"));
}

// A connection to 127.0.0.1:`port` that sends the start of a request and then nothing.
int HalfOpen(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) return -1;
  const char partial[] = "GET /metrics HTTP/1.1\r\n";
  send(fd, partial, sizeof(partial) - 1, 0);
  return fd;
}

// GET /metrics with a receive timeout: "" when no answer came within `timeout`.
std::string GetWithin(int port, absl::Duration timeout) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  timeval tv = absl::ToTimeval(timeout);
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string response;
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
    const std::string request = "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
    send(fd, request.data(), request.size(), 0);
    char buf[4096];
    for (;;) {
      const ssize_t n = recv(fd, buf, sizeof(buf), 0);
      if (n <= 0) break;
      response.append(buf, static_cast<size_t>(n));
    }
  }
  close(fd);
  return response;
}

// Finding 7: with one civetweb worker, one half-open GET stalled /metrics for its whole timeout.
TEST_F(MetricsTest, AHalfOpenClientDoesNotStallTheScrape) {
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Metrics> served, Metrics::Create("127.0.0.1:0"));
  const int stuck = HalfOpen(served->port());
  ASSERT_GE(stuck, 0);
  EXPECT_THAT(GetWithin(served->port(), absl::Seconds(3)), HasSubstr(" 200 "));
  close(stuck);
}

// Finding 7: a client that sends nothing more holds a worker only for the request timeout.
TEST_F(MetricsTest, AHalfOpenClientIsDroppedAfterTheRequestTimeout) {
  MetricsHttpOptions http;
  http.threads = 1;
  http.request_timeout = absl::Milliseconds(300);
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Metrics> served, Metrics::Create("127.0.0.1:0", http));
  const int stuck = HalfOpen(served->port());
  ASSERT_GE(stuck, 0);
  EXPECT_THAT(GetWithin(served->port(), absl::Seconds(5)), HasSubstr(" 200 "));
  close(stuck);
}

TEST_F(MetricsTest, RefusesBadHttpOptions) {
  MetricsHttpOptions http;
  http.threads = 0;
  EXPECT_THAT(Metrics::Create("", http), StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST_F(MetricsTest, RefusesAnAddressInUse) {
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Metrics> first, Metrics::Create("127.0.0.1:0"));
  EXPECT_THAT(Metrics::Create(absl::StrCat("127.0.0.1:", first->port())),
              StatusIs(absl::StatusCode::kUnavailable));
}

}  // namespace
}  // namespace quotad
