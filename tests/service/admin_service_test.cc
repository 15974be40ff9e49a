// AdminService (service/server/admin_service.h) called directly: no socket, a real ledger on a
// fake clock (service_fixture.h).

#include "service/server/admin_service.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/service/service_fixture.h"

namespace quotad {
namespace {

using ::quotad::testing::IsOk;
using ::quotad::testing::StatusIs;
using ::testing::HasSubstr;

class AdminServiceTest : public testing::ServiceFixture {};

TEST_F(AdminServiceTest, OnlyAdminsUseIt) {
  Build();
  v1::GetUsageRequest usage;
  usage.set_credential("team-a/key");
  EXPECT_THAT(admin_->GetUsage(MustCaller("alice-token"), usage),
              StatusIs(absl::StatusCode::kPermissionDenied, HasSubstr("Admin")));
  EXPECT_THAT(admin_->ListLeases(MustCaller("bob-token"), {}),
              StatusIs(absl::StatusCode::kPermissionDenied, HasSubstr("\"bob\"")));
  EXPECT_THAT(admin_->ReloadConfig(MustCaller("bob-token"), {}),
              StatusIs(absl::StatusCode::kPermissionDenied, HasSubstr("Admin")));
  EXPECT_THAT(admin_->GetUsage(MustCaller("ops-token"), usage), IsOk());
}

TEST_F(AdminServiceTest, UsageNamesTheCredentialAndItsLimits) {
  Build();
  ASSERT_THAT(Acquire(MustCaller("alice-token"), AcquireOf("team-a/key", "requests")), IsOk());
  v1::GetUsageRequest req;
  req.set_credential("team-a/key");
  absl::StatusOr<v1::GetUsageResponse> resp = admin_->GetUsage(MustCaller("ops-token"), req);
  ASSERT_THAT(resp, IsOk());
  EXPECT_EQ(resp->credential(), "team-a/key");
  ASSERT_EQ(resp->limits_size(), 2);
  EXPECT_EQ(resp->limits(0).name(), "requests.per_minute");
  EXPECT_EQ(resp->limits(0).used(), 1);
  EXPECT_EQ(resp->observed_at().seconds(), absl::ToUnixSeconds(clock_.Now()));
  req.set_credential("nobody");
  EXPECT_THAT(admin_->GetUsage(MustCaller("ops-token"), req),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("nobody")));
  req.set_credential("team-a/key");
  req.set_page_size(-1);
  EXPECT_THAT(admin_->GetUsage(MustCaller("ops-token"), req),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("got -1")));
}

TEST_F(AdminServiceTest, ListsArePaginated) {
  Build({.auth = false});
  const Caller anyone = MustCaller("");
  for (int i = 0; i < 3; ++i) {
    ASSERT_THAT(Acquire(anyone, AcquireOf("team-b/key", "requests")), IsOk());
  }
  v1::ListLeasesRequest req;
  req.set_page_size(2);
  absl::StatusOr<v1::ListLeasesResponse> page1 = admin_->ListLeases(anyone, req);
  ASSERT_THAT(page1, IsOk());
  EXPECT_EQ(page1->leases_size(), 2);
  ASSERT_FALSE(page1->next_page_token().empty());
  req.set_page_token(page1->next_page_token());
  absl::StatusOr<v1::ListLeasesResponse> page2 = admin_->ListLeases(anyone, req);
  ASSERT_THAT(page2, IsOk());
  EXPECT_EQ(page2->leases_size(), 1);
  EXPECT_TRUE(page2->next_page_token().empty());
  req.set_page_token("garbage");
  EXPECT_THAT(admin_->ListLeases(anyone, req),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("\"garbage\"")));

  v1::ListCredentialsRequest creds;
  creds.set_page_size(1);
  absl::StatusOr<v1::ListCredentialsResponse> first = admin_->ListCredentials(anyone, creds);
  ASSERT_THAT(first, IsOk());
  ASSERT_EQ(first->credentials_size(), 1);
  EXPECT_EQ(first->credentials(0).name(), "team-a/key");
  EXPECT_EQ(first->next_page_token(), "team-a/key");
}

TEST_F(AdminServiceTest, ResetZeroesTheCounters) {
  Build();
  const Caller alice = MustCaller("alice-token");
  ASSERT_THAT(Acquire(alice, AcquireOf("team-a/key", "requests")), IsOk());
  v1::ResetCredentialRequest req;
  req.set_credential("team-a/key");
  absl::StatusOr<v1::ResetCredentialResponse> resp =
      admin_->ResetCredential(MustCaller("ops-token"), req);
  ASSERT_THAT(resp, IsOk());
  ASSERT_GE(resp->limits_size(), 1);
  EXPECT_EQ(resp->limits(0).used(), 0);
}

TEST_F(AdminServiceTest, ReloadAppliesAGoodFileAndKeepsTheConfigOnABadOne) {
  Build();
  WriteConfig(testing::ServiceConfigYaml(/*auth=*/false));
  absl::StatusOr<v1::ReloadConfigResponse> reloaded =
      admin_->ReloadConfig(MustCaller("ops-token"), {});
  ASSERT_THAT(reloaded, IsOk());
  EXPECT_EQ(reloaded->source(), config_path_);
  EXPECT_EQ(reloaded->credentials(), 2);
  // The services now answer under the new config: no auth.
  EXPECT_EQ(MustCaller("").identity, "anonymous");

  WriteConfig("credentials: [");
  EXPECT_THAT(admin_->Reload(), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_FALSE(config_->Get()->auth->enabled());
}

}  // namespace
}  // namespace quotad
