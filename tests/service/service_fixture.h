#ifndef QUOTAD_TESTS_SERVICE_SERVICE_FIXTURE_H_
#define QUOTAD_TESTS_SERVICE_SERVICE_FIXTURE_H_

// The service layer without a socket: a real Ledger on a FakeClock, a real store (memory only,
// or a temp SQLite file via OpenStore), real Metrics without an endpoint, and the services
// called directly with a Caller as the transport would build it. Not thread-safe.

#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "service/config/config.h"
#include "service/core/clock.h"
#include "service/core/ledger.h"
#include "service/server/admin_service.h"
#include "service/server/auth.h"
#include "service/server/idempotency.h"
#include "service/server/logging.h"
#include "service/server/metrics.h"
#include "service/server/quota_service.h"
#include "service/server/serving_config.h"
#include "service/server/status_page.h"
#include "service/store/store.h"
#include "tests/support/status_matchers.h"
#include "tests/support/temp_dir.h"

namespace quotad {
namespace testing {

// Two credentials; alice may use team-a/*, bob team-b/key, ops is an admin.
inline constexpr char kServiceConfig[] = R"(
credentials:
  - name: team-a/key
    features:
      - name: requests
        limits:
          - {name: per_minute, kind: rolling, capacity: 2, period: 1m}
      - name: jobs
        limits:
          - {name: slots, kind: concurrency, capacity: 1}
  - name: team-b/key
    features:
      - name: requests
        limits:
          - {name: per_minute, kind: rolling, capacity: 5, period: 1m}
AUTH)";

inline constexpr char kAuthSection[] = R"(
auth:
  tokens:
    - {identity: alice, sha256: ALICE}
    - {identity: bob, sha256: BOB}
    - {identity: ops, sha256: OPS}
  rules:
    - {identity: alice, credentials: ["team-a/*"], methods: ["*"]}
    - {identity: bob, credentials: [team-b/key], methods: [Acquire, Release, Renew, Report]}
  admins: [ops]
)";

inline std::string ServiceConfigYaml(bool auth) {
  return absl::StrReplaceAll(
      kServiceConfig,
      {{"AUTH", auth ? absl::StrReplaceAll(kAuthSection, {{"ALICE", Sha256Hex("alice-token")},
                                                          {"BOB", Sha256Hex("bob-token")},
                                                          {"OPS", Sha256Hex("ops-token")}})
                     : ""}});
}

struct FixtureOptions {
  bool auth = true;
  bool sqlite = false;  // a temp SQLite state file instead of memory only
  int64_t max_request_ids = 1000;
  int64_t max_waiters_per_identity = 1000;
};

class ServiceFixture : public ::testing::Test {
 protected:
  // Builds everything; call from each test (or SetUp) with the options it needs.
  void Build(FixtureOptions options = {}) {
    options_ = options;
    config_path_ = dir_.File("quotad.yaml");
    WriteConfig(ServiceConfigYaml(options.auth));
    ASSERT_OK_AND_ASSIGN(LoadedConfig loaded, LoadConfigFile(config_path_, ConfigLimits()));
    StoreOptions store_options;
    if (options.sqlite) store_options.path = dir_.File("state.db");
    ASSERT_OK_AND_ASSIGN(store_, OpenStore(store_options, absl::ToUnixNanos(clock_.Now())));
    LedgerOptions ledger_options;
    ledger_options.journal = store_->journal();
    ASSERT_OK_AND_ASSIGN(ledger_, Ledger::Create(loaded.policy, &clock_, ledger_options));
    ASSERT_OK_AND_ASSIGN(metrics_, Metrics::Create(""));
    config_ = std::make_unique<ConfigInForce>(loaded);
    request_ids_ =
        std::make_unique<RequestIds>(&store_->dedup(), &clock_, metrics_.get(),
                                     RequestIdOptions{absl::Minutes(10), options.max_request_ids});
    QuotaServiceOptions quota_options;
    quota_options.max_waiters_per_identity = options.max_waiters_per_identity;
    quota_ = std::make_unique<QuotaService>(ledger_.get(), request_ids_.get(), metrics_.get(),
                                            &throttles_, &sampler_, quota_options);
    admin_ = std::make_unique<AdminService>(ledger_.get(), config_.get(), metrics_.get(),
                                            config_path_, ConfigLimits());
  }

  void TearDown() override {
    if (ledger_ != nullptr) ledger_->AnswerAllWaiters(absl::UnavailableError("test over"));
  }

  // Replaces the config file at once (written aside, then renamed over it).
  void WriteConfig(const std::string& yaml) {
    std::filesystem::rename(dir_.WriteFile("quotad.yaml.tmp", yaml), config_path_);
  }

  // The caller presenting `token` (no header when empty), as the transport builds it.
  absl::StatusOr<Caller> CallerWith(const std::string& token) {
    if (token.empty()) return config_->Authenticate(std::nullopt);
    return config_->Authenticate(absl::StrCat("Bearer ", token));
  }
  Caller MustCaller(const std::string& token) {
    absl::StatusOr<Caller> caller = CallerWith(token);
    EXPECT_THAT(caller, IsOk());
    return caller.ok() ? *caller : Caller{};
  }

  // Acquire answered at once (no max_wait): the answer `done` got.
  absl::StatusOr<v1::AcquireResponse> Acquire(const Caller& caller,
                                              const v1::AcquireRequest& request) {
    std::optional<absl::StatusOr<v1::AcquireResponse>> answer;
    std::optional<WaitTicket> ticket = quota_->Acquire(
        caller, request, [&](absl::StatusOr<v1::AcquireResponse> a) { answer = std::move(a); });
    EXPECT_FALSE(ticket.has_value() && !answer.has_value()) << "the Acquire was parked";
    if (!answer.has_value()) return absl::InternalError("no answer");
    return *std::move(answer);
  }

  static v1::AcquireRequest AcquireOf(const std::string& credential, const std::string& feature,
                                      const std::string& request_id = "") {
    v1::AcquireRequest req;
    req.set_credential(credential);
    req.set_feature(feature);
    req.set_request_id(request_id);
    req.set_holder("worker-1");
    return req;
  }

  FixtureOptions options_;
  TempDir dir_{"service"};
  std::string config_path_;
  FakeClock clock_;
  std::unique_ptr<Store> store_;
  std::unique_ptr<Ledger> ledger_;
  std::unique_ptr<Metrics> metrics_;
  std::unique_ptr<ConfigInForce> config_;
  ThrottleLog throttles_;
  LogSampler sampler_{0};
  std::unique_ptr<RequestIds> request_ids_;
  std::unique_ptr<QuotaService> quota_;
  std::unique_ptr<AdminService> admin_;
};

}  // namespace testing
}  // namespace quotad

#endif  // QUOTAD_TESTS_SERVICE_SERVICE_FIXTURE_H_
