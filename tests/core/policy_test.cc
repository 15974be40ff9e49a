// ValidatePolicy (service/core/policy.h): a policy the ledger would refuse is rejected with an
// error that names the credential, the feature and the bad value. The file formats that produce
// a Policy are tested in tests/config; limit bounds in limits_test and ledger_never_over_test.

#include "service/core/policy.h"

#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/support/policy_builders.h"
#include "tests/support/status_matchers.h"

namespace quotad {
namespace {

using ::testing::HasSubstr;
using testing::Calendar;
using testing::Feature;
using testing::OneCredential;
using testing::Sliding;
using testing::StatusIs;

// A credential whose `threats_scan` (feature 1) draws on `requests`.
Policy CyberVault() {
  FeatureSpec requests = Feature("requests", {Sliding("per_minute", 60, absl::Minutes(1)),
                                              Calendar("per_day", 100, CalendarUnit::kDay)});
  FeatureSpec scan =
      Feature("threats_scan", {Sliding("per_minute", 5, absl::Minutes(1))}, {"requests"});
  return OneCredential("cybervault/prod", {requests, scan});
}

TEST(PolicyTest, TheExampleIsValid) { EXPECT_OK(ValidatePolicy(CyberVault())); }

TEST(PolicyTest, ValidationNamesCredentialFeatureAndValue) {
  Policy p = CyberVault();
  p.credentials[0].features[1].draws_on = {"missing"};
  const absl::Status s = ValidatePolicy(p);
  EXPECT_THAT(s, StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("'missing'")));
  EXPECT_NE(s.message().find("threats_scan"), std::string::npos) << s;
  Policy dup = CyberVault();
  dup.credentials.push_back(dup.credentials[0]);
  EXPECT_NE(ValidatePolicy(dup).message().find("duplicate credential"), std::string::npos);
}

}  // namespace
}  // namespace quotad
