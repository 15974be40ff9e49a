// The name grammar of service/core/names.h (its one owner) and its quoting helper, and that the
// config loader applies it: every name any layer accepted before stays valid.

#include "service/core/names.h"

#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "service/config/config.h"
#include "tests/support/status_matchers.h"

namespace quotad {
namespace {

using ::quotad::testing::IsOk;
using ::quotad::testing::StatusIs;
using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::Not;

constexpr absl::StatusCode kInvalid = absl::StatusCode::kInvalidArgument;

TEST(QuoteValueTest, QuotesEscapesAndCuts) {
  EXPECT_EQ(QuoteValue("vt/prod"), "\"vt/prod\"");
  EXPECT_EQ(QuoteValue(""), "\"\"");
  EXPECT_EQ(QuoteValue("caf\xc3\xa9"), "\"caf\\xc3\\xa9\"");
  EXPECT_EQ(QuoteValue("a\"b\nc"), "\"a\\\"b\\nc\"");
  EXPECT_EQ(QuoteValue(std::string(64, 'a')), absl::StrCat("\"", std::string(64, 'a'), "\""));
  EXPECT_EQ(QuoteValue(std::string(300, 'a')),
            absl::StrCat("\"", std::string(64, 'a'), "\"... (300 bytes)"));
  EXPECT_EQ(QuoteValue("abcdef", 3), "\"abc\"... (6 bytes)");
}

TEST(NamesTest, AcceptsEveryNameAnyLayerAcceptedBefore) {
  // The config loader's alphabets (credential "_./:-", profile "_.-", feature and limit "_-")
  // and the wire's ("._~:/@+-").
  const std::string longest(kMaxNameLength, 'a');
  for (const std::string& name :
       {std::string("virustotal/prod"), std::string("vt"), std::string("a_b-c.d:e/f"),
        std::string("x~y@z+w"), std::string("cv/enterprise"), longest}) {
    EXPECT_THAT(CheckCredentialName(name), IsOk()) << name;
  }
  for (const char* name : {"virustotal-public", "cybervault.v2", "my_profile"}) {
    EXPECT_THAT(CheckProfileName(name), IsOk()) << name;
  }
  for (const char* name : {"requests", "threats_scan", "per-minute", "per_24h", "a:b/c@d+e~f"}) {
    EXPECT_THAT(CheckFeatureName(name), IsOk()) << name;
    EXPECT_THAT(CheckLimitName(name), IsOk()) << name;
  }
  for (const char* name : {"scanner", "ops.team", "ci@example.com", "a_b-c"}) {
    EXPECT_THAT(CheckIdentityName(name), IsOk()) << name;
  }
}

TEST(NamesTest, RefusesEmptyLongAndForeignCharactersNamingFieldValueAndRule) {
  EXPECT_THAT(CheckCredentialName(""), StatusIs(kInvalid, "credential is required"));
  EXPECT_THAT(CheckFeatureName("", "page_token"), StatusIs(kInvalid, "page_token is required"));
  EXPECT_THAT(CheckCredentialName(std::string(kMaxNameLength + 1, 'a')),
              StatusIs(kInvalid, AllOf(HasSubstr("credential \"aaaa"), HasSubstr("(257 bytes)"),
                                       HasSubstr("at most 256 are allowed"))));
  EXPECT_THAT(
      CheckCredentialName("vt prod"),
      StatusIs(kInvalid, "credential \"vt prod\" has the character ' ' at offset 2; allowed are "
                         "letters, digits and ._~:/@+-"));
  EXPECT_THAT(CheckCredentialName("caf\xc3\xa9/prod"),
              StatusIs(kInvalid, HasSubstr("'\\xc3' at offset 3")));
  EXPECT_THAT(CheckProfileName("a,b"), StatusIs(kInvalid, HasSubstr("profile \"a,b\"")));
}

TEST(NamesTest, FeatureAndLimitNamesHoldNoDot) {
  EXPECT_THAT(CheckFeatureName("a.b"),
              StatusIs(kInvalid, AllOf(HasSubstr("feature \"a.b\" has the character '.'"),
                                       HasSubstr("reported as feature.limit"))));
  EXPECT_THAT(CheckLimitName("per.day"), StatusIs(kInvalid, HasSubstr("limit \"per.day\"")));
  EXPECT_THAT(CheckCredentialName("a.b"), IsOk());
}

TEST(NamesTest, IdentitiesHoldNoSlashAndAreNeverShown) {
  const std::string token = "s3cr3t/token";
  EXPECT_THAT(CheckIdentityName(token),
              StatusIs(kInvalid, AllOf(HasSubstr("an identity is 1 to 256"),
                                       HasSubstr("not allowed at offset 6"),
                                       HasSubstr("identity/holder"), Not(HasSubstr("s3cr3t")))));
  EXPECT_THAT(CheckIdentityName(""), StatusIs(kInvalid, HasSubstr("got 0 bytes")));
  EXPECT_THAT(CheckIdentityName(std::string(300, 'x')),
              StatusIs(kInvalid, AllOf(HasSubstr("got 300 bytes"), Not(HasSubstr("xxx")))));
}

TEST(NamesTest, ScopesAndHoldersAreTextWithoutControlCharacters) {
  EXPECT_THAT(CheckScope(""), IsOk());
  EXPECT_THAT(CheckScope("tenant 7 / file.bin"), IsOk());
  EXPECT_THAT(CheckHolder("pod-7 (worker)"), IsOk());
  EXPECT_THAT(CheckScope(std::string("a\0b", 3)),
              StatusIs(kInvalid, HasSubstr("has the control character '\\x00' at offset 1")));
  EXPECT_THAT(CheckHolder("pod\n7"), StatusIs(kInvalid, HasSubstr("holder \"pod\\n7\"")));
  EXPECT_THAT(CheckScope(std::string(kMaxNameLength + 1, 's')),
              StatusIs(kInvalid, HasSubstr("(257 bytes)")));
}

// The config loader reports a name's error at the name's line, in the grammar's words.
TEST(NamesTest, ConfigLoaderUsesTheGrammar) {
  EXPECT_THAT(LoadPolicyFromString("credentials:\n  - {name: \"vt prod\", profile: mediasilo}\n",
                                   "n.yaml"),
              StatusIs(kInvalid, AllOf(HasSubstr("n.yaml:2:"), HasSubstr("credentials[0].name"),
                                       HasSubstr("' ' at offset 2"))));
  EXPECT_THAT(LoadPolicyFromString(R"(credentials:
  - name: a
    features: [{name: "x.y", limits: [{name: c, kind: concurrency, capacity: 1}]}]
)",
                                   "n.yaml"),
              StatusIs(kInvalid, AllOf(HasSubstr("credentials[0].features[0].name"),
                                       HasSubstr("feature \"x.y\""))));
  // Names the wire always accepted load from a file too.
  EXPECT_THAT(LoadPolicyFromString(R"(credentials:
  - name: team@acme+1~x
    features: [{name: "scan:v2", limits: [{name: per/min, kind: concurrency, capacity: 1}]}]
)",
                                   "n.yaml"),
              IsOk());
}

}  // namespace
}  // namespace quotad
