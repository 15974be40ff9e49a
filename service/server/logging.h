#ifndef QUOTAD_SERVICE_SERVER_LOGGING_H_
#define QUOTAD_SERVICE_SERVER_LOGGING_H_

// Log output of the server: `key=value` text lines or one JSON object per line, and sampling of
// per-call lines so that a busy server does not spend its time logging.

#include <spdlog/formatter.h>
#include <spdlog/logger.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <type_traits>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace quotad {

enum class LogFormat { kText, kJson };

// "text" or "json"; kInvalidArgument otherwise.
absl::Status ParseLogFormat(absl::string_view name, LogFormat* format);

// One field of a log line: a fixed key (letters, digits, '_', '.') and a value from anywhere
// (caller input included). Values are escaped when the line is rendered, never trusted.
struct LogField {
  LogField(absl::string_view k, const absl::AlphaNum& v) : key(k), value(v.Piece()) {}
  // Only an actual bool (a string literal would otherwise convert to bool).
  template <typename T, std::enable_if_t<std::is_same_v<T, bool>, int> = 0>
  LogField(absl::string_view k, T v) : key(k), value(v ? "true" : "false") {}
  absl::string_view key;
  std::string value;
};

// Writes one line built from `msg` (a fixed text) and `fields`. Text format:
// `msg key=value key="escaped value"`: a value is quoted unless it is made of
// [A-Za-z0-9._:/@+,-] only; inside quotes `"` and `\` are backslash-escaped, and control
// characters (C0, DEL, C1), U+2028/U+2029, bidirectional controls (U+061C, U+200E/F,
// U+202A..U+202E, U+2066..U+2069) and bytes that are not UTF-8 are written as \uXXXX / \xNN, so
// a value can neither end its field, start a line, nor reorder what a terminal shows. JSON
// format: the same fields as string members, escaped the same way, built from the fields
// themselves (the formatter never parses a rendered line). Thread-safe.
void Log(spdlog::logger& logger, spdlog::level::level_enum level, absl::string_view msg,
         std::initializer_list<LogField> fields = {});

// The text payload (after the `ts level logger` prefix) of Log(); for tests.
std::string TextLogPayload(absl::string_view msg, std::initializer_list<LogField> fields);

// The JSON object of one line, without the newline; for tests. `msg` and `fields` come from
// Log(); a line written by other code (spdlog directly, a library) has no fields and its whole
// text is the escaped `msg`.
std::string JsonLogLine(absl::string_view time, absl::string_view level, absl::string_view logger,
                        absl::string_view msg, const LogField* fields, size_t field_count);

// One JSON object per line: {"ts":"2026-03-01T12:00:00.000000Z","level":"info",
// "logger":"server","msg":"listening","address":"...",...}. Fields of Log() are taken from the
// call, not from the rendered text; keys that would clobber the envelope are prefixed "field_".
// Thread-safe (stateless).
class JsonLogFormatter final : public spdlog::formatter {
 public:
  void format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) override;
  std::unique_ptr<spdlog::formatter> clone() const override;
};

// Sets the pattern (text) or JsonLogFormatter (json) on every registered logger and on those
// made later by cloning the default one.
void ApplyLogFormat(LogFormat format);

// The logger of the server's components, named "server"; made on first use by cloning the
// default logger (so it follows ApplyLogFormat). Thread-safe.
std::shared_ptr<spdlog::logger> ServerLogger();

// Lets 1 call in `every` through: 0 (or less) none, 1 all. Thread-safe, lock-free.
class LogSampler {
 public:
  explicit LogSampler(int64_t every) : every_(every) {}
  bool Sample() {
    if (every_ <= 0) return false;
    if (every_ == 1) return true;
    return count_.fetch_add(1, std::memory_order_relaxed) % every_ == 0;
  }
  int64_t every() const { return every_; }

 private:
  const int64_t every_;
  std::atomic<uint64_t> count_{0};
};

}  // namespace quotad

#endif  // QUOTAD_SERVICE_SERVER_LOGGING_H_
