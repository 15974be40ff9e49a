#ifndef QUOTAD_SERVICE_CONFIG_YAML_PROTO_H_
#define QUOTAD_SERVICE_CONFIG_YAML_PROTO_H_

// Reads YAML into a protobuf message by walking the message's descriptor, so that the proto
// message is the schema: every key must be a field, every value must have the field's type.

#include <cstdint>
#include <string>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "google/protobuf/message.h"

namespace quotad {

// Where each field path of one parsed document ("credentials[2].overrides[0].capacity") was
// written, so that later (semantic) errors can point at a line.
// Not thread-safe for writing; const methods may be called concurrently.
class SourceMap {
 public:
  explicit SourceMap(std::string source) : source_(std::move(source)) {}

  // `line` and `column` are 1-based.
  void Record(const std::string& path, int line, int column);

  // "source:line:col" of `path`, or of its longest recorded prefix, or just "source".
  std::string Locate(absl::string_view path) const;

  // kInvalidArgument "source:line:col: path: message".
  absl::Status Error(absl::string_view path, absl::string_view message) const;

  const std::string& source() const { return source_; }

 private:
  std::string source_;
  absl::flat_hash_map<std::string, std::pair<int, int>> positions_;
};

// Bounds on one YAML document, checked on the parser's events before any node is built: an alias
// bomb (a few KB of nested `*a` references that expand to billions of nodes) is refused in
// microseconds instead of being walked.
struct YamlLimits {
  // Nodes (scalars, lists, mappings) counting every alias as the whole subtree it names.
  int64_t max_nodes = 500'000;
  // `*name` references.
  int64_t max_aliases = 1'000;
};

// Parses `yaml` and fills `message` from it; `map` (which names the source) receives the position
// of every field path. Unknown keys, repeated keys, wrong types and unparseable values are
// kInvalidArgument naming the source, line, column, field path and the kind of problem (a
// scalar found where a list or mapping belongs is described by its length, never echoed: a file
// that is not the config at all, such as an env file of secrets, must not end up in a log). A
// document beyond `limits` is kInvalidArgument naming the limit and its value. An empty
// document leaves `message` empty. Does not own `message` or `map`.
absl::Status ReadYamlIntoMessage(absl::string_view yaml, google::protobuf::Message* message,
                                 SourceMap* map, const YamlLimits& limits = YamlLimits());

}  // namespace quotad

#endif  // QUOTAD_SERVICE_CONFIG_YAML_PROTO_H_
