#include "service/store/store.h"

#include <utility>

#include "service/store/durable_dedup_store.h"
#include "service/store/memory_dedup_store.h"
#include "service/store/sqlite_journal.h"

namespace quotad {
namespace {

// Memory only: no journal (the ledger writes nothing ahead), answers in memory.
class MemoryStore : public Store {
 public:
  Journal* journal() override { return nullptr; }
  DedupStore& dedup() override { return dedup_; }
  std::string description() const override { return "memory-only"; }
  absl::Status Flush() override { return absl::OkStatus(); }
  StoreFiles Files() const override { return {}; }

 private:
  MemoryDedupStore dedup_;
};

// The embedded store: one SQLite file holds the journal and the answers (its `dedup` table,
// written by the journal's group commit).
class SqliteStore : public Store {
 public:
  SqliteStore(std::unique_ptr<SqliteJournal> journal, std::unique_ptr<DurableDedupStore> dedup)
      : journal_(std::move(journal)), dedup_(std::move(dedup)) {}

  Journal* journal() override { return journal_.get(); }
  DedupStore& dedup() override { return *dedup_; }
  std::string description() const override { return journal_->path(); }
  absl::Status Flush() override { return journal_->Flush(); }
  StoreFiles Files() const override {
    const SqliteFileSizes sizes = journal_->FileSizes();
    return {.file_bytes = sizes.file_bytes, .wal_bytes = sizes.wal_bytes};
  }

 private:
  // The dedup store writes to the journal: destroyed first.
  const std::unique_ptr<SqliteJournal> journal_;
  const std::unique_ptr<DurableDedupStore> dedup_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Store>> OpenStore(const StoreOptions& options, int64_t now_ns) {
  if (options.path.empty()) return std::make_unique<MemoryStore>();
  SqliteOptions sqlite;
  sqlite.reset_corrupt = options.reset_corrupt;
  sqlite.synchronous_full = options.synchronous_full;
  absl::StatusOr<std::unique_ptr<SqliteJournal>> journal =
      SqliteJournal::Open(options.path, sqlite);
  if (!journal.ok()) return journal.status();
  absl::StatusOr<std::unique_ptr<DurableDedupStore>> dedup =
      DurableDedupStore::Open(journal->get(), now_ns);
  if (!dedup.ok()) return dedup.status();
  return std::make_unique<SqliteStore>(*std::move(journal), *std::move(dedup));
}

}  // namespace quotad
