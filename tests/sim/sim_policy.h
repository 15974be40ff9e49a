#ifndef QUOTAD_TESTS_SIM_SIM_POLICY_H_
#define QUOTAD_TESTS_SIM_SIM_POLICY_H_

// The policy the simulator runs: one credential bound to each shipped provider profile.

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "service/core/policy.h"

namespace quotad::sim {

// The configuration the simulator loads: credentials bound to the built-in profiles, with no
// overrides, so that the simulation proves the presets as shipped.
inline constexpr absl::string_view kSimConfigYaml = R"yaml(
credentials:
  - {name: virustotal/sim, profile: virustotal-public}
  - {name: metadefender/sim, profile: metadefender-cloud}
  - {name: mediasilo/sim, profile: mediasilo}
  - {name: cybervault/starter, profile: cybervault-starter}
  - {name: cybervault/professional, profile: cybervault-professional}
)yaml";

// kSimConfigYaml through service/config when it is built (QUOTAD_SIM_HAVE_CONFIG); otherwise a
// hand-built Policy mirroring SPEC section 3. Parsed once.
const absl::StatusOr<Policy>& SimPolicy();

// The same credentials built by hand from SPEC section 3 (and the profiles' documented lease
// settings): the fallback, and a cross-check of the shipped profiles.
Policy HandBuiltPolicy();

// "shipped profiles (service/config)" or "hand-built (SPEC section 3)".
absl::string_view SimPolicySource();

}  // namespace quotad::sim

#endif  // QUOTAD_TESTS_SIM_SIM_POLICY_H_
