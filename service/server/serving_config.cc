#include "service/server/serving_config.h"

#include <spdlog/spdlog.h>

#include <utility>

#include "service/server/logging.h"

namespace quotad {

std::shared_ptr<const ServingConfig> ServingConfig::Build(const LoadedConfig& config) {
  auto snapshot = std::make_shared<ServingConfig>();
  snapshot->auth = Authorizer::FromConfig(config.config);  // checked by the loader
  for (const CredentialSpec& c : config.policy.credentials) {
    snapshot->profile_of[c.name] = c.profile;
  }
  snapshot->profiles = config.profiles;
  for (const std::string& name : BuiltinProfileNames()) snapshot->builtin.insert(name);
  return snapshot;
}

absl::StatusOr<Caller> ConfigInForce::Authenticate(
    std::optional<absl::string_view> authorization) const {
  Caller caller;
  caller.config = Get();
  if (!caller.config->auth->enabled()) {
    caller.identity = std::string(kAnonymousIdentity);
    return caller;
  }
  absl::StatusOr<std::string> identity = caller.config->auth->Authenticate(authorization);
  if (!identity.ok()) return identity.status();
  caller.identity = *std::move(identity);
  return caller;
}

}  // namespace quotad
