#ifndef QUOTAD_TESTS_SUPPORT_TEMP_DIR_H_
#define QUOTAD_TESTS_SUPPORT_TEMP_DIR_H_

// A fresh directory for one test (a state file, a config file, a socket), removed with
// everything in it when the TempDir is destroyed. Under $TEST_TMPDIR when set, else /tmp.
// Not thread-safe; owns the directory on disk.

#include <string>

#include "absl/strings/string_view.h"

namespace quotad::testing {

class TempDir {
 public:
  // Creates <base>/quotad-<prefix>-XXXXXX; aborts the test binary if it cannot (nothing a test
  // could do without its directory makes sense).
  explicit TempDir(absl::string_view prefix = "test");
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }
  // path()/name.
  std::string File(absl::string_view name) const;
  // Writes `contents` to path()/name (truncating it) and returns that path.
  std::string WriteFile(absl::string_view name, absl::string_view contents) const;

 private:
  std::string path_;
};

}  // namespace quotad::testing

#endif  // QUOTAD_TESTS_SUPPORT_TEMP_DIR_H_
