#include "service/config/yaml_proto.h"

#include <algorithm>
#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "google/protobuf/descriptor.h"
#include "service/core/names.h"
#include "yaml-cpp/eventhandler.h"
#include "yaml-cpp/yaml.h"

namespace quotad {
namespace {

using google::protobuf::Descriptor;
using google::protobuf::EnumDescriptor;
using google::protobuf::EnumValueDescriptor;
using google::protobuf::FieldDescriptor;
using google::protobuf::Message;
using google::protobuf::Reflection;

// A key as it appears in an error: service/core/names.h's quoting, at most kMaxKeyShown bytes.
constexpr size_t kMaxKeyShown = 80;
std::string Quote(absl::string_view text) { return QuoteValue(text, kMaxKeyShown); }

// What a YAML node is, for "expected X, got Y" messages. A scalar's text is never shown (it may
// be a secret pasted in the wrong place, or a line of a file that is not the config): only its
// length; the line and column point at it.
std::string Describe(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Scalar:
      return absl::StrCat("a scalar of ", node.Scalar().size(), " characters");
    case YAML::NodeType::Sequence:
      return "a list";
    case YAML::NodeType::Map:
      return "a mapping";
    case YAML::NodeType::Null:
      return "nothing (null)";
    default:
      return "an undefined node";
  }
}

std::string LowerEnumNames(const EnumDescriptor* e) {
  std::vector<std::string> names;
  for (int i = 0; i < e->value_count(); ++i) {
    if (e->value(i)->number() == 0) continue;  // *_UNSPECIFIED is never written
    names.push_back(absl::AsciiStrToLower(e->value(i)->name()));
  }
  return absl::StrJoin(names, ", ");
}

std::string Expected(const FieldDescriptor* field) {
  switch (field->cpp_type()) {
    case FieldDescriptor::CPPTYPE_INT32:
      return "a 32-bit integer";
    case FieldDescriptor::CPPTYPE_INT64:
      return "a 64-bit integer";
    case FieldDescriptor::CPPTYPE_UINT32:
      return "a non-negative 32-bit integer";
    case FieldDescriptor::CPPTYPE_UINT64:
      return "a non-negative 64-bit integer";
    case FieldDescriptor::CPPTYPE_DOUBLE:
    case FieldDescriptor::CPPTYPE_FLOAT:
      return "a number";
    case FieldDescriptor::CPPTYPE_BOOL:
      return "true or false";
    case FieldDescriptor::CPPTYPE_ENUM:
      return absl::StrCat("one of ", LowerEnumNames(field->enum_type()));
    case FieldDescriptor::CPPTYPE_STRING:
      return "a string";
    case FieldDescriptor::CPPTYPE_MESSAGE:
      return "a mapping";
  }
  return "a value";
}

class Walker {
 public:
  explicit Walker(SourceMap* map) : map_(map) {}

  void Record(const std::string& path, const YAML::Node& node, const YAML::Mark& fallback) {
    YAML::Mark mark = node.Mark();
    if (mark.line < 0) mark = fallback;
    if (mark.line >= 0) map_->Record(path, mark.line + 1, mark.column + 1);
  }

  absl::Status ErrorAt(const YAML::Mark& mark, absl::string_view path, absl::string_view message) {
    if (mark.line >= 0) map_->Record(std::string(path), mark.line + 1, mark.column + 1);
    return map_->Error(path, message);
  }

  absl::Status WalkMessage(const YAML::Node& node, Message* message, const std::string& path) {
    if (!node.IsMap()) {
      return ErrorAt(node.Mark(), path,
                     absl::StrCat("expected a mapping with fields of ",
                                  message->GetDescriptor()->name(), ", got ", Describe(node)));
    }
    const Descriptor* descriptor = message->GetDescriptor();
    absl::flat_hash_set<int> seen;
    for (auto it = node.begin(); it != node.end(); ++it) {
      const YAML::Node key = it->first;  // a copy: the iterator yields a temporary
      const YAML::Node value = it->second;
      if (!key.IsScalar()) {
        return ErrorAt(key.Mark(), path,
                       absl::StrCat("keys must be field names, got ", Describe(key)));
      }
      const std::string& name = key.Scalar();
      const std::string child = path.empty() ? name : absl::StrCat(path, ".", name);
      const FieldDescriptor* field = descriptor->FindFieldByName(name);
      if (field == nullptr) {
        std::vector<std::string> known;
        for (int i = 0; i < descriptor->field_count(); ++i) {
          known.push_back(descriptor->field(i)->name());
        }
        return ErrorAt(key.Mark(), child,
                       absl::StrCat("unknown field ", Quote(name), " in ", descriptor->name(),
                                    "; known fields: ", absl::StrJoin(known, ", ")));
      }
      if (!seen.insert(field->number()).second) {
        return ErrorAt(key.Mark(), child, absl::StrCat("field ", Quote(name), " given twice"));
      }
      Record(child, value, key.Mark());
      absl::Status status;
      if (field->is_map()) {
        status = WalkMap(value, field, message, child);
      } else if (field->is_repeated()) {
        status = WalkList(value, field, message, child);
      } else if (field->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE) {
        Message* sub = message->GetReflection()->MutableMessage(message, field);
        if (!value.IsNull()) status = WalkMessage(value, sub, child);
      } else {
        status = SetScalar(value, field, message, child);
      }
      if (!status.ok()) return status;
    }
    return absl::OkStatus();
  }

 private:
  absl::Status WalkList(const YAML::Node& node, const FieldDescriptor* field, Message* message,
                        const std::string& path) {
    if (node.IsNull()) return absl::OkStatus();
    if (!node.IsSequence()) {
      return ErrorAt(
          node.Mark(), path,
          absl::StrCat("expected a list of ", Expected(field), ", got ", Describe(node)));
    }
    for (size_t i = 0; i < node.size(); ++i) {
      const YAML::Node& element = node[i];
      const std::string child = absl::StrCat(path, "[", i, "]");
      Record(child, element, node.Mark());
      absl::Status status;
      if (field->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE) {
        status = WalkMessage(element, message->GetReflection()->AddMessage(message, field), child);
      } else {
        status = SetScalar(element, field, message, child);
      }
      if (!status.ok()) return status;
    }
    return absl::OkStatus();
  }

  absl::Status WalkMap(const YAML::Node& node, const FieldDescriptor* field, Message* message,
                       const std::string& path) {
    if (node.IsNull()) return absl::OkStatus();
    if (!node.IsMap()) {
      return ErrorAt(node.Mark(), path, absl::StrCat("expected a mapping, got ", Describe(node)));
    }
    const FieldDescriptor* key_field = field->message_type()->map_key();
    const FieldDescriptor* value_field = field->message_type()->map_value();
    absl::flat_hash_set<std::string> seen;
    for (auto it = node.begin(); it != node.end(); ++it) {
      const YAML::Node key = it->first;  // a copy: the iterator yields a temporary
      const YAML::Node value = it->second;
      const std::string child =
          absl::StrCat(path, ".", key.IsScalar() ? key.Scalar() : std::string("?"));
      if (!key.IsScalar() || !seen.insert(key.Scalar()).second) {
        return ErrorAt(key.Mark(), child,
                       key.IsScalar() ? absl::StrCat("key ", Quote(key.Scalar()), " given twice")
                                      : absl::StrCat("keys must be scalars, got ", Describe(key)));
      }
      Record(child, value, key.Mark());
      Message* entry = message->GetReflection()->AddMessage(message, field);
      absl::Status status = SetScalar(key, key_field, entry, child);
      if (status.ok()) {
        status = value_field->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE
                     ? WalkMessage(
                           value, entry->GetReflection()->MutableMessage(entry, value_field), child)
                     : SetScalar(value, value_field, entry, child);
      }
      if (!status.ok()) return status;
    }
    return absl::OkStatus();
  }

  absl::Status SetScalar(const YAML::Node& node, const FieldDescriptor* field, Message* message,
                         const std::string& path) {
    const Reflection* r = message->GetReflection();
    const bool repeated = field->is_repeated();
    auto bad = [&]() {
      return ErrorAt(node.Mark(), path,
                     absl::StrCat("expected ", Expected(field), ", got ", Describe(node)));
    };
    if (!node.IsScalar()) return bad();
    const std::string& text = node.Scalar();
    switch (field->cpp_type()) {
      case FieldDescriptor::CPPTYPE_INT32: {
        int32_t v;
        if (!absl::SimpleAtoi(text, &v)) return bad();
        repeated ? r->AddInt32(message, field, v) : r->SetInt32(message, field, v);
        break;
      }
      case FieldDescriptor::CPPTYPE_INT64: {
        int64_t v;
        if (!absl::SimpleAtoi(text, &v)) return bad();
        repeated ? r->AddInt64(message, field, v) : r->SetInt64(message, field, v);
        break;
      }
      case FieldDescriptor::CPPTYPE_UINT32: {
        uint32_t v;
        if (!absl::SimpleAtoi(text, &v)) return bad();
        repeated ? r->AddUInt32(message, field, v) : r->SetUInt32(message, field, v);
        break;
      }
      case FieldDescriptor::CPPTYPE_UINT64: {
        uint64_t v;
        if (!absl::SimpleAtoi(text, &v)) return bad();
        repeated ? r->AddUInt64(message, field, v) : r->SetUInt64(message, field, v);
        break;
      }
      case FieldDescriptor::CPPTYPE_DOUBLE: {
        double v;
        if (!absl::SimpleAtod(text, &v)) return bad();
        repeated ? r->AddDouble(message, field, v) : r->SetDouble(message, field, v);
        break;
      }
      case FieldDescriptor::CPPTYPE_FLOAT: {
        float v;
        if (!absl::SimpleAtof(text, &v)) return bad();
        repeated ? r->AddFloat(message, field, v) : r->SetFloat(message, field, v);
        break;
      }
      case FieldDescriptor::CPPTYPE_BOOL: {
        bool v;
        if (absl::EqualsIgnoreCase(text, "true")) {
          v = true;
        } else if (absl::EqualsIgnoreCase(text, "false")) {
          v = false;
        } else {
          return bad();
        }
        repeated ? r->AddBool(message, field, v) : r->SetBool(message, field, v);
        break;
      }
      case FieldDescriptor::CPPTYPE_ENUM: {
        const EnumDescriptor* e = field->enum_type();
        const EnumValueDescriptor* found = nullptr;
        for (int i = 0; i < e->value_count(); ++i) {
          if (e->value(i)->number() != 0 && absl::EqualsIgnoreCase(e->value(i)->name(), text)) {
            found = e->value(i);
          }
        }
        if (found == nullptr) return bad();
        repeated ? r->AddEnumValue(message, field, found->number())
                 : r->SetEnumValue(message, field, found->number());
        break;
      }
      case FieldDescriptor::CPPTYPE_STRING:
        repeated ? r->AddString(message, field, text) : r->SetString(message, field, text);
        break;
      case FieldDescriptor::CPPTYPE_MESSAGE:
        return bad();
    }
    return absl::OkStatus();
  }

  SourceMap* map_;
};

}  // namespace

void SourceMap::Record(const std::string& path, int line, int column) {
  positions_[path] = {line, column};
}

std::string SourceMap::Locate(absl::string_view path) const {
  std::string p(path);
  while (true) {
    auto it = positions_.find(p);
    if (it != positions_.end()) {
      return absl::StrCat(source_, ":", it->second.first, ":", it->second.second);
    }
    if (p.empty()) return source_;
    size_t cut = p.find_last_of(".[");
    p.resize(cut == std::string::npos ? 0 : cut);
  }
}

absl::Status SourceMap::Error(absl::string_view path, absl::string_view message) const {
  if (path.empty()) return absl::InvalidArgumentError(absl::StrCat(Locate(path), ": ", message));
  return absl::InvalidArgumentError(absl::StrCat(Locate(path), ": ", path, ": ", message));
}

namespace {

// The line (1-based) of a "---" that starts a second YAML document, or 0. A first "---" before
// any content only opens the one document.
int SecondDocumentLine(absl::string_view yaml) {
  bool content = false;
  int line = 0;
  for (absl::string_view l : absl::StrSplit(yaml, '\n')) {
    ++line;
    const absl::string_view t = absl::StripTrailingAsciiWhitespace(l);
    if (t == "---" || absl::StartsWith(t, "--- ")) {
      if (content) return line;
      continue;
    }
    const absl::string_view body = absl::StripLeadingAsciiWhitespace(t);
    if (!body.empty() && body[0] != '#') content = true;
  }
  return 0;
}

// Counts the nodes of one document as the walk would see them (an alias counts as the whole
// subtree it names), from the parser's events, without building or expanding anything. Throws
// LimitHit at the first event beyond a limit.
class NodeCounter final : public YAML::EventHandler {
 public:
  struct LimitHit {
    YAML::Mark mark;
    std::string message;
  };

  explicit NodeCounter(const YamlLimits& limits) : limits_(limits) {}

  void OnDocumentStart(const YAML::Mark&) override {}
  void OnDocumentEnd() override {}
  void OnNull(const YAML::Mark& mark, YAML::anchor_t anchor) override { Leaf(mark, anchor, 1); }
  void OnScalar(const YAML::Mark& mark, const std::string&, YAML::anchor_t anchor,
                const std::string&) override {
    Leaf(mark, anchor, 1);
  }
  void OnAlias(const YAML::Mark& mark, YAML::anchor_t anchor) override {
    if (++aliases_ > limits_.max_aliases) {
      throw LimitHit{mark, absl::StrCat("more than ", limits_.max_aliases,
                                        " aliases (*name references); the limit is "
                                        "--max_config_aliases=",
                                        limits_.max_aliases)};
    }
    auto it = sizes_.find(anchor);
    Leaf(mark, 0, it == sizes_.end() ? 1 : it->second);
  }
  void OnSequenceStart(const YAML::Mark& mark, const std::string&, YAML::anchor_t anchor,
                       YAML::EmitterStyle::value) override {
    Open(mark, anchor);
  }
  void OnSequenceEnd() override { Close(); }
  void OnMapStart(const YAML::Mark& mark, const std::string&, YAML::anchor_t anchor,
                  YAML::EmitterStyle::value) override {
    Open(mark, anchor);
  }
  void OnMapEnd() override { Close(); }

 private:
  struct Open_ {
    YAML::anchor_t anchor;
    int64_t size;
  };

  void Add(const YAML::Mark& mark, int64_t n) {
    // Saturating: sizes of nested aliases grow geometrically.
    total_ = n > limits_.max_nodes - total_ ? limits_.max_nodes + 1 : total_ + n;
    if (total_ > limits_.max_nodes) {
      throw LimitHit{mark, absl::StrCat("more than ", limits_.max_nodes,
                                        " nodes once aliases are expanded; the limit is "
                                        "--max_config_nodes=",
                                        limits_.max_nodes)};
    }
  }
  void Leaf(const YAML::Mark& mark, YAML::anchor_t anchor, int64_t n) {
    Add(mark, n);
    if (!open_.empty()) open_.back().size = std::min(open_.back().size + n, limits_.max_nodes + 1);
    if (anchor != 0) sizes_[anchor] = n;
  }
  void Open(const YAML::Mark& mark, YAML::anchor_t anchor) {
    Add(mark, 1);
    open_.push_back(Open_{anchor, 1});
  }
  void Close() {
    if (open_.empty()) return;
    const Open_ done = open_.back();
    open_.pop_back();
    if (!open_.empty()) {
      open_.back().size = std::min(open_.back().size + done.size, limits_.max_nodes + 1);
    }
    if (done.anchor != 0) sizes_[done.anchor] = done.size;
  }

  const YamlLimits limits_;
  int64_t total_ = 0;
  int64_t aliases_ = 0;
  std::vector<Open_> open_;
  absl::flat_hash_map<YAML::anchor_t, int64_t> sizes_;
};

}  // namespace

absl::Status ReadYamlIntoMessage(absl::string_view yaml, google::protobuf::Message* message,
                                 SourceMap* map, const YamlLimits& limits) {
  // One document only. yaml-cpp 0.7's LoadAll can loop forever on some malformed input (found by
  // the config fuzzer), so the second document is found by its separator instead.
  if (const int second = SecondDocumentLine(yaml); second > 0) {
    map->Record("", second, 1);
    return map->Error("", "expected one YAML document, found a second one");
  }
  // First count, on the parser's events only; then build.
  try {
    std::istringstream in{std::string(yaml)};
    YAML::Parser parser(in);
    NodeCounter counter(limits);
    parser.HandleNextDocument(counter);
  } catch (const NodeCounter::LimitHit& hit) {
    if (hit.mark.line >= 0) map->Record("", hit.mark.line + 1, hit.mark.column + 1);
    return map->Error("", hit.message);
  } catch (const YAML::Exception& e) {
    if (e.mark.line >= 0) map->Record("", e.mark.line + 1, e.mark.column + 1);
    return map->Error("", absl::StrCat("YAML syntax error: ", e.msg));
  }
  YAML::Node document;
  try {
    document = YAML::Load(std::string(yaml));
  } catch (const YAML::Exception& e) {
    if (e.mark.line >= 0) map->Record("", e.mark.line + 1, e.mark.column + 1);
    return map->Error("", absl::StrCat("YAML syntax error: ", e.msg));
  }
  if (!document.IsDefined() || document.IsNull()) return absl::OkStatus();
  try {
    return Walker(map).WalkMessage(document, message, "");
  } catch (const YAML::Exception& e) {
    return map->Error("", absl::StrCat("YAML error: ", e.what()));
  }
}

}  // namespace quotad
