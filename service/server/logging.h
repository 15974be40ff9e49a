#ifndef QUOTAD_SERVICE_SERVER_LOGGING_H_
#define QUOTAD_SERVICE_SERVER_LOGGING_H_

// Log output of the server: `key=value` text lines or one JSON object per line, and sampling of
// per-call lines so that a busy server does not spend its time logging.

#include <spdlog/formatter.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace quotad {

enum class LogFormat { kText, kJson };

// "text" or "json"; kInvalidArgument otherwise.
absl::Status ParseLogFormat(absl::string_view name, LogFormat* format);

// Formats a message written as `words key=value key="quoted value" ...` as one JSON object:
// {"ts":"2026-03-01T12:00:00.000000Z","level":"info","logger":"server","msg":"words",
//  "key":"value",...}. Values stay strings; everything is escaped. Thread-safe (stateless).
class JsonLogFormatter final : public spdlog::formatter {
 public:
  void format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) override;
  std::unique_ptr<spdlog::formatter> clone() const override;
};

// The JSON line for a message (what JsonLogFormatter writes, without the newline); for tests.
std::string JsonLogLine(absl::string_view time, absl::string_view level, absl::string_view logger,
                        absl::string_view payload);

// Sets the pattern (text) or JsonLogFormatter (json) on every registered logger and on those
// made later by cloning the default one.
void ApplyLogFormat(LogFormat format);

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
