// LeaseTable (lease_table.h): the ledger's sharded map of leases by id.

#include "service/core/lease_table.h"

#include <cstdint>

#include "absl/synchronization/mutex.h"
#include "gtest/gtest.h"

namespace quotad::ledger_internal {
namespace {

LeaseRecord Expiring(int64_t expiry_ns) {
  LeaseRecord rec;
  rec.cost = 1;
  rec.expiry_ns = expiry_ns;
  return rec;
}

TEST(LeaseTableTest, FindLiveSeesALeaseUntilItsExpiry) {
  LeaseTable table;
  const LeaseId id{1, 2};
  table.Insert(id, Expiring(100));
  LeaseShard& shard = table.ShardFor(id);
  absl::MutexLock lock(&shard.mu);
  ASSERT_NE(shard.FindLive(id, 99), nullptr);
  EXPECT_EQ(shard.FindLive(id, 99)->expiry_ns, 100);
  EXPECT_EQ(shard.FindLive(id, 100), nullptr);
  EXPECT_EQ(shard.FindLive(LeaseId{1, 3}, 0), nullptr);
}

TEST(LeaseTableTest, DropExpiredRemovesOnlyExpiredLeasesOfEveryShard) {
  LeaseTable table;
  for (uint64_t i = 0; i < 3 * LeaseTable::kShards; ++i) {
    table.Insert(LeaseId{0, i}, Expiring(i % 2 == 0 ? 10 : 20));
  }
  EXPECT_EQ(table.DropExpired(10), 3 * LeaseTable::kShards / 2);
  EXPECT_EQ(table.DropExpired(10), 0);
  int64_t left = 0;
  for (LeaseShard& shard : table.shards()) {
    absl::MutexLock lock(&shard.mu);
    left += static_cast<int64_t>(shard.leases.size());
  }
  EXPECT_EQ(left, 3 * LeaseTable::kShards / 2);
}

TEST(LeaseTableTest, InsertKeepsTheFirstRecordOfAnId) {
  LeaseTable table;
  const LeaseId id{7, 7};
  table.Insert(id, Expiring(100));
  table.Insert(id, Expiring(200));
  LeaseShard& shard = table.ShardFor(id);
  absl::MutexLock lock(&shard.mu);
  ASSERT_NE(shard.FindLive(id, 0), nullptr);
  EXPECT_EQ(shard.FindLive(id, 0)->expiry_ns, 100);
}

}  // namespace
}  // namespace quotad::ledger_internal
