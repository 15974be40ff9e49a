// TempDir makes a fresh directory and removes it with its content, even when a test made it
// read-only; Eventually returns as soon as its condition holds and gives up at its deadline.

#include <sys/stat.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <string>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "tests/support/eventually.h"
#include "tests/support/temp_dir.h"

namespace quotad::testing {
namespace {

TEST(TempDirTest, IsFreshAndRemovedWithItsContent) {
  std::string path;
  {
    TempDir a("unit");
    TempDir b("unit");
    path = a.path();
    EXPECT_NE(a.path(), b.path());
    EXPECT_TRUE(std::filesystem::is_directory(path));
    EXPECT_NE(path.find("/quotad-unit-"), std::string::npos) << path;
    const std::string file = a.WriteFile("state.yaml", "credentials: []\n");
    EXPECT_EQ(file, a.File("state.yaml"));
    std::ifstream in(file);
    std::string line;
    std::getline(in, line);
    EXPECT_EQ(line, "credentials: []");
    std::filesystem::create_directories(a.File("sub/dir"));
    ASSERT_EQ(chmod(path.c_str(), 0500), 0);  // read-only: the destructor must still remove it
  }
  EXPECT_FALSE(std::filesystem::exists(path));
}

TEST(EventuallyTest, ReturnsOnceTheConditionHolds) {
  int calls = 0;
  EXPECT_TRUE(Eventually([&] { return ++calls == 3; }, absl::Seconds(10), absl::Milliseconds(1)));
  EXPECT_EQ(calls, 3);
}

TEST(EventuallyTest, GivesUpAtTheDeadline) {
  const absl::Time start = absl::Now();
  EXPECT_FALSE(Eventually([] { return false; }, absl::Milliseconds(30), absl::Milliseconds(1)));
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(30));
}

}  // namespace
}  // namespace quotad::testing
