// OpenStore: the options pick the implementation; the server sees only Store, Journal and
// DedupStore.

#include "service/store/store.h"

#include <cstdio>
#include <memory>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/support/status_matchers.h"
#include "tests/support/temp_dir.h"

namespace quotad {
namespace {

using ::testing::HasSubstr;
using testing::StatusIs;
using testing::TempDir;

Reservation Res(int64_t until, int64_t units) {
  return Reservation{CounterKey{"c", "f.per_day", ""}, 0, until, units};
}

TEST(OpenStoreTest, NoPathIsMemoryOnlyWithoutAJournal) {
  auto store = OpenStore(StoreOptions{}, 0);
  ASSERT_OK(store);
  EXPECT_EQ((*store)->journal(), nullptr);
  EXPECT_EQ((*store)->description(), "memory-only");
  EXPECT_OK((*store)->Flush());
  EXPECT_EQ((*store)->Files().file_bytes, 0);
  EXPECT_EQ((*store)->Files().wal_bytes, 0);
  DedupStore& dedup = (*store)->dedup();
  EXPECT_EQ(*dedup.Put("r1", "first", 100, 0), "first");
  EXPECT_EQ(*dedup.Put("r1", "second", 100, 1), "first");
}

TEST(OpenStoreTest, APathIsASqliteFileThatKeepsJournalAndAnswersAcrossARestart) {
  TempDir dir;
  StoreOptions options;
  options.path = dir.File("state.db");
  {
    auto store = OpenStore(options, 0);
    ASSERT_OK(store);
    EXPECT_EQ((*store)->description(), options.path);
    ASSERT_NE((*store)->journal(), nullptr);
    ASSERT_OK((*store)->journal()->Reserve({Res(1000, 7)}));
    ASSERT_OK((*store)->dedup().Put("acquire/r1", "granted", 1000, 0));
    ASSERT_OK((*store)->Flush());
    EXPECT_GT((*store)->Files().file_bytes, 0);
  }
  auto store = OpenStore(options, 10);
  ASSERT_OK(store);
  EXPECT_EQ((*store)->dedup().Get("acquire/r1", 10), "granted");
  auto state = (*store)->journal()->Load();
  ASSERT_OK(state);
  ASSERT_EQ(state->reservations.size(), 1u);
  EXPECT_EQ(state->reservations[0].units, 7);
}

TEST(OpenStoreTest, ACorruptFileFailsNamingThePathUnlessResetIsAsked) {
  TempDir dir;
  StoreOptions options;
  options.path = dir.File("state.db");
  {
    std::FILE* f = std::fopen(options.path.c_str(), "wb");
    std::fputs(std::string(8192, 'z').c_str(), f);
    std::fclose(f);
  }
  auto store = OpenStore(options, 0);
  ASSERT_THAT(store, StatusIs(absl::StatusCode::kDataLoss, HasSubstr(options.path)));
  options.reset_corrupt = true;
  store = OpenStore(options, 0);
  ASSERT_OK(store);
  EXPECT_TRUE((*store)->journal()->Load()->reservations.empty());
}

}  // namespace
}  // namespace quotad
