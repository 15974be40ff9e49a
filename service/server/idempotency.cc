#include "service/server/idempotency.h"

#include <spdlog/spdlog.h>

#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "service/server/logging.h"

namespace quotad {
namespace {

std::string Encode(absl::string_view fingerprint, const google::protobuf::MessageLite& answer) {
  if (fingerprint.empty()) return answer.SerializeAsString();
  return absl::StrCat(fingerprint.size(), ":", fingerprint, answer.SerializeAsString());
}

// Parses `record` into `answer` (see Replay).
absl::Status Decode(absl::string_view record, absl::string_view request_id,
                    absl::string_view fingerprint, google::protobuf::MessageLite* answer) {
  absl::string_view body = record;
  if (!fingerprint.empty()) {
    const size_t colon = record.find(':');
    size_t length = 0;
    if (colon == absl::string_view::npos || !absl::SimpleAtoi(record.substr(0, colon), &length) ||
        length > record.size() - colon - 1) {
      return absl::DataLossError("dedup record unreadable");
    }
    const absl::string_view first = record.substr(colon + 1, length);
    if (first != fingerprint) {
      return absl::InvalidArgumentError(absl::StrCat(
          "request_id '", request_id, "' was first used for ", first, "; this request is ",
          fingerprint, ": use a new request_id for a different request"));
    }
    body = record.substr(colon + 1 + length);
  }
  if (!answer->ParseFromArray(body.data(), static_cast<int>(body.size()))) {
    answer->Clear();
    return absl::DataLossError("dedup answer unreadable");
  }
  return absl::OkStatus();
}

}  // namespace

RequestIds::RequestIds(DedupStore* store, Clock* clock, Metrics* metrics,
                       RequestIdOptions options)
    : store_(store), clock_(clock), metrics_(metrics), options_(options), count_(store->size()) {}

absl::Status RequestIds::CheckRoom() {
  if (count_.load(std::memory_order_relaxed) < options_.max_entries) return absl::OkStatus();
  metrics_->OnLimitHit("request_ids");
  return absl::ResourceExhaustedError(absl::StrCat(
      "quotad keeps ", options_.max_entries,
      " request_id answers already (--max_request_ids); retry later, or call without a "
      "request_id"));
}

absl::Status RequestIds::Replay(absl::string_view key, absl::string_view request_id,
                                absl::string_view fingerprint,
                                google::protobuf::MessageLite* answer) const {
  std::optional<std::string> first = store_->Get(key, absl::ToUnixNanos(clock_->Now()));
  if (!first.has_value()) return absl::NotFoundError("no answer recorded");
  return Decode(*first, request_id, fingerprint, answer);
}

absl::Status RequestIds::Record(absl::string_view key, absl::string_view request_id,
                                absl::string_view fingerprint,
                                google::protobuf::MessageLite* answer,
                                absl::FunctionRef<void()> undo) {
  const absl::Time now = clock_->Now();
  const std::string mine = Encode(fingerprint, *answer);
  absl::StatusOr<std::string> standing = store_->Put(
      key, mine, absl::ToUnixNanos(now + options_.window), absl::ToUnixNanos(now));
  count_.fetch_add(1, std::memory_order_relaxed);
  if (!standing.ok()) {
    metrics_->OnStoreError("dedup");
    Log(*ServerLogger(), spdlog::level::warn, "dedup record failed",
        {{"key", key}, {"error", standing.status().message()}});
    return absl::OkStatus();
  }
  if (*standing == mine) return absl::OkStatus();
  // Another copy of the request was recorded first: give this one's work back, and answer the
  // first one (or the error naming both when it asked for something else).
  undo();
  answer->Clear();
  return Decode(*standing, request_id, fingerprint, answer);
}

int64_t RequestIds::Sweep() {
  store_->Sweep(absl::ToUnixNanos(clock_->Now()));
  const int64_t size = store_->size();
  count_.store(size, std::memory_order_relaxed);
  return size;
}

}  // namespace quotad
