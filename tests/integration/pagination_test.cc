// Finding 10: ListLeases and ListCredentials answer in pages. 100,000 leases (granted in process
// through the ledger, so that the test is fast) are listed over gRPC page by page: every lease
// exactly once, in order, each answer within the message limit.

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <memory>
#include <string>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "quotad/v1/quotad.grpc.pb.h"
#include "service/server/server.h"
#include "tests/support/grpc_status_matchers.h"

namespace quotad {
namespace {

using ::quotad::testing::StatusIs;

constexpr int kLeases = 100000;
constexpr int kCredentials = 2500;

std::string WriteConfig() {
  std::string yaml = R"(profiles:
  - name: many-slots
    features:
      - name: jobs
        default_lease_ttl: 1h
        max_lease_ttl: 2h
        limits:
          - {name: concurrent, kind: concurrency, capacity: 200000}
credentials:
  - name: team/scoped
    features:
      - name: rules
        max_scopes: 5000
        limits:
          - {name: per_hour, kind: sliding, capacity: 10, period: 1h, scoped: true}
          - {name: total, kind: sliding, capacity: 100000, period: 1h}
)";
  for (int i = 0; i < kCredentials; ++i) {
    absl::StrAppend(&yaml, "  - {name: team/key-", i, ", profile: many-slots}\n");
  }
  char path[] = "/tmp/quotad_pagination_XXXXXX";
  const int fd = mkstemp(path);
  close(fd);
  std::ofstream(path) << yaml;
  return path;
}

class PaginationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    config_ = WriteConfig();
    ServerOptions options;
    options.config_path = config_;
    options.memory_only = true;
    options.listen_address = "127.0.0.1:0";
    options.config_watch_interval = absl::ZeroDuration();
    absl::StatusOr<std::unique_ptr<QuotadServer>> server = QuotadServer::Start(options);
    ASSERT_OK(server);
    server_ = *std::move(server);
    admin_ = v1::Admin::NewStub(grpc::CreateChannel(server_->address(),
                                                    grpc::InsecureChannelCredentials()));
  }
  void TearDown() override {
    server_.reset();
    std::remove(config_.c_str());
  }

  std::string config_;
  std::unique_ptr<QuotadServer> server_;
  std::unique_ptr<v1::Admin::Stub> admin_;
};

TEST_F(PaginationTest, HundredThousandLeasesComeInPagesEachExactlyOnceInOrder) {
  for (int i = 0; i < kLeases; ++i) {
    AcquireRequest req;
    req.credential = "team/key-0";
    req.feature = "jobs";
    req.want_limits = false;
    absl::StatusOr<Decision> d = server_->ledger()->Acquire(req);
    ASSERT_OK(d) << i;
    ASSERT_TRUE(d->granted) << i;
  }
  // The default page.
  {
    grpc::ClientContext ctx;
    v1::ListLeasesResponse resp;
    ASSERT_OK(admin_->ListLeases(&ctx, v1::ListLeasesRequest(), &resp));
    EXPECT_EQ(resp.leases_size(), 1000);
    EXPECT_FALSE(resp.next_page_token().empty());
  }
  absl::flat_hash_set<std::string> seen;
  v1::ListLeasesRequest req;
  req.set_page_size(1 << 20);  // more than the server gives: 10,000
  int pages = 0;
  std::string last_key;
  for (;;) {
    grpc::ClientContext ctx;
    v1::ListLeasesResponse resp;
    grpc::Status s = admin_->ListLeases(&ctx, req, &resp);
    ASSERT_OK(s);
    ASSERT_LE(resp.leases_size(), 10000);
    ++pages;
    for (const v1::Lease& l : resp.leases()) {
      EXPECT_TRUE(seen.insert(l.lease_id()).second) << "seen twice: " << l.lease_id();
      const std::string key = absl::StrCat(
          absl::Dec(l.expires_at().seconds(), absl::kZeroPad12), ".",
          absl::Dec(l.expires_at().nanos(), absl::kZeroPad9), ".", l.lease_id());
      EXPECT_LT(last_key, key);
      last_key = key;
    }
    if (resp.next_page_token().empty()) break;
    req.set_page_token(resp.next_page_token());
    ASSERT_LE(pages, 100);
  }
  EXPECT_EQ(seen.size(), static_cast<size_t>(kLeases));
  EXPECT_EQ(pages, kLeases / 10000);
}

TEST_F(PaginationTest, CredentialsComeInPagesWithProfilesOnTheFirst) {
  v1::ListCredentialsRequest req;
  req.set_page_size(1000);
  absl::flat_hash_set<std::string> seen;
  int pages = 0;
  for (;;) {
    grpc::ClientContext ctx;
    v1::ListCredentialsResponse resp;
    grpc::Status s = admin_->ListCredentials(&ctx, req, &resp);
    ASSERT_OK(s);
    EXPECT_EQ(resp.profiles_size() > 0, pages == 0);
    ++pages;
    for (const auto& c : resp.credentials()) EXPECT_TRUE(seen.insert(c.name()).second);
    if (resp.next_page_token().empty()) break;
    req.set_page_token(resp.next_page_token());
    ASSERT_LE(pages, 10);
  }
  EXPECT_EQ(seen.size(), static_cast<size_t>(kCredentials) + 1);  // and team/scoped
  EXPECT_EQ(pages, 3);
}

// GetUsage of a credential with 2,500 scopes (one entry each) comes in pages too: every entry
// once, the configuration's order of limits kept, each scope once.
TEST_F(PaginationTest, UsageOfManyScopesComesInPages) {
  constexpr int kScopes = 2500;
  for (int i = 0; i < kScopes; ++i) {
    AcquireRequest req;
    req.credential = "team/scoped";
    req.feature = "rules";
    const std::string scope = absl::StrCat("ruleset-", i);
    req.scope = scope;
    req.want_limits = false;
    absl::StatusOr<Decision> d = server_->ledger()->Acquire(req);
    ASSERT_OK(d) << i;
    ASSERT_TRUE(d->granted) << i;
  }
  absl::StatusOr<std::vector<LimitStatus>> all = server_->ledger()->Usage("team/scoped");
  ASSERT_OK(all);
  ASSERT_GE(all->size(), static_cast<size_t>(kScopes));
  {
    grpc::ClientContext ctx;
    v1::GetUsageRequest req;
    req.set_credential("team/scoped");
    v1::GetUsageResponse resp;
    ASSERT_OK(admin_->GetUsage(&ctx, req, &resp));
    EXPECT_EQ(resp.limits_size(), 1000);  // the default page
    EXPECT_FALSE(resp.next_page_token().empty());
    EXPECT_EQ(resp.credential(), "team/scoped");
  }
  v1::GetUsageRequest req;
  req.set_credential("team/scoped");
  req.set_page_size(700);
  absl::flat_hash_set<std::string> seen;
  int pages = 0;
  for (;;) {
    grpc::ClientContext ctx;
    v1::GetUsageResponse resp;
    grpc::Status s = admin_->GetUsage(&ctx, req, &resp);
    ASSERT_OK(s);
    ASSERT_LE(resp.limits_size(), 700);
    ++pages;
    for (const v1::LimitStatus& l : resp.limits()) {
      EXPECT_TRUE(seen.insert(absl::StrCat(l.name(), "\n", l.scope())).second)
          << l.name() << " " << l.scope();
    }
    if (resp.next_page_token().empty()) break;
    req.set_page_token(resp.next_page_token());
    ASSERT_LE(pages, 20);
  }
  EXPECT_EQ(seen.size(), all->size());
  EXPECT_EQ(pages, static_cast<int>((all->size() + 699) / 700));
  // A token that is not one.
  grpc::ClientContext ctx;
  req.set_page_token("%%%");
  v1::GetUsageResponse resp;
  grpc::Status s = admin_->GetUsage(&ctx, req, &resp);
  EXPECT_THAT(s, StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_NE(s.error_message().find("page_token"), std::string::npos) << s.error_message();
}

TEST_F(PaginationTest, AForeignPageTokenIsInvalidArgument) {
  grpc::ClientContext ctx;
  v1::ListLeasesRequest req;
  req.set_page_token("not-a-token");
  v1::ListLeasesResponse resp;
  grpc::Status s = admin_->ListLeases(&ctx, req, &resp);
  EXPECT_THAT(s, StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_NE(s.error_message().find("page_token"), std::string::npos) << s.error_message();
}

}  // namespace
}  // namespace quotad
