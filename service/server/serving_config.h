#ifndef QUOTAD_SERVICE_SERVER_SERVING_CONFIG_H_
#define QUOTAD_SERVICE_SERVER_SERVING_CONFIG_H_

// The configuration the services answer under (profiles for Admin answers, the access rules),
// and the caller of one request as the services see it. No gRPC type: the transport maps the
// call's metadata to a Caller with Authenticate().

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "quotad/v1/quotad.pb.h"
#include "service/config/config.h"
#include "service/server/auth.h"

namespace quotad {

// What the services keep of one loaded configuration. Immutable once built; thread-safe.
struct ServingConfig {
  absl::flat_hash_map<std::string, std::string> profile_of;  // credential -> profile
  std::vector<v1::Profile> profiles;                         // built-in, then the file's
  absl::flat_hash_set<std::string> builtin;
  // Who may do what (the config's `auth` section); allows everything without one. Never null.
  std::unique_ptr<const Authorizer> auth;

  // An auth section the Authorizer cannot use (the loader checked it already) refuses everyone
  // rather than allowing all, and is logged.
  static std::shared_ptr<const ServingConfig> Build(const LoadedConfig& config);
};

// Who sends one request, as the transport found out, and what the services need of the call.
// A plain value; the services trust it (the transport authenticated it).
struct Caller {
  // The authenticated identity; kAnonymousIdentity without an auth section.
  std::string identity;
  // The configuration in force when the call arrived (its access rules decide this call).
  // Never null.
  std::shared_ptr<const ServingConfig> config;
  // When the client stops listening, on the services' clock (InfiniteFuture: no deadline).
  // A waiting Acquire never waits beyond it.
  absl::Time deadline = absl::InfiniteFuture();
};

// The configuration in force: read by every call, swapped by reloads. A reader holds its
// snapshot for as long as it uses it; the old one is freed when its last reader lets go.
// Thread-safe.
class ConfigInForce {
 public:
  explicit ConfigInForce(const LoadedConfig& config) { Publish(config); }

  std::shared_ptr<const ServingConfig> Get() const {
    return std::atomic_load_explicit(&config_, std::memory_order_acquire);
  }
  void Publish(const LoadedConfig& config) {
    std::atomic_store_explicit(&config_, ServingConfig::Build(config), std::memory_order_release);
  }

  // The caller presenting `authorization` (the `authorization` metadata, "Bearer <token>";
  // nullopt when absent): kAnonymousIdentity without auth, else the token's identity or
  // kUnauthenticated (the message never echoes the token).
  absl::StatusOr<Caller> Authenticate(std::optional<absl::string_view> authorization) const;

 private:
  std::shared_ptr<const ServingConfig> config_;  // std::atomic_load / atomic_store only
};

}  // namespace quotad

#endif  // QUOTAD_SERVICE_SERVER_SERVING_CONFIG_H_
