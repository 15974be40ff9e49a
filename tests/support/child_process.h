#ifndef QUOTAD_TESTS_SUPPORT_CHILD_PROCESS_H_
#define QUOTAD_TESTS_SUPPORT_CHILD_PROCESS_H_

// A real quotad binary (or any helper program) run by a test, with its output in a file. The
// process is SIGKILLed by the destructor if the test did not stop it. Not thread-safe.

#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace quotad {
namespace testing {

inline std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

class ChildProcess {
 public:
  ChildProcess(const std::string& binary, std::vector<std::string> args) {
    char tmpl[] = "/tmp/quotad_client_test_XXXXXX";
    const int fd = mkstemp(tmpl);
    log_path_ = tmpl;
    pid_ = fork();
    if (pid_ == 0) {
      dup2(fd, STDERR_FILENO);
      dup2(fd, STDOUT_FILENO);
      std::vector<char*> argv;
      argv.push_back(const_cast<char*>(binary.c_str()));
      for (std::string& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv(binary.c_str(), argv.data());
      _exit(127);
    }
    close(fd);
  }
  ~ChildProcess() {
    if (!exit_status_.has_value()) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    unlink(log_path_.c_str());
  }
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  pid_t pid() const { return pid_; }
  std::string log() const { return ReadFile(log_path_); }

  // The text after `marker` up to the end of its line, once the output has it (bounded wait).
  std::optional<std::string> WaitForLine(const std::string& marker, absl::Duration timeout) {
    const absl::Time deadline = absl::Now() + timeout;
    while (absl::Now() < deadline) {
      const std::string text = log();
      const size_t at = text.find(marker);
      if (at != std::string::npos) {
        const size_t end = text.find_first_of(" \n", at + marker.size());
        if (end != std::string::npos)
          return text.substr(at + marker.size(), end - at - marker.size());
      }
      if (WaitForExit(absl::ZeroDuration()).has_value()) return std::nullopt;
      absl::SleepFor(absl::Milliseconds(10));
    }
    return std::nullopt;
  }

  // quotad's port from its `listening address=HOST:PORT` line.
  std::optional<int> WaitForPort(absl::Duration timeout) {
    std::optional<std::string> addr = WaitForLine("listening address=", timeout);
    int port = 0;
    if (addr.has_value() && absl::SimpleAtoi(addr->substr(addr->rfind(':') + 1), &port))
      return port;
    return std::nullopt;
  }

  // The exit code once exited within `timeout`; -signal when killed.
  std::optional<int> WaitForExit(absl::Duration timeout) {
    const absl::Time deadline = absl::Now() + timeout;
    for (;;) {
      if (exit_status_.has_value()) return exit_status_;
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        exit_status_ = WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
        return exit_status_;
      }
      if (absl::Now() >= deadline) return std::nullopt;
      absl::SleepFor(absl::Milliseconds(10));
    }
  }

  void Signal(int sig) { kill(pid_, sig); }

 private:
  pid_t pid_ = -1;
  std::string log_path_;
  std::optional<int> exit_status_;
};

// True when the quotad binary has a flag named `flag` (from --helpfull).
inline bool QuotadHasFlag(const std::string& binary, const std::string& flag) {
  ChildProcess help(binary, {"--helpfull"});
  help.WaitForExit(absl::Seconds(10));
  return help.log().find(absl::StrCat("-", flag, ")")) != std::string::npos ||
         help.log().find(absl::StrCat("--", flag, " ")) != std::string::npos ||
         help.log().find(absl::StrCat("-", flag, " (")) != std::string::npos;
}

}  // namespace testing
}  // namespace quotad

#endif  // QUOTAD_TESTS_SUPPORT_CHILD_PROCESS_H_
