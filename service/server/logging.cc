#include "service/server/logging.h"

#include <spdlog/spdlog.h>

#include <atomic>
#include <chrono>
#include <utility>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace quotad {
namespace {

constexpr char kTextPattern[] = "%Y-%m-%dT%H:%M:%S.%fZ level=%l logger=%n %v";

// The format chosen by ApplyLogFormat (Log() renders text itself; JSON is rendered by the
// formatter from the fields of the call, handed over in `t_fields`).
std::atomic<LogFormat> g_format{LogFormat::kText};

struct PendingFields {
  absl::string_view msg;
  const LogField* fields;
  size_t count;
};
thread_local const PendingFields* t_fields = nullptr;

// Decodes one UTF-8 sequence at s[i]; returns its length (0 when invalid) and the code point.
size_t DecodeUtf8(absl::string_view s, size_t i, uint32_t* cp) {
  const unsigned char c = static_cast<unsigned char>(s[i]);
  size_t n;
  uint32_t v;
  if (c < 0x80) {
    *cp = c;
    return 1;
  } else if ((c & 0xe0) == 0xc0) {
    n = 2;
    v = c & 0x1f;
  } else if ((c & 0xf0) == 0xe0) {
    n = 3;
    v = c & 0x0f;
  } else if ((c & 0xf8) == 0xf0) {
    n = 4;
    v = c & 0x07;
  } else {
    return 0;
  }
  if (i + n > s.size()) return 0;
  for (size_t k = 1; k < n; ++k) {
    const unsigned char cc = static_cast<unsigned char>(s[i + k]);
    if ((cc & 0xc0) != 0x80) return 0;
    v = (v << 6) | (cc & 0x3f);
  }
  // Overlong forms, surrogates and values past U+10FFFF are not UTF-8.
  if ((n == 2 && v < 0x80) || (n == 3 && v < 0x800) || (n == 4 && v < 0x10000) || v > 0x10ffff ||
      (v >= 0xd800 && v <= 0xdfff)) {
    return 0;
  }
  *cp = v;
  return n;
}

// Code points that must never reach a log verbatim: controls (C0, DEL, C1), line and paragraph
// separators, and the bidirectional controls that reorder what a terminal shows.
bool MustEscape(uint32_t cp) {
  return cp < 0x20 || (cp >= 0x7f && cp <= 0x9f) || cp == 0x2028 || cp == 0x2029 ||
         cp == 0x061c || cp == 0x200e || cp == 0x200f || (cp >= 0x202a && cp <= 0x202e) ||
         (cp >= 0x2066 && cp <= 0x2069) || cp == 0xfeff;
}

void AppendU(std::string* out, uint32_t cp) {
  static const char kHex[] = "0123456789abcdef";
  out->append("\\u");
  for (int shift = 12; shift >= 0; shift -= 4) out->push_back(kHex[(cp >> shift) & 15]);
}

// Escapes `s` for the inside of a quoted text value (json = false) or a JSON string (json =
// true). Invalid UTF-8: \xNN in text, U+FFFD in JSON (which must stay valid UTF-8).
void AppendEscaped(std::string* out, absl::string_view s, bool json) {
  for (size_t i = 0; i < s.size();) {
    uint32_t cp = 0;
    const size_t n = DecodeUtf8(s, i, &cp);
    if (n == 0) {
      if (json) {
        out->append("\\ufffd");
      } else {
        static const char kHex[] = "0123456789abcdef";
        const unsigned char c = static_cast<unsigned char>(s[i]);
        out->append("\\x");
        out->push_back(kHex[c >> 4]);
        out->push_back(kHex[c & 15]);
      }
      ++i;
      continue;
    }
    switch (cp) {
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
        if (MustEscape(cp)) {
          AppendU(out, cp);
        } else {
          out->append(s.data() + i, n);
        }
    }
    i += n;
  }
}

void AppendJsonString(std::string* out, absl::string_view s) {
  out->push_back('"');
  AppendEscaped(out, s, /*json=*/true);
  out->push_back('"');
}

bool IsBare(absl::string_view value) {
  if (value.empty()) return false;
  for (char c : value) {
    if (!absl::ascii_isalnum(c) && absl::string_view("._:/@+,-").find(c) == absl::string_view::npos) {
      return false;
    }
  }
  return true;
}

void AppendTextPayload(std::string* out, absl::string_view msg, const LogField* fields,
                       size_t count) {
  AppendEscaped(out, msg, /*json=*/false);
  for (size_t i = 0; i < count; ++i) {
    out->push_back(' ');
    AppendEscaped(out, fields[i].key, /*json=*/false);
    out->push_back('=');
    if (IsBare(fields[i].value)) {
      out->append(fields[i].value);
    } else {
      out->push_back('"');
      AppendEscaped(out, fields[i].value, /*json=*/false);
      out->push_back('"');
    }
  }
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
                        absl::string_view msg, const LogField* fields, size_t field_count) {
  std::string out = "{\"ts\":";
  AppendJsonString(&out, time);
  out.append(",\"level\":");
  AppendJsonString(&out, level);
  out.append(",\"logger\":");
  AppendJsonString(&out, logger);
  out.append(",\"msg\":");
  AppendJsonString(&out, msg);
  for (size_t i = 0; i < field_count; ++i) {
    const absl::string_view k = fields[i].key;
    out.push_back(',');
    if (k == "ts" || k == "level" || k == "logger" || k == "msg") {
      AppendJsonString(&out, absl::StrCat("field_", k));
    } else {
      AppendJsonString(&out, k);
    }
    out.push_back(':');
    AppendJsonString(&out, fields[i].value);
  }
  out.push_back('}');
  return out;
}

std::string TextLogPayload(absl::string_view msg, std::initializer_list<LogField> fields) {
  std::string out;
  AppendTextPayload(&out, msg, fields.begin(), fields.size());
  return out;
}

void Log(spdlog::logger& logger, spdlog::level::level_enum level, absl::string_view msg,
         std::initializer_list<LogField> fields) {
  if (!logger.should_log(level)) return;
  if (g_format.load(std::memory_order_relaxed) == LogFormat::kJson) {
    // The formatter runs on this thread, inside log(): it takes the fields from here.
    const PendingFields pending{msg, fields.begin(), fields.size()};
    const PendingFields* outer = std::exchange(t_fields, &pending);
    logger.log(level, spdlog::string_view_t(msg.data(), msg.size()));
    t_fields = outer;
    return;
  }
  std::string payload;
  AppendTextPayload(&payload, msg, fields.begin(), fields.size());
  logger.log(level, spdlog::string_view_t(payload.data(), payload.size()));
}

void JsonLogFormatter::format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) {
  const absl::Time t = absl::FromChrono(msg.time);
  const std::string ts = absl::FormatTime("%Y-%m-%dT%H:%M:%E6SZ", t, absl::UTCTimeZone());
  const auto level = spdlog::level::to_string_view(msg.level);
  const absl::string_view payload(msg.payload.data(), msg.payload.size());
  const absl::string_view level_name(level.data(), level.size());
  const absl::string_view logger_name(msg.logger_name.data(), msg.logger_name.size());
  // From Log() on this thread: its fields. Otherwise (spdlog called directly, another library)
  // the whole text is the message: it is escaped, never split into fields.
  const PendingFields* pending = t_fields;
  const std::string line =
      pending != nullptr && pending->msg.data() == payload.data()
          ? JsonLogLine(ts, level_name, logger_name, pending->msg, pending->fields, pending->count)
          : JsonLogLine(ts, level_name, logger_name, payload, nullptr, 0);
  dest.append(line.data(), line.data() + line.size());
  dest.push_back('\n');
}

std::unique_ptr<spdlog::formatter> JsonLogFormatter::clone() const {
  return std::make_unique<JsonLogFormatter>();
}

void ApplyLogFormat(LogFormat format) {
  g_format.store(format, std::memory_order_relaxed);
  if (format == LogFormat::kJson) {
    spdlog::set_formatter(std::make_unique<JsonLogFormatter>());
  } else {
    spdlog::set_pattern(kTextPattern, spdlog::pattern_time_type::utc);
  }
}

std::shared_ptr<spdlog::logger> ServerLogger() {
  static const std::shared_ptr<spdlog::logger> logger = [] {
    std::shared_ptr<spdlog::logger> l = spdlog::get("server");
    if (l == nullptr) {
      l = spdlog::default_logger()->clone("server");
      spdlog::register_logger(l);
    }
    return l;
  }();
  return logger;
}

}  // namespace quotad
