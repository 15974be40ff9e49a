// Authorizer, Sha256Hex, ConstantTimeEquals and the holder helpers (service/server/auth.h): bearer
// tokens to identities, access rules, lease ownership. The same rules over the wire are in
// security_test.cc; as the services apply them, in tests/service.

#include "service/server/auth.h"

#include <string>

#include "absl/strings/ascii.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/support/status_matchers.h"

namespace quotad {
namespace {

using ::quotad::testing::IsOkAndHolds;
using ::quotad::testing::StatusIs;
using ::testing::_;
using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::Lt;
using ::testing::Not;
using ::testing::SizeIs;

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
  return Authorizer::Create(auth);
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
  ASSERT_OK_AND_ASSIGN(const std::string id, a->Authenticate(std::nullopt));
  EXPECT_EQ(id, kAnonymousIdentity);
  EXPECT_OK(a->Authorize(id, AccessMethod::kAdmin, ""));
  EXPECT_OK(a->AuthorizeLease(id, AccessMethod::kRelease, "someone-else"));
}

TEST(AuthorizerTest, FromConfigWithoutAuthSectionAllowsAll) {
  v1::Config config;
  EXPECT_FALSE(Authorizer::FromConfig(config)->enabled());
  *config.mutable_auth() = TeamAuth();
  EXPECT_TRUE(Authorizer::FromConfig(config)->enabled());
}

TEST(AuthorizerTest, MapsBearerTokensToIdentities) {
  auto a = MustCreate(TeamAuth());
  EXPECT_THAT(a->Authenticate("Bearer scanner-secret"), IsOkAndHolds("scanner"));
  EXPECT_THAT(a->Authenticate("bearer scanner-rotated"), IsOkAndHolds("scanner"));
  EXPECT_THAT(a->Authenticate("Bearer  hunter-secret "), IsOkAndHolds("hunter"));
  EXPECT_THAT(a->Authenticate("Bearer ops-secret"), IsOkAndHolds("ops"));
}

TEST(AuthorizerTest, RefusesMissingMalformedAndUnknownTokens) {
  auto a = MustCreate(TeamAuth());
  for (const char* bad : {"", "Bearer", "Bearer ", "Basic c2Nhbm5lcjpzZWNyZXQ=", "scanner-secret",
                          "Bearer scanner-secret2", "Bearer SCANNER-SECRET"}) {
    EXPECT_THAT(a->Authenticate(absl::string_view(bad)),
                StatusIs(absl::StatusCode::kUnauthenticated))
        << bad;
  }
  EXPECT_THAT(a->Authenticate(std::nullopt), StatusIs(absl::StatusCode::kUnauthenticated));
  // The token is never echoed.
  EXPECT_THAT(a->Authenticate("Bearer hunter-guess"), StatusIs(_, Not(HasSubstr("hunter-guess"))));
}

TEST(AuthorizerTest, AcceptsUppercaseDigestsInConfig) {
  v1::Auth auth;
  v1::Token* t = auth.add_tokens();
  t->set_identity("x");
  t->set_sha256(absl::AsciiStrToUpper(Sha256Hex("tok")));
  auto a = MustCreate(auth);
  EXPECT_THAT(a->Authenticate("Bearer tok"), IsOkAndHolds("x"));
}

TEST(AuthorizerTest, PrefixRuleCoversItsFamilyOnly) {
  auto a = MustCreate(TeamAuth());
  for (AccessMethod m : {AccessMethod::kAcquire, AccessMethod::kRelease, AccessMethod::kRenew,
                         AccessMethod::kReport}) {
    EXPECT_OK(a->Authorize("scanner", m, "virustotal/prod"));
    EXPECT_OK(a->Authorize("scanner", m, "virustotal/team-b"));
  }
  EXPECT_THAT(a->Authorize("scanner", AccessMethod::kAcquire, "virustotal"),
              StatusIs(absl::StatusCode::kPermissionDenied));
  EXPECT_THAT(a->Authorize("scanner", AccessMethod::kAcquire, "virustotalx/prod"),
              StatusIs(absl::StatusCode::kPermissionDenied));
  EXPECT_THAT(a->Authorize("scanner", AccessMethod::kAcquire, "cybervault/prod"),
              StatusIs(absl::StatusCode::kPermissionDenied));
}

TEST(AuthorizerTest, ExactRuleAllowsOnlyItsMethods) {
  auto a = MustCreate(TeamAuth());
  EXPECT_OK(a->Authorize("hunter", AccessMethod::kAcquire, "cybervault/prod"));
  EXPECT_OK(a->Authorize("hunter", AccessMethod::kRelease, "cybervault/prod"));
  EXPECT_THAT(a->Authorize("hunter", AccessMethod::kRenew, "cybervault/prod"),
              StatusIs(absl::StatusCode::kPermissionDenied,
                       AllOf(HasSubstr("\"hunter\""), HasSubstr("Renew"),
                             HasSubstr("\"cybervault/prod\""))));
  EXPECT_THAT(a->Authorize("hunter", AccessMethod::kAcquire, "cybervault/dev"),
              StatusIs(absl::StatusCode::kPermissionDenied));
}

TEST(AuthorizerTest, OnlyAdminsUseAdmin) {
  auto a = MustCreate(TeamAuth());
  EXPECT_OK(a->Authorize("ops", AccessMethod::kAdmin, ""));
  EXPECT_OK(a->Authorize("ops", AccessMethod::kAcquire, "anything/at-all"));
  EXPECT_THAT(a->Authorize("scanner", AccessMethod::kAdmin, ""),
              StatusIs(absl::StatusCode::kPermissionDenied, HasSubstr("Admin")));
}

TEST(AuthorizerTest, IdentityWithoutRulesMayDoNothing) {
  v1::Auth auth = TeamAuth();
  v1::Token* t = auth.add_tokens();
  t->set_identity("nobody");
  t->set_sha256(Sha256Hex("nobody-secret"));
  auto a = MustCreate(auth);
  EXPECT_THAT(a->Authenticate("Bearer nobody-secret"), IsOkAndHolds("nobody"));
  EXPECT_THAT(a->Authorize("nobody", AccessMethod::kAcquire, "virustotal/prod"),
              StatusIs(absl::StatusCode::kPermissionDenied));
}

TEST(AuthorizerTest, LeasesBelongToTheirHolderOrAnAdmin) {
  auto a = MustCreate(TeamAuth());
  EXPECT_OK(a->AuthorizeLease("scanner", AccessMethod::kRelease, "scanner"));
  EXPECT_OK(a->AuthorizeLease("ops", AccessMethod::kRenew, "scanner"));
  EXPECT_THAT(a->AuthorizeLease("hunter", AccessMethod::kRelease, "scanner"),
              StatusIs(absl::StatusCode::kPermissionDenied, HasSubstr("\"hunter\"")));
}

// A section the loader would refuse (tests/config/auth_config_test.cc) is not refused here, but
// grants nothing it does not name.
TEST(AuthorizerTest, AnUncheckedSectionGrantsNothingItDoesNotName) {
  v1::Auth bad = TeamAuth();
  bad.mutable_tokens(0)->set_sha256("abc");      // matches no token
  bad.mutable_rules(0)->add_methods("Delete");   // an unknown method grants nothing
  auto a = Authorizer::Create(bad);
  EXPECT_THAT(a->Authenticate("Bearer scanner-secret"),
              StatusIs(absl::StatusCode::kUnauthenticated));
  EXPECT_THAT(a->Authorize("hunter", AccessMethod::kRenew, "cybervault/prod"),
              StatusIs(absl::StatusCode::kPermissionDenied));
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
  EXPECT_THAT(a->Authenticate("Bearer x"), StatusIs(absl::StatusCode::kUnauthenticated));
}

TEST(AuthorizerTest, DeniedMessagesDoNotEchoControlBytes) {
  auto a = MustCreate(TeamAuth());
  EXPECT_THAT(a->Authorize("hunter", AccessMethod::kAcquire,
                           std::string("a\nb\x01") + std::string(1000, 'x')),
              StatusIs(_, AllOf(HasSubstr("\"a\\nb\\x01xxx"), Not(HasSubstr("\n")),
                                SizeIs(Lt(400u)))));
}

}  // namespace
}  // namespace quotad
