#include "service/server/serving_config.h"

#include <spdlog/spdlog.h>

#include <utility>

#include "service/server/logging.h"

namespace quotad {

std::shared_ptr<const ServingConfig> ServingConfig::Build(const LoadedConfig& config) {
  auto snapshot = std::make_shared<ServingConfig>();
  absl::StatusOr<std::unique_ptr<const Authorizer>> auth = Authorizer::FromConfig(config.config);
  if (auth.ok()) {
    snapshot->auth = *std::move(auth);
  } else {  // the loader checked the same section; refuse everyone rather than allow all
    Log(*ServerLogger(), spdlog::level::err, "auth section unusable, refusing every call",
        {{"error", auth.status().message()}});
    snapshot->auth = Authorizer::DenyAll();
  }
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
