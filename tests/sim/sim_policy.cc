#include "tests/sim/sim_policy.h"

#include <string>
#include <utility>
#include <vector>

#include "tests/support/policy_builders.h"

#ifdef QUOTAD_SIM_HAVE_CONFIG
#include "service/config/config.h"
#endif

namespace quotad::sim {
namespace {

using ::quotad::testing::Calendar;
using ::quotad::testing::Concurrency;
using ::quotad::testing::Credential;
using ::quotad::testing::Feature;
using ::quotad::testing::Rolling;
using ::quotad::testing::Sliding;

CredentialSpec CyberVault(std::string name, std::string profile, int64_t per_minute,
                          int64_t per_day, int64_t concurrent) {
  std::vector<FeatureSpec> features = {Feature(
      "requests",
      {Sliding("per_minute", per_minute, absl::Minutes(1)),
       Calendar("per_day", per_day, CalendarUnit::kDay), Concurrency("concurrent", concurrent)})};
  const std::pair<const char*, int64_t> overrides[] = {
      {"auth_login", 10}, {"threats_scan", 5}, {"reports_generate", 20}, {"incidents_read", 120}};
  for (const auto& [name, n] : overrides) {
    features.push_back(Feature(name, {Sliding("per_minute", n, absl::Minutes(1))}, {"requests"}));
  }
  for (FeatureSpec& f : features) {
    f.default_lease_ttl = absl::Seconds(30);
    f.max_lease_ttl = absl::Minutes(10);
  }
  return Credential(std::move(name), std::move(profile), std::move(features));
}

}  // namespace

Policy HandBuiltPolicy() {
  Policy p;
  p.credentials.push_back(
      Credential("virustotal/sim", "virustotal-public",
                 {Feature("requests", {Sliding("per_minute", 4, absl::Minutes(1)),
                                       Calendar("per_day", 500, CalendarUnit::kDay),
                                       Calendar("per_month", 15500, CalendarUnit::kMonth)})}));
  p.credentials.push_back(
      Credential("metadefender/sim", "metadefender-cloud",
                 {Feature("reputation", {Rolling("per_24h", 4000, absl::Hours(24))}),
                  Feature("prevention", {Rolling("per_24h", 100, absl::Hours(24))}),
                  Feature("sandbox", {Rolling("per_24h", 100, absl::Hours(24))})}));
  p.credentials.push_back(
      Credential("mediasilo/sim", "mediasilo",
                 {Feature("requests", {Sliding("per_hour", 10000, absl::Hours(1), 3600)})}));
  p.credentials.push_back(CyberVault("cybervault/starter", "cybervault-starter", 60, 10000, 10));
  p.credentials.push_back(
      CyberVault("cybervault/professional", "cybervault-professional", 300, 100000, 50));
  return p;
}

const absl::StatusOr<Policy>& SimPolicy() {
#ifdef QUOTAD_SIM_HAVE_CONFIG
  static const auto* policy =
      new absl::StatusOr<Policy>(LoadPolicyFromString(kSimConfigYaml, "sim.yaml"));
#else
  static const auto* policy = new absl::StatusOr<Policy>(HandBuiltPolicy());
#endif
  return *policy;
}

absl::string_view SimPolicySource() {
#ifdef QUOTAD_SIM_HAVE_CONFIG
  return "shipped profiles (service/config, kSimConfigYaml)";
#else
  return "hand-built (SPEC section 3; service/config not built)";
#endif
}

}  // namespace quotad::sim
