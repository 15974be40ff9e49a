#ifndef QUOTAD_SERVICE_CORE_LEASE_TABLE_H_
#define QUOTAD_SERVICE_CORE_LEASE_TABLE_H_

// Internal to the ledger: its live leases, by id, in shards.
//
// Locking contract: each shard's mutex guards that shard's map and the records in it; no call
// takes two shard mutexes at once. Lock order: a credential's mutex (ledger_internal.h), then a
// shard's mutex. Code that changes the counters a lease charged holds its credential's mutex
// first and looks the lease up again under both (a lease may expire and lose its slot in
// between). A LeaseRecord does not own what it points to: the ledger keeps every credential and
// every compiled version alive as long as it lives.

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/container/node_hash_map.h"
#include "absl/container/inlined_vector.h"
#include "absl/synchronization/mutex.h"
#include "service/core/lease_id.h"

namespace quotad {

struct CompiledCredential;

namespace ledger_internal {

struct Credential;

// One grant as the ledger keeps it.
struct LeaseRecord {
  Credential* credential = nullptr;
  // The version it was granted under, kept alive by the lease (a reload may drop it from the
  // credential), and its number (Credential::Version::seq) for refunds.
  std::shared_ptr<const CompiledCredential> compiled;
  uint64_t version_seq = 0;
  int feature = 0;  // index in compiled->features
  std::string scope;
  std::string holder;
  int64_t cost = 0;
  int64_t granted_ns = 0;                  // ledger time
  int64_t expiry_ns = 0;                   // ledger time
  absl::InlinedVector<int64_t, 4> tokens;  // refund token per rule, in feature rule order
  // The journal holds it as a lease that holds slots (a row it renews in place); false while it
  // holds only its refund-only record (ledger_internal::JournalWithSlots).
  bool journaled_with_slots = false;
};

// One shard of the table. Thread-safe under `mu`.
struct LeaseShard {
  // The live lease `id` (expiry after `now`), or nullptr.
  LeaseRecord* FindLive(const LeaseId& id, int64_t now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    auto it = leases.find(id);
    return it == leases.end() || it->second.expiry_ns <= now ? nullptr : &it->second;
  }

  absl::Mutex mu;
  // Expired records stay until DropExpired() or a lookup that removes them; FindLive ignores
  // them.
  absl::node_hash_map<LeaseId, LeaseRecord> leases ABSL_GUARDED_BY(mu);
};

// Every live lease, sharded by id so that grants on unrelated credentials do not contend.
// Thread-safe as far as its shards are (see the locking contract above); callers lock the shard
// they use. Owns its records.
class LeaseTable {
 public:
  static constexpr int kShards = 64;

  LeaseShard& ShardFor(const LeaseId& id) { return shards_[id.lo % kShards]; }

  // Every shard, for scans (Leases, Reload). Lock each in turn.
  std::array<LeaseShard, kShards>& shards() { return shards_; }

  // Adds a lease nobody can name yet (just granted). Takes its shard's mutex; the caller holds
  // its credential's mutex (Ledger::InsertLease) and no shard's.
  void Insert(const LeaseId& id, LeaseRecord rec) {
    LeaseShard& shard = ShardFor(id);
    absl::MutexLock shard_lock(&shard.mu);
    shard.leases.emplace(id, std::move(rec));
  }

  // Drops the leases whose expiry is at or before `now`, shard by shard, and gives the memory of
  // a burst back. Returns the number dropped.
  int64_t DropExpired(int64_t now);

 private:
  std::array<LeaseShard, kShards> shards_;
};

}  // namespace ledger_internal
}  // namespace quotad

#endif  // QUOTAD_SERVICE_CORE_LEASE_TABLE_H_
