#include "service/server/auth.h"

#include <string>

#include "absl/strings/ascii.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace quotad {
namespace {

using ::testing::HasSubstr;

v1::Auth TeamAuth() {
  v1::Auth auth;
  auto add_token = [&](const std::string& identity, const std::string& token) {
    v1::Token* t = auth.add_tokens();
    t->set_identity(identity);
    t->set_sha256(Sha256Hex(token));
  };
  add_token("scanner", "scanner-secret");
  add_token("scanner", "scanner-rotated");
  add_token("hunter", "hunter-secret");
  add_token("ops", "ops-secret");
  v1::AccessRule* r = auth.add_rules();
  r->set_identity("scanner");
  r->add_credentials("virustotal/*");
  r->add_methods("*");
  r = auth.add_rules();
  r->set_identity("hunter");
  r->add_credentials("cybervault/prod");
  r->add_methods("Acquire");
  r->add_methods("Release");
  auth.add_admins("ops");
  return auth;
}

std::unique_ptr<const Authorizer> MustCreate(const v1::Auth& auth) {
  auto a = Authorizer::Create(auth);
  EXPECT_TRUE(a.ok()) << a.status();
  return a.ok() ? *std::move(a) : Authorizer::AllowAll();
}

TEST(Sha256HexTest, MatchesKnownDigests) {
  // printf %s abc | sha256sum
  EXPECT_EQ(Sha256Hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(Sha256Hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

TEST(ConstantTimeEqualsTest, ComparesWholeStrings) {
  EXPECT_TRUE(ConstantTimeEquals("secret", "secret"));
  EXPECT_FALSE(ConstantTimeEquals("secret", "secreT"));
  EXPECT_FALSE(ConstantTimeEquals("secret", "secre"));
  EXPECT_TRUE(ConstantTimeEquals("", ""));
}

TEST(AuthorizerTest, AllowAllLetsEveryoneThroughAsAnonymous) {
  auto a = Authorizer::AllowAll();
  EXPECT_FALSE(a->enabled());
  absl::StatusOr<std::string> id = a->Authenticate(std::nullopt);
  ASSERT_TRUE(id.ok());
  EXPECT_EQ(*id, kAnonymousIdentity);
  EXPECT_TRUE(a->Authorize(*id, AccessMethod::kAdmin, "").ok());
  EXPECT_TRUE(a->AuthorizeLease(*id, AccessMethod::kRelease, "someone-else").ok());
}

TEST(AuthorizerTest, FromConfigWithoutAuthSectionAllowsAll) {
  v1::Config config;
  auto a = Authorizer::FromConfig(config);
  ASSERT_TRUE(a.ok());
  EXPECT_FALSE((*a)->enabled());
  *config.mutable_auth() = TeamAuth();
  a = Authorizer::FromConfig(config);
  ASSERT_TRUE(a.ok());
  EXPECT_TRUE((*a)->enabled());
}

TEST(AuthorizerTest, MapsBearerTokensToIdentities) {
  auto a = MustCreate(TeamAuth());
  EXPECT_EQ(*a->Authenticate("Bearer scanner-secret"), "scanner");
  EXPECT_EQ(*a->Authenticate("bearer scanner-rotated"), "scanner");
  EXPECT_EQ(*a->Authenticate("Bearer  hunter-secret "), "hunter");
  EXPECT_EQ(*a->Authenticate("Bearer ops-secret"), "ops");
}

TEST(AuthorizerTest, RefusesMissingMalformedAndUnknownTokens) {
  auto a = MustCreate(TeamAuth());
  for (const char* bad : {"", "Bearer", "Bearer ", "Basic c2Nhbm5lcjpzZWNyZXQ=",
                          "scanner-secret", "Bearer scanner-secret2", "Bearer SCANNER-SECRET"}) {
    absl::StatusOr<std::string> id = a->Authenticate(absl::string_view(bad));
    EXPECT_EQ(id.status().code(), absl::StatusCode::kUnauthenticated) << bad;
  }
  EXPECT_EQ(a->Authenticate(std::nullopt).status().code(), absl::StatusCode::kUnauthenticated);
  // The token is never echoed.
  EXPECT_THAT(a->Authenticate("Bearer hunter-guess").status().message(),
              ::testing::Not(HasSubstr("hunter-guess")));
}

TEST(AuthorizerTest, AcceptsUppercaseDigestsInConfig) {
  v1::Auth auth;
  v1::Token* t = auth.add_tokens();
  t->set_identity("x");
  t->set_sha256(absl::AsciiStrToUpper(Sha256Hex("tok")));
  auto a = MustCreate(auth);
  EXPECT_EQ(*a->Authenticate("Bearer tok"), "x");
}

TEST(AuthorizerTest, PrefixRuleCoversItsFamilyOnly) {
  auto a = MustCreate(TeamAuth());
  for (AccessMethod m : {AccessMethod::kAcquire, AccessMethod::kRelease, AccessMethod::kRenew,
                         AccessMethod::kReport}) {
    EXPECT_TRUE(a->Authorize("scanner", m, "virustotal/prod").ok());
    EXPECT_TRUE(a->Authorize("scanner", m, "virustotal/team-b").ok());
  }
  EXPECT_EQ(a->Authorize("scanner", AccessMethod::kAcquire, "virustotal").code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(a->Authorize("scanner", AccessMethod::kAcquire, "virustotalx/prod").code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(a->Authorize("scanner", AccessMethod::kAcquire, "cybervault/prod").code(),
            absl::StatusCode::kPermissionDenied);
}

TEST(AuthorizerTest, ExactRuleAllowsOnlyItsMethods) {
  auto a = MustCreate(TeamAuth());
  EXPECT_TRUE(a->Authorize("hunter", AccessMethod::kAcquire, "cybervault/prod").ok());
  EXPECT_TRUE(a->Authorize("hunter", AccessMethod::kRelease, "cybervault/prod").ok());
  absl::Status renew = a->Authorize("hunter", AccessMethod::kRenew, "cybervault/prod");
  EXPECT_EQ(renew.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(renew.message(), HasSubstr("\"hunter\""));
  EXPECT_THAT(renew.message(), HasSubstr("Renew"));
  EXPECT_THAT(renew.message(), HasSubstr("\"cybervault/prod\""));
  EXPECT_EQ(a->Authorize("hunter", AccessMethod::kAcquire, "cybervault/dev").code(),
            absl::StatusCode::kPermissionDenied);
}

TEST(AuthorizerTest, OnlyAdminsUseAdmin) {
  auto a = MustCreate(TeamAuth());
  EXPECT_TRUE(a->Authorize("ops", AccessMethod::kAdmin, "").ok());
  EXPECT_TRUE(a->Authorize("ops", AccessMethod::kAcquire, "anything/at-all").ok());
  absl::Status s = a->Authorize("scanner", AccessMethod::kAdmin, "");
  EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(s.message(), HasSubstr("Admin"));
}

TEST(AuthorizerTest, IdentityWithoutRulesMayDoNothing) {
  v1::Auth auth = TeamAuth();
  v1::Token* t = auth.add_tokens();
  t->set_identity("nobody");
  t->set_sha256(Sha256Hex("nobody-secret"));
  auto a = MustCreate(auth);
  EXPECT_EQ(*a->Authenticate("Bearer nobody-secret"), "nobody");
  EXPECT_EQ(a->Authorize("nobody", AccessMethod::kAcquire, "virustotal/prod").code(),
            absl::StatusCode::kPermissionDenied);
}

TEST(AuthorizerTest, LeasesBelongToTheirHolderOrAnAdmin) {
  auto a = MustCreate(TeamAuth());
  EXPECT_TRUE(a->AuthorizeLease("scanner", AccessMethod::kRelease, "scanner").ok());
  EXPECT_TRUE(a->AuthorizeLease("ops", AccessMethod::kRenew, "scanner").ok());
  absl::Status s = a->AuthorizeLease("hunter", AccessMethod::kRelease, "scanner");
  EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(s.message(), HasSubstr("\"hunter\""));
}

TEST(AuthorizerTest, CreateRefusesBadSections) {
  v1::Auth empty;
  EXPECT_EQ(Authorizer::Create(empty).status().code(), absl::StatusCode::kInvalidArgument);
  v1::Auth bad_digest = TeamAuth();
  bad_digest.mutable_tokens(0)->set_sha256("abc");
  EXPECT_EQ(Authorizer::Create(bad_digest).status().code(), absl::StatusCode::kInvalidArgument);
  v1::Auth bad_method = TeamAuth();
  bad_method.mutable_rules(0)->add_methods("Delete");
  EXPECT_EQ(Authorizer::Create(bad_method).status().code(), absl::StatusCode::kInvalidArgument);
  v1::Auth dangling = TeamAuth();
  dangling.add_admins("ghost");
  EXPECT_EQ(Authorizer::Create(dangling).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(HolderTest, IdentityRoundTripsThroughTheHolder) {
  EXPECT_EQ(HolderWithIdentity("scanner", "worker-3"), "scanner/worker-3");
  EXPECT_EQ(HolderWithIdentity("scanner", ""), "scanner");
  EXPECT_EQ(IdentityOfHolder("scanner/worker/3"), "scanner");
  EXPECT_EQ(IdentityOfHolder("scanner"), "scanner");
}

TEST(AuthorizerTest, DenyAllKnowsNoToken) {
  auto a = Authorizer::DenyAll();
  EXPECT_TRUE(a->enabled());
  EXPECT_EQ(a->Authenticate("Bearer x").status().code(), absl::StatusCode::kUnauthenticated);
}

TEST(AuthorizerTest, DeniedMessagesDoNotEchoControlBytes) {
  auto a = MustCreate(TeamAuth());
  absl::Status s = a->Authorize("hunter", AccessMethod::kAcquire, std::string("a\nb\x01") +
                                                                     std::string(1000, 'x'));
  EXPECT_THAT(s.message(), HasSubstr("\"a?b?xxx"));
  EXPECT_LT(s.message().size(), 400u);
}

}  // namespace
}  // namespace quotad
