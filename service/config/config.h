#ifndef QUOTAD_SERVICE_CONFIG_CONFIG_H_
#define QUOTAD_SERVICE_CONFIG_CONFIG_H_

// YAML configuration -> validated quotad::Policy.
//
// The schema is the proto message quotad.v1.Config (proto/quotad/v1/config.proto): YAML keys are
// its field names. Loading (1) walks the YAML against the descriptor, rejecting unknown fields,
// wrong types and unparseable values, (2) checks names, capacities, durations, time zones and
// references, resolving each credential's profile (built-in or defined in the file) and applying
// its overrides, and (3) runs quotad::ValidatePolicy. Every error is kInvalidArgument with
// "file:line:column: field.path: what, with the bad value".
//
// All functions are thread-safe; the built-in profiles are parsed once, on first use.

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "quotad/v1/config.pb.h"
#include "service/config/yaml_proto.h"
#include "service/core/policy.h"

namespace quotad {

// Parses and validates YAML text; `source` names the file in error messages.
absl::StatusOr<Policy> LoadPolicyFromString(absl::string_view yaml, absl::string_view source);

// Reads `path` and calls LoadPolicyFromString. kNotFound/kInvalidArgument with the path.
absl::StatusOr<Policy> LoadPolicyFile(const std::string& path);

// The names of the built-in provider profiles.
std::vector<std::string> BuiltinProfileNames();

// Everything a configuration file yields, for the server's Admin service and start-up logs.
struct LoadedConfig {
  // What the ledger enforces.
  Policy policy;
  // The file as written (overrides not applied, built-in profiles not included).
  v1::Config config;
  // Every profile a credential may name: the built-in ones, then the file's own.
  std::vector<v1::Profile> profiles;
};

// What a configuration file may hold. Beyond any of them the file is refused (kInvalidArgument
// naming the limit, its flag and value) before it is parsed or walked.
struct ConfigLimits {
  int64_t max_bytes = 4 << 20;  // --max_config_bytes
  YamlLimits yaml;              // --max_config_nodes, --max_config_aliases
};

// Like LoadPolicyFromString / LoadPolicyFile, keeping the schema-level view as well.
//
// LoadConfigFile opens `path` with O_NONBLOCK and checks, on the opened descriptor, that it is a
// regular file within limits.max_bytes before reading it: a FIFO, a device or a directory
// swapped in for the file is refused at once instead of blocking the reader. Errors name the
// path and the kind of problem, never the file's content.
absl::StatusOr<LoadedConfig> LoadConfigFromString(absl::string_view yaml, absl::string_view source,
                                                  const ConfigLimits& limits = ConfigLimits());
absl::StatusOr<LoadedConfig> LoadConfigFile(const std::string& path,
                                            const ConfigLimits& limits = ConfigLimits());

// The built-in provider profiles (service/config/profiles/*.yaml, compiled in), in file order.
// Empty only if they fail to parse, which the Load functions then report as kInternal.
std::vector<v1::Profile> BuiltinProfiles();

// The built-in profile named `name`; kNotFound listing the known names otherwise.
absl::StatusOr<v1::Profile> FindBuiltinProfile(absl::string_view name);

}  // namespace quotad

#endif  // QUOTAD_SERVICE_CONFIG_CONFIG_H_
