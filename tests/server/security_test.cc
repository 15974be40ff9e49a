// QuotadServer's security over the wire: a real server on loopback with TLS, mutual TLS and
// certificate rotation, bearer tokens, access rules, lease ownership, and the metrics endpoint
// that counts them. Certificates come from a throw-away CA made with openssl; the server runs on
// a FakeClock (its sweeper refreshes the gauges when a test advances it). The units behind
// it have their own tests: auth_test (Authorizer), tls_test (credentials), metrics_test
// (Metrics), tests/service (the services' checks, without a socket).

#include <grpcpp/grpcpp.h>

#include <cstdio>
#include <fstream>
#include <memory>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "quotad/v1/quotad.grpc.pb.h"
#include "service/core/clock.h"
#include "service/server/auth.h"
#include "service/server/server.h"
#include "tests/server/http_get.h"
#include "tests/server/test_certs.h"
#include "tests/support/eventually.h"
#include "tests/support/grpc_status_matchers.h"

namespace quotad {
namespace {

using ::quotad::testing::Eventually;
using ::quotad::testing::StatusIs;
using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::Not;

constexpr char kConfigTemplate[] = R"(
credentials:
  - name: team-a/key
    features:
      - name: requests
        limits:
          - {name: per_minute, kind: sliding, capacity: 100, period: 1m}
  - name: team-b/key
    features:
      - name: requests
        limits:
          - {name: per_minute, kind: sliding, capacity: 100, period: 1m}
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

class SecurityTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(certs_.made()) << "openssl could not make test certificates";
    config_path_ = certs_.dir() + "/quotad.yaml";
    std::ofstream(config_path_) << absl::StrReplaceAll(kConfigTemplate,
                                                       {{"ALICE", Sha256Hex("alice-token")},
                                                        {"BOB", Sha256Hex("bob-token")},
                                                        {"OPS", Sha256Hex("ops-token")}});
  }

  void StartServer(bool mutual, const std::string& cert = "", const std::string& key = "",
                   absl::Duration refresh = absl::Minutes(1)) {
    ServerOptions options;
    options.clock = &clock_;
    options.config_path = config_path_;
    options.memory_only = true;
    options.listen_address = "127.0.0.1:0";
    options.sweep_interval = absl::Milliseconds(50);
    options.metrics_listen = "127.0.0.1:0";
    options.metrics_refresh = absl::Milliseconds(50);
    options.tls.cert_path = cert.empty() ? certs_.Cert("server") : cert;
    options.tls.key_path = key.empty() ? certs_.Key("server") : key;
    options.tls.refresh_interval = refresh;
    if (mutual) options.tls.client_ca_path = certs_.Cert("ca");
    ASSERT_OK_AND_ASSIGN(server_, QuotadServer::Start(options));
  }

  // A TLS channel trusting `ca`, with the client certificate `client` ("" for none), on a
  // connection of its own.
  std::shared_ptr<grpc::Channel> TlsChannel(const std::string& client,
                                            const std::string& ca = "ca") {
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = testing::TestCerts::Read(certs_.Cert(ca));
    if (!client.empty()) {
      ssl.pem_cert_chain = testing::TestCerts::Read(certs_.Cert(client));
      ssl.pem_private_key = testing::TestCerts::Read(certs_.Key(client));
    }
    grpc::ChannelArguments args;
    args.SetSslTargetNameOverride("localhost");
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    return grpc::CreateCustomChannel(server_->address(), grpc::SslCredentials(ssl), args);
  }

  static std::unique_ptr<grpc::ClientContext> Context(const std::string& token) {
    auto ctx = std::make_unique<grpc::ClientContext>();
    ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    if (!token.empty()) ctx->AddMetadata("authorization", "Bearer " + token);
    return ctx;
  }

  grpc::Status Acquire(grpc::Channel* channel, const std::string& token,
                       const std::string& credential, v1::AcquireResponse* resp) {
    auto stub = v1::Quota::NewStub(std::shared_ptr<grpc::Channel>(channel, [](auto*) {}));
    v1::AcquireRequest req;
    req.set_credential(credential);
    req.set_feature("requests");
    req.set_holder("worker-1");
    return stub->Acquire(Context(token).get(), req, resp);
  }

  grpc::Status Release(grpc::Channel* channel, const std::string& token, const std::string& lease) {
    auto stub = v1::Quota::NewStub(std::shared_ptr<grpc::Channel>(channel, [](auto*) {}));
    v1::ReleaseRequest req;
    req.set_lease_id(lease);
    v1::ReleaseResponse resp;
    return stub->Release(Context(token).get(), req, &resp);
  }

  grpc::Status Renew(grpc::Channel* channel, const std::string& token, const std::string& lease) {
    auto stub = v1::Quota::NewStub(std::shared_ptr<grpc::Channel>(channel, [](auto*) {}));
    v1::RenewRequest req;
    req.set_lease_id(lease);
    v1::RenewResponse resp;
    return stub->Renew(Context(token).get(), req, &resp);
  }

  // The value of one series in the metrics text, or -1.
  static double Metric(const std::string& text, const std::string& series) {
    const size_t at = text.find(series + " ");
    if (at == std::string::npos) return -1;
    const size_t start = at + series.size() + 1;
    double v = -1;
    if (!absl::SimpleAtod(text.substr(start, text.find('\n', start) - start), &v)) return -1;
    return v;
  }

  testing::TestCerts certs_;
  std::string config_path_;
  // The server's time: its sweeper (which refreshes the metrics' gauges) runs when the test
  // advances it. Declared before the server, which must not outlive it.
  FakeClock clock_{absl::Now()};
  std::unique_ptr<QuotadServer> server_;
};

TEST_F(SecurityTest, PlaintextClientIsRefusedWhenTlsIsRequired) {
  StartServer(/*mutual=*/false);
  auto channel = grpc::CreateChannel(server_->address(), grpc::InsecureChannelCredentials());
  v1::AcquireResponse resp;
  EXPECT_THAT(Acquire(channel.get(), "alice-token", "team-a/key", &resp),
              StatusIs(absl::StatusCode::kUnavailable));
}

TEST_F(SecurityTest, TlsClientWithoutCertificateIsServedWithoutMutualTls) {
  StartServer(/*mutual=*/false);
  auto channel = TlsChannel("");
  v1::AcquireResponse resp;
  ASSERT_OK(Acquire(channel.get(), "alice-token", "team-a/key", &resp));
  EXPECT_TRUE(resp.granted());
}

TEST_F(SecurityTest, MutualTlsRefusesNoCertificateAndOneFromAnotherCa) {
  StartServer(/*mutual=*/true);
  v1::AcquireResponse resp;
  auto plaintext = grpc::CreateChannel(server_->address(), grpc::InsecureChannelCredentials());
  EXPECT_THAT(Acquire(plaintext.get(), "alice-token", "team-a/key", &resp),
              StatusIs(absl::StatusCode::kUnavailable));
  auto no_cert = TlsChannel("");
  EXPECT_THAT(Acquire(no_cert.get(), "alice-token", "team-a/key", &resp),
              StatusIs(absl::StatusCode::kUnavailable));
  auto other_ca = TlsChannel("other_client");
  EXPECT_THAT(Acquire(other_ca.get(), "alice-token", "team-a/key", &resp),
              StatusIs(absl::StatusCode::kUnavailable));
  auto good = TlsChannel("client");
  ASSERT_OK(Acquire(good.get(), "alice-token", "team-a/key", &resp));
  EXPECT_TRUE(resp.granted());
}

TEST_F(SecurityTest, RotatedServerCertificateIsUsedWithoutRestart) {
  // The server reads its files from a directory of its own, every second. gRPC's own file
  // watcher does that, in real time: the test polls (bounded) until it has.
  const std::string live_cert = certs_.dir() + "/live.pem";
  const std::string live_key = certs_.dir() + "/live.key";
  std::ofstream(live_cert) << testing::TestCerts::Read(certs_.Cert("server"));
  std::ofstream(live_key) << testing::TestCerts::Read(certs_.Key("server"));
  StartServer(/*mutual=*/false, live_cert, live_key, absl::Seconds(1));
  v1::AcquireResponse resp;
  ASSERT_OK(Acquire(TlsChannel("", "ca").get(), "alice-token", "team-a/key", &resp));

  // Rotate to a certificate of another CA: write aside, then rename over the live files.
  std::ofstream(live_key + ".new") << testing::TestCerts::Read(certs_.Key("other_server"));
  std::ofstream(live_cert + ".new") << testing::TestCerts::Read(certs_.Cert("other_server"));
  ASSERT_EQ(std::rename((live_key + ".new").c_str(), live_key.c_str()), 0);
  ASSERT_EQ(std::rename((live_cert + ".new").c_str(), live_cert.c_str()), 0);

  EXPECT_TRUE(Eventually(
      [&] {
        return Acquire(TlsChannel("", "other_ca").get(), "alice-token", "team-a/key", &resp).ok();
      },
      absl::Seconds(15), absl::Milliseconds(200)))
      << "the new certificate was never served";
  // New connections that trust only the old CA now fail the handshake.
  EXPECT_THAT(Acquire(TlsChannel("", "ca").get(), "alice-token", "team-a/key", &resp),
              StatusIs(absl::StatusCode::kUnavailable));
}

TEST_F(SecurityTest, MissingOrWrongTokenIsUnauthenticated) {
  StartServer(/*mutual=*/true);
  auto channel = TlsChannel("client");
  v1::AcquireResponse resp;
  EXPECT_THAT(Acquire(channel.get(), "", "team-a/key", &resp),
              StatusIs(absl::StatusCode::kUnauthenticated));
  EXPECT_THAT(Acquire(channel.get(), "alice-token-guess", "team-a/key", &resp),
              StatusIs(absl::StatusCode::kUnauthenticated, Not(HasSubstr("alice-token-guess"))));
  // Unauthenticated callers learn nothing of leases either.
  EXPECT_THAT(Release(channel.get(), "nope", "0123456789abcdef0123456789abcdef"),
              StatusIs(absl::StatusCode::kUnauthenticated));
}

TEST_F(SecurityTest, IdentitiesUseOnlyTheirCredentials) {
  StartServer(/*mutual=*/true);
  auto channel = TlsChannel("client");
  v1::AcquireResponse resp;
  ASSERT_OK(Acquire(channel.get(), "alice-token", "team-a/key", &resp));
  EXPECT_TRUE(resp.granted());
  ASSERT_OK(Acquire(channel.get(), "bob-token", "team-b/key", &resp));
  EXPECT_TRUE(resp.granted());

  EXPECT_THAT(
      Acquire(channel.get(), "bob-token", "team-a/key", &resp),
      StatusIs(absl::StatusCode::kPermissionDenied,
               AllOf(HasSubstr("\"bob\""), HasSubstr("Acquire"), HasSubstr("\"team-a/key\""))));

  auto stub = v1::Quota::NewStub(channel);
  v1::ReportRequest report;
  report.set_credential("team-b/key");
  report.set_feature("requests");
  report.set_http_status(200);
  v1::ReportResponse report_resp;
  EXPECT_THAT(stub->Report(Context("alice-token").get(), report, &report_resp),
              StatusIs(absl::StatusCode::kPermissionDenied));
  EXPECT_OK(stub->Report(Context("bob-token").get(), report, &report_resp));
}

TEST_F(SecurityTest, LeasesAreEndedOnlyByTheirHolderOrAnAdmin) {
  StartServer(/*mutual=*/true);
  auto channel = TlsChannel("client");
  v1::AcquireResponse resp;
  ASSERT_OK(Acquire(channel.get(), "alice-token", "team-a/key", &resp));
  ASSERT_TRUE(resp.granted());
  const std::string lease = resp.lease_id();

  EXPECT_THAT(Release(channel.get(), "bob-token", lease),
              StatusIs(absl::StatusCode::kPermissionDenied, HasSubstr("\"bob\"")));
  EXPECT_THAT(Renew(channel.get(), "bob-token", lease),
              StatusIs(absl::StatusCode::kPermissionDenied));
  EXPECT_OK(Renew(channel.get(), "ops-token", lease));
  EXPECT_OK(Renew(channel.get(), "alice-token", lease));

  // The ledger records who holds it.
  auto admin = v1::Admin::NewStub(channel);
  v1::ListLeasesRequest list;
  v1::ListLeasesResponse leases;
  ASSERT_OK(admin->ListLeases(Context("ops-token").get(), list, &leases));
  ASSERT_EQ(leases.leases_size(), 1);
  EXPECT_EQ(leases.leases(0).holder(), "alice/worker-1");

  EXPECT_OK(Release(channel.get(), "alice-token", lease));
  EXPECT_THAT(Release(channel.get(), "bob-token", "0123456789abcdef0123456789abcdef"),
              StatusIs(absl::StatusCode::kNotFound));
}

TEST_F(SecurityTest, OnlyAdminsUseTheAdminService) {
  StartServer(/*mutual=*/true);
  auto admin = v1::Admin::NewStub(TlsChannel("client"));
  v1::GetUsageRequest req;
  req.set_credential("team-a/key");
  v1::GetUsageResponse resp;
  EXPECT_THAT(admin->GetUsage(Context("alice-token").get(), req, &resp),
              StatusIs(absl::StatusCode::kPermissionDenied, HasSubstr("Admin")));
  EXPECT_OK(admin->GetUsage(Context("ops-token").get(), req, &resp));
  v1::ReloadConfigRequest reload;
  v1::ReloadConfigResponse reloaded;
  EXPECT_THAT(admin->ReloadConfig(Context("bob-token").get(), reload, &reloaded),
              StatusIs(absl::StatusCode::kPermissionDenied));
  EXPECT_OK(admin->ReloadConfig(Context("ops-token").get(), reload, &reloaded));
}

TEST_F(SecurityTest, MetricsEndpointShowsGrantsDenialsAndRemainingUnits) {
  StartServer(/*mutual=*/true);
  ASSERT_GT(server_->metrics_port(), 0);
  const std::string granted =
      "quotad_decisions_total{credential=\"team-a/key\",feature=\"requests\",result=\"granted\"}";
  const std::string remaining =
      "quotad_remaining_units{credential=\"team-a/key\",limit=\"requests.per_minute\"}";
  std::string before = testing::HttpGet(server_->metrics_port(), "/metrics");
  ASSERT_THAT(before, HasSubstr("quotad_queue_depth"));
  const double granted_before = std::max(0.0, Metric(before, granted));

  auto channel = TlsChannel("client");
  v1::AcquireResponse resp;
  for (int i = 0; i < 3; ++i) ASSERT_OK(Acquire(channel.get(), "alice-token", "team-a/key", &resp));
  EXPECT_THAT(Acquire(channel.get(), "", "team-a/key", &resp),
              StatusIs(absl::StatusCode::kUnauthenticated));

  // The gauges are re-read by the sweeper (every 50 ms of the server's clock): advancing the
  // clock fires its tick, which runs on the sweeper's thread; the scrape then polls (bounded)
  // for that thread to have run it.
  clock_.Advance(absl::Milliseconds(50));
  std::string after;
  EXPECT_TRUE(Eventually([&] {
    after = testing::HttpGet(server_->metrics_port(), "/metrics");
    return Metric(after, remaining) == 97;
  })) << after;
  EXPECT_EQ(Metric(after, granted), granted_before + 3) << after;
  EXPECT_EQ(Metric(after, remaining), 97) << after;
  EXPECT_EQ(Metric(after, "quotad_live_leases{credential=\"team-a/key\"}"), 3) << after;
  EXPECT_GE(Metric(after, "quotad_auth_failures_total{reason=\"unauthenticated\"}"), 1);
  EXPECT_THAT(after, HasSubstr("quotad_decision_latency_seconds_bucket{method=\"Acquire\""));
}

}  // namespace
}  // namespace quotad
