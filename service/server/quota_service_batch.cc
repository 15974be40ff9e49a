// QuotaService's batches (quota_service.h): AcquireBatch and ReleaseBatch, each item decided as
// by the single call, and what one batch checks once for all its items (BatchChecks); an
// all-or-nothing AcquireBatch (AcquireBatchAllOrNothing) checks every item first and has them
// decided as one.

#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "service/server/quota_service.h"
#include "service/server/validation.h"

namespace quotad {
namespace {

// A batch of more than kMaxBatchItems items is refused whole.
absl::Status CheckBatchSize(int items) {
  if (items <= kMaxBatchItems) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("items has ", items, " entries; at most ",
                                                 kMaxBatchItems,
                                                 " are allowed in one batch (split it)"));
}

// The error of item `index`, as the single call would have returned it, naming the item.
void ToItemError(int index, const absl::Status& status, v1::ItemError* out) {
  out->set_code(static_cast<int>(status.code()));
  out->set_message(absl::StrCat("items[", index, "]: ", status.message()));
}

// A batch never waits: an item with a positive max_wait is refused (malformed durations are
// left to the single path's validation).
absl::Status CheckNoWait(const v1::AcquireRequest& item) {
  const google::protobuf::Duration& wait = item.max_wait();
  if (wait.seconds() < 0 || (wait.seconds() == 0 && wait.nanos() <= 0)) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      "max_wait ",
      absl::FormatDuration(absl::Seconds(wait.seconds()) + absl::Nanoseconds(wait.nanos())),
      " is not allowed in a batch, which never waits (send it as Acquire)"));
}

// The decisions of a shared backend's batch (AcquireManyShared, AcquireAllShared), handed over
// from the store's thread. Not copyable; the waiting side owns it.
class SharedDecisions {
 public:
  explicit SharedDecisions(size_t items) : items_(items) {}
  // Blocks until Set(): one result per item (an error for each when none came).
  std::vector<absl::StatusOr<Decision>> Take() {
    done_.WaitForNotification();
    decisions_.resize(items_, absl::InternalError("the item was not decided"));
    return std::move(decisions_);
  }
  void Set(std::vector<absl::StatusOr<Decision>> decisions) {
    decisions_ = std::move(decisions);
    done_.Notify();
  }

 private:
  const size_t items_;
  std::vector<absl::StatusOr<Decision>> decisions_;
  absl::Notification done_;
};

// The callback of a shared batch: sets the decisions once, or UNAVAILABLE for every item when
// destroyed uncalled (a backend that drops its callbacks at shutdown), so that the batch never
// hangs.
class SharedReply {
 public:
  SharedReply(SharedDecisions* decisions, size_t items) : decisions_(decisions), items_(items) {}
  SharedReply(SharedReply&& other) noexcept
      : decisions_(std::exchange(other.decisions_, nullptr)), items_(other.items_) {}
  SharedReply& operator=(SharedReply&&) = delete;
  ~SharedReply() {
    if (decisions_ == nullptr) return;
    decisions_->Set(std::vector<absl::StatusOr<Decision>>(
        items_, absl::UnavailableError("the item was not decided")));
  }
  void operator()(std::vector<absl::StatusOr<Decision>> decisions) {
    std::exchange(decisions_, nullptr)->Set(std::move(decisions));
  }

 private:
  SharedDecisions* decisions_;
  size_t items_;
};

// AcquireBatchRequest.decisions_only: no item answers with limits.
void DropLimits(v1::AcquireBatchResponse* resp) {
  for (v1::AcquireBatchItem& item : *resp->mutable_results()) {
    if (item.has_response()) item.mutable_response()->clear_limits();
  }
}

}  // namespace

absl::StatusOr<v1::AcquireBatchResponse> QuotaService::AcquireBatch(
    const Caller& caller, const v1::AcquireBatchRequest& req) {
  v1::AcquireBatchResponse resp;
  if (absl::Status s = AcquireBatchInto(caller, req, &resp); !s.ok()) return s;
  return resp;
}

absl::Status QuotaService::AcquireBatchInto(const Caller& caller,
                                            const v1::AcquireBatchRequest& req,
                                            v1::AcquireBatchResponse* response) {
  if (absl::Status s = CheckBatchSize(req.items_size()); !s.ok()) return s;
  if (req.all_or_nothing()) {
    absl::StatusOr<v1::AcquireBatchResponse> all = AcquireBatchAllOrNothing(caller, req);
    if (!all.ok()) return all.status();
    *response = *std::move(all);
    return absl::OkStatus();
  }
  v1::AcquireBatchResponse& resp = *response;
  resp.mutable_results()->Reserve(req.items_size());
  if (backend_->shared()) {
    AcquireBatchShared(caller, req, &resp);
    if (req.decisions_only()) DropLimits(&resp);  // replays answer with what they hold
    return absl::OkStatus();
  }
  // What the single path checks per call and depends only on the credential or the feature
  // (the access rules, the names' syntax) is checked once per distinct value of the batch, in
  // the single path's order; a refused item is still named and counted on its own.
  BatchChecks checks;
  // Each outcome's decisions are counted once per batch (Metrics::OnDecisions). Keys view the
  // request and, for limited_by, the item's answer in `resp`: both outlive the loop.
  Outcomes outcomes;
  for (int i = 0; i < req.items_size(); ++i) {
    const v1::AcquireRequest& item = req.items(i);
    v1::AcquireBatchItem* out = resp.add_results();
    if (absl::Status s = CheckNoWait(item); !s.ok()) {
      metrics_->OnRequestError("AcquireBatchItem", "INVALID_ARGUMENT");
      ToItemError(i, s, out->mutable_error());
      continue;
    }
    absl::Status s =
        AcquireBatchItem(caller, item, !req.decisions_only(), &checks, out, &outcomes);
    if (!s.ok()) {
      metrics_->OnRequestError("AcquireBatchItem", absl::StatusCodeToString(s.code()));
      ToItemError(i, s, out->mutable_error());
    }
  }
  if (req.decisions_only()) DropLimits(&resp);  // replays answer with what they hold
  for (const auto& [key, count] : outcomes) {
    metrics_->OnDecisions(key.credential, key.feature, key.granted, key.limited_by, count);
  }
  return absl::OkStatus();
}

absl::StatusOr<QuotaService::AcquireArgs> QuotaService::CheckBatchItem(
    const Caller& caller, const v1::AcquireRequest& item, BatchChecks* checks,
    std::string* holder) {
  const BatchChecks::Credential& credential = checks->ForCredential(caller, item.credential());
  if (!credential.access.ok()) {
    metrics_->OnAuthFailure("permission_denied");
    return credential.access;
  }
  if (!credential.name.ok()) return credential.name;
  if (const absl::Status& s = checks->ForFeature(item.feature()); !s.ok()) return s;
  absl::StatusOr<AcquireArgs> args = ValidateAcquireFields(item);
  if (!args.ok()) return args.status();
  if (absl::Status s = CheckPriority(caller, args->priority); !s.ok()) return s;
  if (absl::Status s = StoredHolder(caller, item, holder, &args->core); !s.ok()) return s;
  return args;
}

void QuotaService::AcquireBatchShared(const Caller& caller, const v1::AcquireBatchRequest& req,
                                      v1::AcquireBatchResponse* resp) {
  const int n = req.items_size();
  BatchChecks checks;
  // The core requests and request ids view these (sized once: never moved).
  std::vector<std::string> holders(n), keys(n), fingerprints(n);
  std::vector<AcquireRequest> cores;
  std::vector<SharedRequestId> ids;
  std::vector<int> decided;  // the items the backend decides, in order
  cores.reserve(n);
  ids.reserve(n);
  decided.reserve(n);
  for (int i = 0; i < n; ++i) {
    const v1::AcquireRequest& item = req.items(i);
    v1::AcquireBatchItem* out = resp->add_results();
    absl::Status s = CheckNoWait(item);
    absl::StatusOr<AcquireArgs> args =
        s.ok() ? CheckBatchItem(caller, item, &checks, &holders[i]) : s;
    if (!args.ok()) {
      metrics_->OnRequestError("AcquireBatchItem",
                               absl::StatusCodeToString(args.status().code()));
      ToItemError(i, args.status(), out->mutable_error());
      continue;
    }
    args->core.want_limits = !req.decisions_only();
    // The store keeps request_ids, and answers a retry itself.
    keys[i] = SharedRequestKey(caller, item);
    if (!keys[i].empty()) fingerprints[i] = Fingerprint(item);
    cores.push_back(args->core);
    ids.push_back(SharedRequestId{keys[i], item.request_id(), fingerprints[i]});
    decided.push_back(i);
  }
  SharedDecisions answered(cores.size());  // on the store's thread
  backend_->AcquireManyShared(cores, ids, SharedReply(&answered, cores.size()));
  const std::vector<absl::StatusOr<Decision>> decisions = answered.Take();
  // Each outcome's decisions are counted once per batch, as the embedded path does.
  Outcomes outcomes;
  for (size_t k = 0; k < decided.size(); ++k) {
    const int i = decided[k];
    const v1::AcquireRequest& item = req.items(i);
    v1::AcquireBatchItem* out = resp->mutable_results(i);
    if (!decisions[k].ok()) {
      const absl::Status& s = decisions[k].status();
      metrics_->OnRequestError("AcquireBatchItem", absl::StatusCodeToString(s.code()));
      ToItemError(i, s, out->mutable_error());
      continue;
    }
    LogDecision("AcquireBatch", caller.identity, item, *decisions[k]);
    // The store recorded the request_id itself: nothing to record here, so nothing can fail.
    v1::AcquireResponse* answer = out->mutable_response();
    (void)AnswerInto(item, *decisions[k], /*dedup_key=*/"", answer);
    ++outcomes[DecisionKey{item.credential(), item.feature(), decisions[k]->granted,
                           answer->limited_by()}];
  }
  for (const auto& [key, count] : outcomes) {
    metrics_->OnDecisions(key.credential, key.feature, key.granted, key.limited_by, count);
  }
}

// One item of a batch on the embedded ledger: the single path's checks and answer, decided on
// the caller's thread, written into `out`.
absl::Status QuotaService::AcquireBatchItem(
    const Caller& caller, const v1::AcquireRequest& item, bool want_limits, BatchChecks* checks,
    v1::AcquireBatchItem* out, Outcomes* outcomes) {
  std::string holder;
  absl::StatusOr<AcquireArgs> args = CheckBatchItem(caller, item, checks, &holder);
  if (!args.ok()) return args.status();
  args->core.want_limits = want_limits;
  std::string dedup_key;
  v1::AcquireResponse* answer = out->mutable_response();
  absl::StatusOr<bool> replayed = ReplayAcquire(caller, item, &dedup_key, answer);
  if (!replayed.ok()) return replayed.status();
  if (*replayed) return absl::OkStatus();
  absl::StatusOr<Decision> decision = backend_->Acquire(args->core);
  if (!decision.ok()) return decision.status();
  LogDecision("AcquireBatch", caller.identity, item, *decision);
  absl::Status s = AnswerInto(item, *decision, dedup_key, answer);
  // Counted also when recording the grant failed, as the single path does. A denial is never
  // recorded, so its limited_by is in `answer`.
  ++(*outcomes)[DecisionKey{item.credential(), item.feature(), decision->granted,
                            s.ok() ? absl::string_view(answer->limited_by()) : ""}];
  return s;
}

absl::StatusOr<v1::AcquireBatchResponse> QuotaService::AcquireBatchAllOrNothing(
    const Caller& caller, const v1::AcquireBatchRequest& req) {
  const bool shared = backend_->shared();
  const int n = req.items_size();
  v1::AcquireBatchResponse resp;
  for (int i = 0; i < n; ++i) resp.add_results();
  // Every item but `blocker` answered denied in its name.
  std::vector<bool> replayed(n);  // answered an earlier grant, which stands
  // With the blocker's retry time when it was denied.
  auto deny_all_but = [&](int blocker) {
    const v1::AcquireBatchItem& b = resp.results(blocker);
    const v1::AcquireResponse* denied = b.has_response() ? &b.response() : nullptr;
    for (int i = 0; i < n; ++i) {
      if (i == blocker || replayed[i]) continue;
      v1::AcquireResponse* r = resp.mutable_results(i)->mutable_response();
      r->Clear();
      r->set_limited_by(absl::StrCat("all_or_nothing:items[", blocker, "]"));
      if (denied != nullptr && denied->has_retry_at()) {
        *r->mutable_retry_at() = denied->retry_at();
        *r->mutable_retry_after() = denied->retry_after();
      }
    }
  };
  auto refuse = [&](int i, const absl::Status& s) {
    metrics_->OnRequestError("AcquireBatchItem", absl::StatusCodeToString(s.code()));
    ToItemError(i, s, resp.mutable_results(i)->mutable_error());
    deny_all_but(i);
    return resp;
  };

  // Every item is checked as the single path checks it before anything is decided. The core
  // requests view `holders` (reserved: never moved) and the wire request.
  BatchChecks checks;
  std::vector<std::string> holders(n), dedup_keys(n);
  std::vector<AcquireRequest> cores;
  std::vector<int> decided;  // the items the ledger decides (not replays), in order
  absl::flat_hash_map<std::string, int> first_use;  // dedup key -> the first item with it
  std::vector<int> same_as(n, -1);  // an earlier item of the same request: its answer, once
  cores.reserve(n);
  decided.reserve(n);
  for (int i = 0; i < n; ++i) {
    const v1::AcquireRequest& item = req.items(i);
    if (absl::Status s = CheckNoWait(item); !s.ok()) return refuse(i, s);
    absl::StatusOr<AcquireArgs> args = CheckBatchItem(caller, item, &checks, &holders[i]);
    if (!args.ok()) return refuse(i, args.status());
    if (shared) {
      // The store keeps request_ids, and answers a retry itself (its grant stands).
      dedup_keys[i] = SharedRequestKey(caller, item);
    } else {
      absl::StatusOr<bool> replay = ReplayAcquire(caller, item, &dedup_keys[i],
                                                  resp.mutable_results(i)->mutable_response());
      if (!replay.ok()) return refuse(i, replay.status());
      if (*replay) {
        replayed[i] = true;
        continue;
      }
    }
    // A request_id that two items of the batch use for different requests (a caller's bug the
    // single path answers with an error) is refused here, before anything is decided: found
    // when the second grant is recorded, the first one's record would stand after the undo,
    // naming a lease given back, and a retry of that item would replay it.
    // The same request twice is one grant, as without all_or_nothing: decided once.
    if (!dedup_keys[i].empty()) {
      auto [first, added] = first_use.try_emplace(dedup_keys[i], i);
      if (!added && Fingerprint(req.items(first->second)) != Fingerprint(item)) {
        return refuse(i, absl::InvalidArgumentError(absl::StrCat(
                             "request_id '", item.request_id(), "' of items[", i,
                             "] is used by items[", first->second, "] of this batch for ",
                             Fingerprint(req.items(first->second)), ", not ", Fingerprint(item))));
      }
      if (!added) {
        same_as[i] = first->second;
        continue;
      }
    }
    args->core.want_limits = !req.decisions_only();
    cores.push_back(args->core);
    decided.push_back(i);
  }

  std::vector<absl::StatusOr<Decision>> decisions;
  if (shared) {
    std::vector<std::string> fingerprints(decided.size());
    std::vector<SharedRequestId> ids(decided.size());
    for (size_t k = 0; k < decided.size(); ++k) {
      const v1::AcquireRequest& item = req.items(decided[k]);
      if (!dedup_keys[decided[k]].empty()) fingerprints[k] = Fingerprint(item);
      ids[k] = SharedRequestId{dedup_keys[decided[k]], item.request_id(), fingerprints[k]};
    }
    SharedDecisions answered(cores.size());  // on the store's thread
    backend_->AcquireAllShared(cores, ids, SharedReply(&answered, cores.size()));
    decisions = answered.Take();
    // The store answers all granted or none, but a request_id's earlier grant (a retry)
    // either way: it stands, answered as such (never given back below).
    bool all_granted = true;
    for (const absl::StatusOr<Decision>& d : decisions) {
      all_granted = all_granted && d.ok() && d->granted;
    }
    for (size_t k = 0; k < decided.size() && !all_granted; ++k) {
      if (!decisions[k].ok() || !decisions[k]->granted) continue;
      replayed[decided[k]] = true;
      LogDecision("AcquireBatch", caller.identity, req.items(decided[k]), *decisions[k]);
      (void)AnswerInto(req.items(decided[k]), *decisions[k], /*dedup_key=*/"",
                       resp.mutable_results(decided[k])->mutable_response());
    }
  } else {
    decisions = backend_->AcquireAll(cores);
  }
  int blocker = -1;
  std::vector<bool> recorded(decided.size());  // granted, and answered as such
  for (size_t k = 0; k < decided.size(); ++k) {
    const int i = decided[k];
    const v1::AcquireRequest& item = req.items(i);
    if (replayed[i]) continue;  // a shared store's earlier grant, answered above
    if (!decisions[k].ok()) {
      metrics_->OnRequestError("AcquireBatchItem",
                               absl::StatusCodeToString(decisions[k].status().code()));
      ToItemError(i, decisions[k].status(), resp.mutable_results(i)->mutable_error());
      blocker = i;
      continue;
    }
    LogDecision("AcquireBatch", caller.identity, item, *decisions[k]);
    v1::AcquireResponse* answer = resp.mutable_results(i)->mutable_response();
    // A shared store recorded its request_ids itself.
    absl::Status s = AnswerInto(item, *decisions[k], shared ? "" : dedup_keys[i], answer);
    if (!s.ok()) {
      // Its request_id was taken by another request meanwhile (a caller's bug): this grant was
      // given back, so none of the batch may stand (given back below).
      ToItemError(i, s, resp.mutable_results(i)->mutable_error());
      blocker = i;
    } else if (decisions[k]->granted) {
      recorded[k] = true;
    } else if (!absl::StartsWith(decisions[k]->limited_by, "all_or_nothing:")) {
      blocker = i;
    }
  }
  if (blocker >= 0) {
    for (size_t k = 0; k < decided.size(); ++k) {
      if (!recorded[k]) continue;
      // Only a failed recording leaves grants to give back (the ledger granted none otherwise).
      absl::StatusOr<ReleaseResult> undone = backend_->Release(decisions[k]->lease_id, 0);
      if (!undone.ok()) {
        Log(*log_, spdlog::level::warn, "undo of an all-or-nothing grant failed",
            {{"lease", decisions[k]->lease_id.ToString()}, {"error", undone.status().message()}});
      }
    }
    deny_all_but(blocker);
  }
  // Counted as answered, once every answer is final (a key views its answer's limited_by,
  // which deny_all_but rewrites). An item whose recording failed counts as the ledger decided.
  Outcomes outcomes;
  for (size_t k = 0; k < decided.size(); ++k) {
    if (!decisions[k].ok()) continue;
    const v1::AcquireRequest& item = req.items(decided[k]);
    const v1::AcquireBatchItem& answer = resp.results(decided[k]);
    if (answer.has_response()) {
      ++outcomes[DecisionKey{item.credential(), item.feature(), answer.response().granted(),
                             answer.response().limited_by()}];
    } else {
      ++outcomes[DecisionKey{item.credential(), item.feature(), decisions[k]->granted, ""}];
    }
  }
  for (const auto& [key, count] : outcomes) {
    metrics_->OnDecisions(key.credential, key.feature, key.granted, key.limited_by, count);
  }
  for (int i = 0; i < n; ++i) {
    if (same_as[i] >= 0) *resp.mutable_results(i) = resp.results(same_as[i]);
  }
  if (req.decisions_only()) DropLimits(&resp);  // replays answer with what they hold
  return resp;
}

const QuotaService::BatchChecks::Credential& QuotaService::BatchChecks::ForCredential(
    const Caller& caller, absl::string_view name) {
  if (last_credential_ != nullptr && last_credential_->first == name) {
    return last_credential_->second;
  }
  auto [it, added] = credentials_.try_emplace(name);
  if (added) {
    it->second.access = caller.config->auth->Authorize(caller.identity, AccessMethod::kAcquire,
                                                       name);
    if (it->second.access.ok()) it->second.name = ValidateName("credential", name);
  }
  last_credential_ = &*it;
  return it->second;
}

const absl::Status& QuotaService::BatchChecks::ForFeature(absl::string_view name) {
  if (last_feature_ != nullptr && last_feature_->first == name) return last_feature_->second;
  auto [it, added] = features_.try_emplace(name);
  if (added) it->second = ValidateName("feature", name);
  last_feature_ = &*it;
  return it->second;
}

absl::StatusOr<v1::ReleaseBatchResponse> QuotaService::ReleaseBatch(
    const Caller& caller, const v1::ReleaseBatchRequest& req) {
  v1::ReleaseBatchResponse resp;
  if (absl::Status s = ReleaseBatchInto(caller, req, &resp); !s.ok()) return s;
  return resp;
}

absl::Status QuotaService::ReleaseBatchInto(const Caller& caller,
                                            const v1::ReleaseBatchRequest& req,
                                            v1::ReleaseBatchResponse* response) {
  if (absl::Status s = CheckBatchSize(req.items_size()); !s.ok()) return s;
  v1::ReleaseBatchResponse& resp = *response;
  resp.mutable_results()->Reserve(req.items_size());
  for (int i = 0; i < req.items_size(); ++i) {
    v1::ReleaseBatchItem* item = resp.add_results();
    absl::StatusOr<v1::ReleaseResponse> result = Release(caller, req.items(i));
    if (result.ok()) {
      *item->mutable_response() = *std::move(result);
    } else {
      metrics_->OnRequestError("ReleaseBatchItem",
                               absl::StatusCodeToString(result.status().code()));
      ToItemError(i, result.status(), item->mutable_error());
    }
  }
  return absl::OkStatus();
}

}  // namespace quotad
