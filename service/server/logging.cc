#include "service/server/logging.h"

#include <spdlog/spdlog.h>

#include <chrono>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace quotad {
namespace {

constexpr char kTextPattern[] = "%Y-%m-%dT%H:%M:%S.%fZ level=%l logger=%n %v";

void AppendJsonString(std::string* out, absl::string_view s) {
  out->push_back('"');
  for (unsigned char c : s) {
    switch (c) {
      case '"':
        out->append("\\\"");
        break;
      case '\\':
        out->append("\\\\");
        break;
      case '\n':
        out->append("\\n");
        break;
      case '\r':
        out->append("\\r");
        break;
      case '\t':
        out->append("\\t");
        break;
      default:
        if (c < 0x20 || c == 0x7f) {
          static const char kHex[] = "0123456789abcdef";
          out->append("\\u00");
          out->push_back(kHex[c >> 4]);
          out->push_back(kHex[c & 15]);
        } else {
          // Bytes >= 0x80 pass through; invalid UTF-8 stays invalid (names are validated UTF-8).
          out->push_back(static_cast<char>(c));
        }
    }
  }
  out->push_back('"');
}

bool IsKey(absl::string_view key) {
  if (key.empty()) return false;
  for (char c : key) {
    if (!absl::ascii_isalnum(c) && c != '_' && c != '.') return false;
  }
  return true;
}

}  // namespace

absl::Status ParseLogFormat(absl::string_view name, LogFormat* format) {
  if (name == "text") {
    *format = LogFormat::kText;
  } else if (name == "json") {
    *format = LogFormat::kJson;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("--log_format=", name, " is not one of text, json"));
  }
  return absl::OkStatus();
}

std::string JsonLogLine(absl::string_view time, absl::string_view level, absl::string_view logger,
                        absl::string_view payload) {
  std::string out = "{\"ts\":";
  AppendJsonString(&out, time);
  out.append(",\"level\":");
  AppendJsonString(&out, level);
  out.append(",\"logger\":");
  AppendJsonString(&out, logger);
  // Words up to the first key=value are the message; then fields, values maybe "quoted".
  std::string msg;
  std::vector<std::pair<std::string, std::string>> fields;
  size_t i = 0;
  bool in_fields = false;
  while (i < payload.size()) {
    while (i < payload.size() && payload[i] == ' ') ++i;
    if (i >= payload.size()) break;
    size_t end = i;
    while (end < payload.size() && payload[end] != ' ' && payload[end] != '=') ++end;
    if (end < payload.size() && payload[end] == '=' && IsKey(payload.substr(i, end - i))) {
      in_fields = true;
      std::string key(payload.substr(i, end - i));
      size_t v = end + 1;
      std::string value;
      if (v < payload.size() && payload[v] == '"') {
        ++v;
        while (v < payload.size() && payload[v] != '"') {
          if (payload[v] == '\\' && v + 1 < payload.size()) ++v;
          value.push_back(payload[v++]);
        }
        if (v < payload.size()) ++v;  // closing quote
      } else {
        while (v < payload.size() && payload[v] != ' ') value.push_back(payload[v++]);
      }
      fields.emplace_back(std::move(key), std::move(value));
      i = v;
      continue;
    }
    // A word: part of the message, or (after the fields began) appended to it.
    while (end < payload.size() && payload[end] != ' ') ++end;
    if (!msg.empty()) msg.push_back(' ');
    absl::StrAppend(&msg, payload.substr(i, end - i));
    i = end;
    (void)in_fields;
  }
  out.append(",\"msg\":");
  AppendJsonString(&out, msg);
  for (const auto& [k, v] : fields) {
    if (k == "ts" || k == "level" || k == "logger" || k == "msg") {
      out.append(",");
      AppendJsonString(&out, absl::StrCat("field_", k));
    } else {
      out.append(",");
      AppendJsonString(&out, k);
    }
    out.append(":");
    AppendJsonString(&out, v);
  }
  out.push_back('}');
  return out;
}

void JsonLogFormatter::format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) {
  const absl::Time t = absl::FromChrono(msg.time);
  const std::string ts = absl::FormatTime("%Y-%m-%dT%H:%M:%E6SZ", t, absl::UTCTimeZone());
  const auto level = spdlog::level::to_string_view(msg.level);
  const std::string line =
      JsonLogLine(ts, absl::string_view(level.data(), level.size()),
                  absl::string_view(msg.logger_name.data(), msg.logger_name.size()),
                  absl::string_view(msg.payload.data(), msg.payload.size()));
  dest.append(line.data(), line.data() + line.size());
  dest.push_back('\n');
}

std::unique_ptr<spdlog::formatter> JsonLogFormatter::clone() const {
  return std::make_unique<JsonLogFormatter>();
}

void ApplyLogFormat(LogFormat format) {
  if (format == LogFormat::kJson) {
    spdlog::set_formatter(std::make_unique<JsonLogFormatter>());
  } else {
    spdlog::set_pattern(kTextPattern, spdlog::pattern_time_type::utc);
  }
}

}  // namespace quotad
