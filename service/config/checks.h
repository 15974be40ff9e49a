#ifndef QUOTAD_SERVICE_CONFIG_CHECKS_H_
#define QUOTAD_SERVICE_CONFIG_CHECKS_H_

// Internal to service/config: the checks config.cc runs on the parts of a parsed file, each
// reporting its error at "file:line:column: field.path". Names are checked by service/core/names.h
// and bounds come from service/core/bounds.h; these functions only point the errors at the file.
// Pure functions; thread-safe.

#include <string>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "quotad/v1/config.pb.h"
#include "service/config/yaml_proto.h"
#include "service/core/policy.h"

namespace quotad::config_internal {

// A message of some parsed file and its field path there. Does not own `map`.
struct Origin {
  const SourceMap* map = nullptr;
  std::string path;

  std::string Field(absl::string_view field) const {
    return path.empty() ? std::string(field) : absl::StrCat(path, ".", field);
  }
  absl::Status Error(absl::string_view field, absl::string_view message) const {
    return map->Error(Field(field), message);
  }
  absl::Status Error(absl::string_view message) const { return map->Error(path, message); }
};

// `status` (from a names.h check) as an error of `origin`'s `field`; OK stays OK.
absl::Status ErrorAt(const Origin& origin, absl::string_view field, const absl::Status& status);

// A duration of the config syntax ("90s", "1h30m") that is longer than zero.
absl::StatusOr<absl::Duration> PositiveDuration(const std::string& text, const Origin& origin,
                                                absl::string_view field);

// Checks one limit (as written, or after a credential's override) and converts it. Errors point
// at `origin`'s fields; the Limit and Override messages share the field names.
absl::StatusOr<LimitSpec> BuildLimit(const v1::Limit& limit, const Origin& origin);

// The `auth` section: tokens name identities, rules and admins refer to them, rules refer to
// `credentials` (the configured names). The one validation of the section: the server's
// Authorizer takes it as checked here.
absl::Status CheckAuth(const v1::Auth& auth, const absl::flat_hash_set<std::string>& credentials,
                       const SourceMap& map);

}  // namespace quotad::config_internal

#endif  // QUOTAD_SERVICE_CONFIG_CHECKS_H_
