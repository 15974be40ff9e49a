// DedupStore: the first answer stands, expires with its window, and survives a restart through
// the journal's file.

#include "service/store/dedup_store.h"

#include <memory>
#include <string>

#include "gtest/gtest.h"
#include "service/store/sqlite_journal.h"
#include "tests/store/temp_dir.h"

namespace quotad {
namespace {

using testing::TempDir;

TEST(DedupStoreTest, FirstAnswerStandsUntilItExpires) {
  auto store = DedupStore::Open(nullptr, 0);  // memory only
  ASSERT_TRUE(store.ok());
  EXPECT_EQ((*store)->Get("r1", 0), std::nullopt);
  EXPECT_EQ(*(*store)->Put("r1", "first", 100, 0), "first");
  EXPECT_EQ(*(*store)->Put("r1", "second", 200, 10), "first");  // a racing copy gets the first
  EXPECT_EQ((*store)->Get("r1", 99), "first");
  EXPECT_EQ((*store)->Get("r1", 100), std::nullopt);  // the dedup window is over
  EXPECT_EQ(*(*store)->Put("r1", "third", 300, 100), "third");
  EXPECT_EQ((*store)->Sweep(300), 1);
  EXPECT_EQ((*store)->size(), 0);
}

TEST(DedupStoreTest, RejectsEmptyIdAndPastExpiry) {
  auto store = *DedupStore::Open(nullptr, 0);
  EXPECT_EQ(store->Put("", "a", 100, 0).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store->Put("r", "a", 10, 10).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(DedupStoreTest, AnswersSurviveARestartWithinTheWindow) {
  TempDir dir;
  const std::string path = dir.File("state.db");
  {
    auto journal = *SqliteJournal::Open(path);
    auto store = *DedupStore::Open(journal.get(), 0);
    ASSERT_TRUE(store->Put("acquire/r1", "granted lease 1", 1000, 0).ok());
    ASSERT_TRUE(store->Put("release/r2", std::string("\0bin\xff", 5), 1000, 0).ok());
    ASSERT_TRUE(store->Put("acquire/short", "x", 50, 0).ok());
    ASSERT_TRUE(journal->Flush().ok());
  }
  auto journal = *SqliteJournal::Open(path);
  auto store = *DedupStore::Open(journal.get(), 60);  // restarted at t=60
  EXPECT_EQ(store->Get("acquire/r1", 60), "granted lease 1");
  EXPECT_EQ(store->Get("release/r2", 60), std::string("\0bin\xff", 5));
  EXPECT_EQ(store->Get("acquire/short", 60), std::nullopt);  // its window ended while down
  EXPECT_EQ(store->size(), 2);
  EXPECT_EQ(*store->Put("acquire/r1", "another", 2000, 60), "granted lease 1");
}

}  // namespace
}  // namespace quotad
