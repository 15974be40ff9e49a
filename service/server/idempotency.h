#ifndef QUOTAD_SERVICE_SERVER_IDEMPOTENCY_H_
#define QUOTAD_SERVICE_SERVER_IDEMPOTENCY_H_

// The request_id protocol, written once for every method that takes a request_id (Acquire,
// Release): a retry is answered with the first answer; a copy that raced the first one undoes
// its own work and answers with the first; a request_id reused for a different request is
// refused naming both.
//
// Records (in the DedupStore, and so in the state file): with a fingerprint,
// "<length>:<fingerprint><serialized answer>"; without one, the serialized answer alone (the
// format Release has always written).

#include <atomic>
#include <cstdint>
#include <optional>
#include <string>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "google/protobuf/message_lite.h"
#include "service/core/clock.h"
#include "service/server/metrics.h"
#include "service/store/dedup_store.h"

namespace quotad {

struct RequestIdOptions {
  // How long an answer is kept for retries.
  absl::Duration window = absl::Minutes(10);
  // At most this many answers are kept; beyond, a request with a new request_id is refused.
  int64_t max_entries = 1000000;
};

// The table of first answers by request_id, as the services use it. Thread-safe. Does not own
// `store`, `clock` or `metrics`, which must outlive *this.
class RequestIds {
 public:
  RequestIds(DedupStore* store, Clock* clock, Metrics* metrics, RequestIdOptions options);

  RequestIds(const RequestIds&) = delete;
  RequestIds& operator=(const RequestIds&) = delete;

  // OK while the table has room for one more answer; kResourceExhausted naming the limit
  // otherwise (counted as quotad_limit_hits_total{limit="request_ids"}). The count is the
  // table's size at the last Sweep() plus the answers recorded since: never below the real
  // size, so the bound holds.
  absl::Status CheckRoom();

  // The first answer recorded under `key`, parsed into `answer`: OK when it stands for the
  // same request (`fingerprint` as recorded; empty: records without one); kInvalidArgument
  // naming `request_id`, the first request and this one when the first asked for something
  // else; kNotFound when there is none; kDataLoss when the record is unreadable (`answer` is
  // then cleared, and the caller should decide the request as new).
  absl::Status Replay(absl::string_view key, absl::string_view request_id,
                      absl::string_view fingerprint, google::protobuf::MessageLite* answer) const;

  // Records `answer` (a grant, a release) under `key` unless an answer stands there already.
  // When this one stands: OK. When another copy of the request was recorded first: `undo`
  // gives back what this one did, and the first answer replaces `answer` (as Replay). A store
  // that cannot record is logged and counted, and this answer kept: OK.
  absl::Status Record(absl::string_view key, absl::string_view request_id,
                      absl::string_view fingerprint, google::protobuf::MessageLite* answer,
                      absl::FunctionRef<void()> undo);

  // Forgets expired answers and recounts the table; returns its size.
  int64_t Sweep();

  int64_t max_entries() const { return options_.max_entries; }

 private:
  DedupStore* const store_;
  Clock* const clock_;
  Metrics* const metrics_;
  const RequestIdOptions options_;
  std::atomic<int64_t> count_;  // upper bound on the table's size (CheckRoom)
};

}  // namespace quotad

#endif  // QUOTAD_SERVICE_SERVER_IDEMPOTENCY_H_
