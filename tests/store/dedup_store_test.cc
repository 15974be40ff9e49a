// The DedupStore implementations: the first answer stands and expires with its window (both),
// and a DurableDedupStore's answers survive a restart through its log (the SQLite file) until
// they expire or the journal compacts them away.

#include "service/store/dedup_store.h"

#include <functional>
#include <memory>
#include <ostream>
#include <string>

#include "gtest/gtest.h"
#include "service/store/durable_dedup_store.h"
#include "service/store/memory_dedup_store.h"
#include "service/store/sqlite_journal.h"
#include "tests/support/status_matchers.h"
#include "tests/support/temp_dir.h"

namespace quotad {
namespace {

using testing::StatusIs;
using testing::TempDir;

// What the semantic tests run over: a DedupStore, and whatever it writes to.
struct DedupFixture {
  std::unique_ptr<SqliteJournal> journal;  // null for the memory store
  std::unique_ptr<DedupStore> store;
};

struct DedupFactory {
  std::string name;
  std::function<DedupFixture(const TempDir&)> open;
};

void PrintTo(const DedupFactory& f, std::ostream* os) { *os << f.name; }

const DedupFactory kStores[] = {
    {"Memory",
     [](const TempDir&) {
       return DedupFixture{nullptr, std::make_unique<MemoryDedupStore>()};
     }},
    {"DurableOverSqlite",
     [](const TempDir& dir) {
       DedupFixture f;
       f.journal = *SqliteJournal::Open(dir.File("state.db"));
       f.store = *DurableDedupStore::Open(f.journal.get(), 0);
       return f;
     }},
};

class DedupStoreTest : public ::testing::TestWithParam<DedupFactory> {
 protected:
  TempDir dir_;
  DedupFixture f_ = GetParam().open(dir_);
  DedupStore& store_ = *f_.store;
};

TEST_P(DedupStoreTest, FirstAnswerStandsUntilItExpires) {
  EXPECT_EQ(store_.Get("r1", 0), std::nullopt);
  EXPECT_EQ(*store_.Put("r1", "first", 100, 0), "first");
  EXPECT_EQ(*store_.Put("r1", "second", 200, 10), "first");  // a racing copy gets the first
  EXPECT_EQ(store_.Get("r1", 99), "first");
  EXPECT_EQ(store_.Get("r1", 100), std::nullopt);  // the dedup window is over
  EXPECT_EQ(*store_.Put("r1", "third", 300, 100), "third");
  EXPECT_EQ(store_.size(), 1);
  EXPECT_EQ(store_.Sweep(300), 1);
  EXPECT_EQ(store_.size(), 0);
}

TEST_P(DedupStoreTest, SweepForgetsOnlyExpiredAnswers) {
  ASSERT_OK(store_.Put("a", "1", 100, 0));
  ASSERT_OK(store_.Put("b", "2", 101, 0));
  EXPECT_EQ(store_.Sweep(100), 1);
  EXPECT_EQ(store_.size(), 1);
  EXPECT_EQ(store_.Get("b", 100), "2");
}

TEST_P(DedupStoreTest, RejectsEmptyIdAndPastExpiry) {
  EXPECT_THAT(store_.Put("", "a", 100, 0), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(store_.Put("r", "a", 10, 10), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_EQ(store_.size(), 0);
}

INSTANTIATE_TEST_SUITE_P(AllStores, DedupStoreTest, ::testing::ValuesIn(kStores),
                         [](const ::testing::TestParamInfo<DedupFactory>& info) {
                           return info.param.name;
                         });

TEST(DurableDedupStoreTest, AnswersSurviveARestartWithinTheWindow) {
  TempDir dir;
  const std::string path = dir.File("state.db");
  {
    auto journal = *SqliteJournal::Open(path);
    auto store = *DurableDedupStore::Open(journal.get(), 0);
    ASSERT_OK(store->Put("acquire/r1", "granted lease 1", 1000, 0));
    ASSERT_OK(store->Put("release/r2", std::string("\0bin\xff", 5), 1000, 0));
    ASSERT_OK(store->Put("acquire/short", "x", 50, 0));
    ASSERT_OK(store->Put("acquire/r1", "a racing copy", 1000, 1));  // not written
    ASSERT_OK(journal->Flush());
  }
  auto journal = *SqliteJournal::Open(path);
  auto store = *DurableDedupStore::Open(journal.get(), 60);  // restarted at t=60
  EXPECT_EQ(store->Get("acquire/r1", 60), "granted lease 1");
  EXPECT_EQ(store->Get("release/r2", 60), std::string("\0bin\xff", 5));
  EXPECT_EQ(store->Get("acquire/short", 60), std::nullopt);  // its window ended while down
  EXPECT_EQ(store->size(), 2);
  EXPECT_EQ(*store->Put("acquire/r1", "another", 2000, 60), "granted lease 1");
}

// Answers are queued behind the journal's group commit; the journal's destructor writes them.
TEST(DurableDedupStoreTest, QueuedAnswersAreWrittenAtAGracefulStop) {
  TempDir dir;
  const std::string path = dir.File("state.db");
  {
    SqliteOptions options;
    options.commit_interval = absl::Hours(1);
    options.commit_batch = 1'000'000;
    auto journal = *SqliteJournal::Open(path, options);
    auto store = *DurableDedupStore::Open(journal.get(), 0);
    ASSERT_OK(store->Put("acquire/r1", "a", 1000, 0));
    EXPECT_EQ(journal->stats().records, 0);  // off the hot path
  }
  auto journal = *SqliteJournal::Open(path);
  EXPECT_EQ((*DurableDedupStore::Open(journal.get(), 0))->Get("acquire/r1", 0), "a");
}

TEST(DurableDedupStoreTest, JournalCompactDropsExpiredAnswersFromTheFile) {
  TempDir dir;
  auto journal = *SqliteJournal::Open(dir.File("state.db"));
  {
    auto store = *DurableDedupStore::Open(journal.get(), 0);
    ASSERT_OK(store->Put("old", "a", 100, 0));
    ASSERT_OK(store->Put("new", "b", 101, 0));
  }
  ASSERT_OK(journal->Compact(100));
  absl::StatusOr<std::vector<DedupAnswer>> answers = journal->LoadAnswers(0);
  ASSERT_OK(answers);
  ASSERT_EQ(answers->size(), 1u);  // as of t=0 "old" would still be live: Compact deleted it
  EXPECT_EQ((*answers)[0].request_id, "new");
  EXPECT_EQ((*answers)[0].answer, "b");
  EXPECT_EQ((*answers)[0].expiry_ns, 101);
}

}  // namespace
}  // namespace quotad
