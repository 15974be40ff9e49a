#ifndef QUOTAD_SERVICE_CONFIG_BUILTIN_PROFILES_H_
#define QUOTAD_SERVICE_CONFIG_BUILTIN_PROFILES_H_

// The text of service/config/profiles/*.yaml, compiled into the library by CMake
// (embed_profiles.cmake generates the definitions) so that the binary needs no data files.

#include <cstddef>

namespace quotad {
namespace config_internal {

struct EmbeddedFile {
  const char* name;  // e.g. "virustotal.yaml"
  const char* text;
};

extern const EmbeddedFile kBuiltinProfileFiles[];
extern const size_t kBuiltinProfileFileCount;

}  // namespace config_internal
}  // namespace quotad

#endif  // QUOTAD_SERVICE_CONFIG_BUILTIN_PROFILES_H_
