#include "service/store/store.h"

#include <utility>

#include "service/store/sqlite_journal.h"

namespace quotad {
namespace {

// The embedded store: a SQLite file, or nothing (memory only).
class EmbeddedStore : public Store {
 public:
  EmbeddedStore(std::unique_ptr<SqliteJournal> journal, std::unique_ptr<DedupStore> dedup)
      : journal_(std::move(journal)), dedup_(std::move(dedup)) {}

  Journal* journal() override { return journal_.get(); }
  DedupStore& dedup() override { return *dedup_; }
  std::string description() const override {
    return journal_ != nullptr ? journal_->path() : std::string("memory-only");
  }
  absl::Status Flush() override {
    return journal_ != nullptr ? journal_->Flush() : absl::OkStatus();
  }
  StoreFiles Files() const override {
    if (journal_ == nullptr) return {};
    const SqliteFileSizes sizes = journal_->FileSizes();
    return {.file_bytes = sizes.file_bytes, .wal_bytes = sizes.wal_bytes};
  }

 private:
  // The dedup store writes to the journal: destroyed first.
  const std::unique_ptr<SqliteJournal> journal_;
  const std::unique_ptr<DedupStore> dedup_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Store>> OpenStore(const StoreOptions& options, int64_t now_ns) {
  std::unique_ptr<SqliteJournal> journal;
  if (!options.path.empty()) {
    SqliteOptions sqlite;
    sqlite.reset_corrupt = options.reset_corrupt;
    sqlite.synchronous_full = options.synchronous_full;
    absl::StatusOr<std::unique_ptr<SqliteJournal>> opened =
        SqliteJournal::Open(options.path, sqlite);
    if (!opened.ok()) return opened.status();
    journal = *std::move(opened);
  }
  absl::StatusOr<std::unique_ptr<DedupStore>> dedup = DedupStore::Open(journal.get(), now_ns);
  if (!dedup.ok()) return dedup.status();
  return std::make_unique<EmbeddedStore>(std::move(journal), *std::move(dedup));
}

}  // namespace quotad
