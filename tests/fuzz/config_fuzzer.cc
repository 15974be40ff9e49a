// libFuzzer target: the configuration loader (YAML walked against quotad.v1.Config, then checked).
// Input: YAML text. Properties: no crash, no sanitizer report; an error is kInvalidArgument (or
// kInternal/kNotFound as documented) with a message; a policy that loads passes ValidatePolicy and
// a Ledger can be built from it.

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "service/config/config.h"
#include "service/core/clock.h"
#include "service/core/ledger.h"
#include "service/core/policy.h"

namespace {

void Fail(const char* what, const absl::Status& s) {
  std::fprintf(stderr, "config_fuzzer: %s: %s\n", what, s.ToString().c_str());
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size > 64 * 1024) return -1;  // configuration files are small; keeps runs fast
  const absl::string_view yaml(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<quotad::LoadedConfig> loaded = quotad::LoadConfigFromString(yaml, "fuzz.yaml");
  if (!loaded.ok()) {
    const absl::StatusCode code = loaded.status().code();
    if (code != absl::StatusCode::kInvalidArgument && code != absl::StatusCode::kNotFound) {
      Fail("unexpected error code", loaded.status());
    }
    if (loaded.status().message().empty()) Fail("error without a message", loaded.status());
    return 0;
  }
  if (absl::Status s = quotad::ValidatePolicy(loaded->policy); !s.ok()) {
    Fail("loaded policy does not validate", s);
  }
  quotad::FakeClock clock;
  absl::StatusOr<std::unique_ptr<quotad::Ledger>> ledger =
      quotad::Ledger::Create(loaded->policy, &clock);
  if (!ledger.ok()) Fail("ledger refused a loaded policy", ledger.status());
  // The short form must agree with the long one.
  if (!quotad::LoadPolicyFromString(yaml, "fuzz.yaml").ok()) {
    Fail("LoadPolicyFromString disagrees with LoadConfigFromString", absl::OkStatus());
  }
  return 0;
}
