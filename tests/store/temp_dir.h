#ifndef QUOTAD_TESTS_STORE_TEMP_DIR_H_
#define QUOTAD_TESTS_STORE_TEMP_DIR_H_

// A fresh directory per test, removed with everything in it at the end.

#include <stdlib.h>
#include <sys/stat.h>

#include <cstdlib>
#include <filesystem>
#include <string>

namespace quotad::testing {

class TempDir {
 public:
  TempDir() {
    const char* base = std::getenv("TEST_TMPDIR");
    std::string templ = std::string(base != nullptr ? base : "/tmp") + "/quotad-store-XXXXXX";
    path_ = mkdtemp(templ.data());
  }
  ~TempDir() {
    chmod(path_.c_str(), 0755);
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }
  std::string File(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

}  // namespace quotad::testing

#endif  // QUOTAD_TESTS_STORE_TEMP_DIR_H_
