#include "service/server/quota_service.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <memory>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "service/core/ledger_backend.h"
#include "service/server/convert.h"
#include "service/server/validation.h"

namespace quotad {
namespace {

// Release records carry no fingerprint (the key names the lease; the first answer stands).
constexpr absl::string_view kNoFingerprint = "";

// A Report's timestamp field `name`: `absent` when not set, else the time it holds, which must
// be within kMaxReportAge before and kMaxReportLead after `now`.
absl::StatusOr<absl::Time> ReportTime(absl::string_view name, bool set,
                                      const google::protobuf::Timestamp& t, absl::Time absent,
                                      absl::Time now) {
  if (!set) return absent;
  if (t.nanos() < 0 || t.nanos() > 999999999) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, " {seconds: ", t.seconds(), ", nanos: ", t.nanos(),
                     "} is not a valid timestamp (nanos out of range)"));
  }
  const absl::Time at = absl::FromUnixSeconds(t.seconds()) + absl::Nanoseconds(t.nanos());
  if (at < now - kMaxReportAge || at > now + kMaxReportLead) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, " ", absl::FormatTime(absl::RFC3339_full, at, absl::UTCTimeZone()),
                     " is more than ", absl::FormatDuration(kMaxReportAge), " before or ",
                     absl::FormatDuration(kMaxReportLead), " after the server's clock (",
                     absl::FormatTime(absl::RFC3339_full, now, absl::UTCTimeZone()), ")"));
  }
  return at;
}

}  // namespace

// Quoted and escaped, so that no name can make two different requests read the same.
std::string QuotaService::Fingerprint(const v1::AcquireRequest& req) {
  return absl::StrCat("feature \"", absl::CEscape(req.feature()), "\" scope \"",
                      absl::CEscape(req.scope()), "\" cost ", req.has_cost() ? req.cost() : 1);
}

QuotaService::QuotaService(QuotaBackend* backend, RequestIds* request_ids, Metrics* metrics,
                           ThrottleLog* throttles, LogSampler* sampler,
                           QuotaServiceOptions options)
    : backend_(backend),
      clock_(backend->clock()),
      request_ids_(request_ids),
      metrics_(metrics),
      throttles_(throttles),
      sampler_(sampler),
      options_(std::move(options)),
      log_(ServerLogger()),
      waiters_(options_.max_waiters_per_identity) {}

QuotaService::QuotaService(Ledger* ledger, RequestIds* request_ids, Metrics* metrics,
                           ThrottleLog* throttles, LogSampler* sampler,
                           QuotaServiceOptions options)
    : QuotaService(std::make_unique<LedgerBackend>(ledger), request_ids, metrics, throttles,
                   sampler, std::move(options)) {}

QuotaService::QuotaService(std::unique_ptr<QuotaBackend> backend, RequestIds* request_ids,
                           Metrics* metrics, ThrottleLog* throttles, LogSampler* sampler,
                           QuotaServiceOptions options)
    : QuotaService(backend.get(), request_ids, metrics, throttles, sampler, std::move(options)) {
  owned_backend_ = std::move(backend);
}

absl::Status QuotaService::Authorize(const Caller& caller, AccessMethod method,
                                     absl::string_view credential) {
  absl::Status s = caller.config->auth->Authorize(caller.identity, method, credential);
  if (!s.ok()) metrics_->OnAuthFailure("permission_denied");
  return s;
}

// Release and Renew: the lease must be the caller's (or the caller an admin), and the caller
// must be allowed `method` on the lease's credential. The ledger's lease names its holder, and
// with auth on the holder names the identity (HolderWithIdentity). A lease the ledger does not
// know is passed on to it only for admins; others get NOT_FOUND as for an expired lease.
absl::Status QuotaService::CheckLease(const Caller& caller, AccessMethod method,
                                      const LeaseId& id) {
  const Authorizer& auth = *caller.config->auth;
  if (!auth.enabled() || auth.IsAdmin(caller.identity)) return absl::OkStatus();
  const absl::StatusOr<LeaseInfo> lease = backend_->FindLease(id);
  if (!lease.ok() && !absl::IsNotFound(lease.status())) return lease.status();
  const absl::string_view owner =
      lease.ok() ? IdentityOfHolder(lease->holder) : absl::string_view();
  if (owner.empty()) {
    return absl::NotFoundError(absl::StrCat("unknown or expired lease ", id.ToString()));
  }
  absl::Status s = auth.AuthorizeLease(caller.identity, method, owner);
  if (s.ok()) s = auth.Authorize(caller.identity, method, lease->credential);
  if (!s.ok()) metrics_->OnAuthFailure("permission_denied");
  return s;
}

absl::StatusOr<QuotaService::AcquireArgs> QuotaService::ValidateAcquire(
    const v1::AcquireRequest& req) {
  if (absl::Status s = ValidateName("credential", req.credential()); !s.ok()) return s;
  if (absl::Status s = ValidateName("feature", req.feature()); !s.ok()) return s;
  return ValidateAcquireFields(req);
}

absl::StatusOr<QuotaService::AcquireArgs> QuotaService::ValidateAcquireFields(
    const v1::AcquireRequest& req) {
  if (absl::Status s = ValidateText("scope", req.scope(), kMaxNameLength); !s.ok()) return s;
  if (absl::Status s = ValidateText("holder", req.holder(), kMaxNameLength); !s.ok()) return s;
  if (absl::Status s = ValidateText("request_id", req.request_id(), kMaxRequestIdLength);
      !s.ok()) {
    return s;
  }
  if (req.priority() < -kMaxPriority || req.priority() > kMaxPriority) {
    return absl::InvalidArgumentError(absl::StrCat("priority ", req.priority(), " is outside -",
                                                   kMaxPriority, "..", kMaxPriority));
  }
  const int64_t cost = req.has_cost() ? req.cost() : 1;
  if (cost <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("cost must be positive, got ", cost));
  }
  absl::StatusOr<absl::Duration> max_wait = ParseDuration("max_wait", req.max_wait(), kMaxWait);
  if (!max_wait.ok()) return max_wait.status();
  absl::StatusOr<absl::Duration> ttl = ParseDuration("lease_ttl", req.lease_ttl(), kMaxTtl);
  if (!ttl.ok()) return ttl.status();
  // The ledger refuses a cost above what the feature could ever grant (kInvalidArgument).
  AcquireArgs args;
  args.core.credential = req.credential();
  args.core.feature = req.feature();
  args.core.scope = req.scope();
  args.core.cost = cost;
  args.core.lease_ttl = *ttl;
  args.core.holder = req.holder();
  args.core.want_limits = true;
  args.max_wait = *max_wait;
  args.priority = req.priority();
  return args;
}

// Priorities above --priority_ceiling: admins and --priority_identities only.
absl::Status QuotaService::CheckPriority(const Caller& caller, int priority) {
  if (priority <= options_.priority_ceiling) return absl::OkStatus();
  const Authorizer& auth = *caller.config->auth;
  if (auth.enabled() && auth.IsAdmin(caller.identity)) return absl::OkStatus();
  if (std::find(options_.priority_identities.begin(), options_.priority_identities.end(),
                caller.identity) != options_.priority_identities.end()) {
    return absl::OkStatus();
  }
  metrics_->OnLimitHit("priority");
  return absl::PermissionDeniedError(absl::StrCat(
      "priority ", priority, " is above the ceiling ", options_.priority_ceiling,
      " (--priority_ceiling); identity ", QuoteForError(caller.identity),
      " may not use it (admins and --priority_identities may)"));
}

std::optional<WaitTicket> QuotaService::Acquire(const Caller& caller,
                                                const v1::AcquireRequest& req, AcquireDone done) {
  const absl::Time start = clock_->Now();
  if (absl::Status s = Authorize(caller, AccessMethod::kAcquire, req.credential()); !s.ok()) {
    done(std::move(s));
    return std::nullopt;
  }
  absl::StatusOr<AcquireArgs> args = ValidateAcquire(req);
  if (!args.ok()) {
    done(args.status());
    return std::nullopt;
  }
  if (absl::Status s = CheckPriority(caller, args->priority); !s.ok()) {
    done(std::move(s));
    return std::nullopt;
  }
  std::string holder;
  if (absl::Status s = StoredHolder(caller, req, &holder, &args->core); !s.ok()) {
    done(std::move(s));
    return std::nullopt;
  }

  std::string dedup_key;
  if (backend_->shared()) {
    return AcquireShared(caller, req, *args, SharedRequestKey(caller, req), start,
                         std::move(done));
  }
  {
    v1::AcquireResponse first;
    absl::StatusOr<bool> replayed = ReplayAcquire(caller, req, &dedup_key, &first);
    if (!replayed.ok() || *replayed) {
      if (replayed.ok()) {
        done(std::move(first));
      } else {
        done(replayed.status());
      }
      return std::nullopt;
    }
  }

  absl::Duration max_wait = args->max_wait;
  if (max_wait > absl::ZeroDuration() && caller.deadline != absl::InfiniteFuture()) {
    // Not beyond the call's own deadline: the answer must arrive while the client listens.
    max_wait = std::min(max_wait, caller.deadline - clock_->Now());
  }
  if (max_wait <= absl::ZeroDuration()) {
    absl::StatusOr<Decision> decision = backend_->Acquire(args->core);
    Observe("Acquire", caller.identity, req, decision, start);
    done(Answer(req, std::move(decision), dedup_key));
    return std::nullopt;
  }

  // Counted before the ledger parks it; the place is given back when the call is answered or
  // cancelled (the callback is then called or destroyed).
  absl::StatusOr<std::shared_ptr<IdentityWaiters::Slot>> slot = waiters_.Enter(caller.identity);
  if (!slot.ok()) {
    metrics_->OnLimitHit("identity_waiters");
    done(slot.status());
    return std::nullopt;
  }
  return backend_->AcquireOrWait(
      args->core, max_wait, args->priority,
      [this, &req, done = std::move(done), key = std::move(dedup_key), identity = caller.identity,
       start, slot = *std::move(slot)](absl::StatusOr<Decision> decision) mutable {
        slot->Release();
        if (decision.ok()) metrics_->OnWait(req.credential());
        Observe("AcquireWait", identity, req, decision, start);
        done(Answer(req, std::move(decision), key));
      });
}

std::optional<WaitTicket> QuotaService::AcquireShared(const Caller& caller,
                                                      const v1::AcquireRequest& req,
                                                      const AcquireArgs& args,
                                                      const std::string& request_key,
                                                      absl::Time start, AcquireDone done) {
  const std::string fingerprint = request_key.empty() ? std::string() : Fingerprint(req);
  SharedRequestId request_id{request_key, req.request_id(), fingerprint};
  absl::Duration max_wait = args.max_wait;
  if (max_wait > absl::ZeroDuration() && caller.deadline != absl::InfiniteFuture()) {
    max_wait = std::min(max_wait, caller.deadline - clock_->Now());
  }
  if (max_wait > absl::ZeroDuration()) {
    // As the embedded path: counted per identity while it may wait (the store's queue, fair
    // across replicas).
    absl::StatusOr<std::shared_ptr<IdentityWaiters::Slot>> slot =
        waiters_.Enter(caller.identity);
    if (!slot.ok()) {
      metrics_->OnLimitHit("identity_waiters");
      done(slot.status());
      return std::nullopt;
    }
    return backend_->AcquireSharedOrWait(
        args.core, request_id, max_wait, args.priority,
        [this, &req, done = std::move(done), identity = caller.identity, start,
         slot = *std::move(slot)](absl::StatusOr<Decision> decision) mutable {
          slot->Release();
          if (decision.ok()) metrics_->OnWait(req.credential());
          Observe("AcquireWait", identity, req, decision, start);
          done(Answer(req, std::move(decision), /*dedup_key=*/""));
        });
  }
  backend_->AcquireShared(
      args.core, request_id,
      [this, &req, done = std::move(done), identity = caller.identity,
       start](absl::StatusOr<Decision> decision) mutable {
        Observe("Acquire", identity, req, decision, start);
        done(Answer(req, std::move(decision), /*dedup_key=*/""));
      });
  return std::nullopt;
}

std::string QuotaService::SharedRequestKey(const Caller& caller, const v1::AcquireRequest& req) {
  if (req.request_id().empty()) return "";
  if (!caller.config->auth->enabled()) return req.request_id();
  return absl::StrCat(caller.identity, "|", req.request_id());
}

// With auth, the ledger's holder names the identity: the lease's owner, also after a restart.
absl::Status QuotaService::StoredHolder(const Caller& caller, const v1::AcquireRequest& req,
                                        std::string* holder, AcquireRequest* core) {
  if (!caller.config->auth->enabled()) return absl::OkStatus();
  *holder = HolderWithIdentity(caller.identity, req.holder());
  if (holder->size() > kMaxNameLength) {
    // Issue 11: the ledger would refuse the stored form with a message about a holder the
    // caller never sent.
    return absl::InvalidArgumentError(absl::StrCat(
        "holder is ", req.holder().size(), " bytes long; with auth on it is stored as \"",
        caller.identity, "/<holder>\" (", holder->size(), " bytes), and the ledger accepts at most ",
        kMaxNameLength, ": holder may be at most ",
        kMaxNameLength - std::min(kMaxNameLength, caller.identity.size() + 1),
        " bytes for identity ", QuoteForError(caller.identity)));
  }
  core->holder = *holder;
  return absl::OkStatus();
}

absl::StatusOr<bool> QuotaService::ReplayAcquire(const Caller& caller,
                                                 const v1::AcquireRequest& req,
                                                 std::string* dedup_key,
                                                 v1::AcquireResponse* first) {
  if (req.request_id().empty()) return false;
  if (absl::Status s = request_ids_->CheckRoom(); !s.ok()) return s;
  // With auth, request_ids are per identity: another one never sees this answer.
  *dedup_key = absl::StrCat(
      "acquire/", req.credential(), "/",
      caller.config->auth->enabled() ? absl::StrCat(caller.identity, "|") : "", req.request_id());
  absl::Status same = request_ids_->Replay(*dedup_key, req.request_id(), Fingerprint(req), first);
  if (same.ok()) return true;
  if (same.code() == absl::StatusCode::kInvalidArgument) return same;
  if (same.code() == absl::StatusCode::kDataLoss) {
    Log(*log_, spdlog::level::err, "dedup answer unreadable", {{"key", *dedup_key}});
  }
  return false;
}

bool QuotaService::CancelWait(const WaitTicket& ticket) { return backend_->Cancel(ticket); }

void QuotaService::Observe(const char* method, const std::string& identity,
                           const v1::AcquireRequest& req,
                           const absl::StatusOr<Decision>& decision, absl::Time start) {
  if (!decision.ok()) return;  // counted with the call's error; an unknown name is no label
  metrics_->OnDecision(method, req.credential(), req.feature(), decision->granted,
                       decision->limited_by, clock_->Now() - start);
  LogDecision(method, identity, req, *decision);
}

void QuotaService::LogDecision(const char* method, const std::string& identity,
                               const v1::AcquireRequest& req, const Decision& decision) {
  if (sampler_->Sample()) {
    Log(*log_, spdlog::level::info, "rpc",
        {{"method", method},
         {"identity", identity},
         {"credential", req.credential()},
         {"feature", req.feature()},
         {"granted", decision.granted},
         {"limited_by", decision.limited_by.empty() ? "-" : decision.limited_by}});
  }
}

absl::StatusOr<v1::AcquireResponse> QuotaService::Answer(const v1::AcquireRequest& req,
                                                         absl::StatusOr<Decision> decision,
                                                         const std::string& dedup_key) {
  if (!decision.ok()) return decision.status();
  v1::AcquireResponse resp;
  if (absl::Status s = AnswerInto(req, *decision, dedup_key, &resp); !s.ok()) return s;
  return resp;
}

absl::Status QuotaService::AnswerInto(const v1::AcquireRequest& req, const Decision& decision,
                                      const std::string& dedup_key, v1::AcquireResponse* out) {
  v1::AcquireResponse& resp = *out;
  resp.set_granted(decision.granted);
  if (decision.granted) {
    resp.set_lease_id(decision.lease_id.ToString());
    if (IsFinite(decision.lease_expiry)) {
      TimeToProto(decision.lease_expiry, resp.mutable_lease_expires_at());
    }
  } else {
    resp.set_limited_by(decision.limited_by);
    if (IsFinite(decision.retry_at)) {
      TimeToProto(decision.retry_at, resp.mutable_retry_at());
      const absl::Duration after = std::max(absl::ZeroDuration(), decision.retry_at - clock_->Now());
      DurationToProto(after, resp.mutable_retry_after());
    }
  }
  resp.mutable_limits()->Reserve(static_cast<int>(decision.limits.size()));
  for (const LimitStatus& l : decision.limits) LimitStatusToProto(l, resp.add_limits());

  // Only grants are recorded: a denial charged nothing, so a retry is simply decided again.
  if (!decision.granted || dedup_key.empty()) return absl::OkStatus();
  // A copy of the request that won the race stands: give this grant back whole (used = 0).
  absl::Status s = request_ids_->Record(dedup_key, req.request_id(), Fingerprint(req), &resp, [&] {
    absl::StatusOr<ReleaseResult> undone = backend_->Release(decision.lease_id, 0);
    if (!undone.ok()) {
      Log(*log_, spdlog::level::warn, "undo of a duplicate grant failed",
          {{"lease", decision.lease_id.ToString()}, {"error", undone.status().message()}});
    }
  });
  return s;
}

absl::StatusOr<v1::ReleaseResponse> QuotaService::Release(const Caller& caller,
                                                          const v1::ReleaseRequest& req) {
  // The id is parsed once (LeaseId::Parse), so that any case the ledger accepts is the same
  // lease for the ownership check and the request_id table.
  absl::StatusOr<LeaseId> id = ParseLeaseId("lease_id", req.lease_id());
  if (!id.ok()) return id.status();
  if (absl::Status s = ValidateText("request_id", req.request_id(), kMaxRequestIdLength);
      !s.ok()) {
    return s;
  }
  v1::ReleaseResponse resp;
  std::string dedup_key;
  if (!req.request_id().empty()) {
    // With auth, the key names the caller's identity: a retry of a released lease is answered
    // from here, for its owner only.
    const bool per_identity = caller.config->auth->enabled();
    dedup_key = absl::StrCat("release/", per_identity ? absl::StrCat(caller.identity, "|") : "",
                             id->ToString(), "/", req.request_id());
    if (request_ids_->Replay(dedup_key, req.request_id(), kNoFingerprint, &resp).ok()) {
      return resp;
    }
  }
  if (absl::Status s = CheckLease(caller, AccessMethod::kRelease, *id); !s.ok()) return s;
  if (!dedup_key.empty()) {
    if (absl::Status s = request_ids_->CheckRoom(); !s.ok()) return s;
  }
  std::optional<int64_t> used;
  if (req.has_used()) {
    if (req.used() < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("used must not be negative, got ", req.used()));
    }
    used = req.used();
  }
  absl::StatusOr<ReleaseResult> result = backend_->Release(*id, used);
  if (!result.ok()) return result.status();
  resp.set_refunded(result->refunded);
  resp.set_freed(result->freed);
  if (!dedup_key.empty()) {
    // Nothing to undo: a copy that lost the race found the lease released already.
    absl::Status s =
        request_ids_->Record(dedup_key, req.request_id(), kNoFingerprint, &resp, [] {});
    if (!s.ok()) return s;
  }
  return resp;
}

absl::StatusOr<v1::RenewResponse> QuotaService::Renew(const Caller& caller,
                                                      const v1::RenewRequest& req) {
  absl::StatusOr<LeaseId> id = ParseLeaseId("lease_id", req.lease_id());
  if (!id.ok()) return id.status();
  if (absl::Status s = CheckLease(caller, AccessMethod::kRenew, *id); !s.ok()) return s;
  absl::StatusOr<absl::Duration> ttl = ParseDuration("ttl", req.ttl(), kMaxTtl);
  if (!ttl.ok()) return ttl.status();
  absl::StatusOr<absl::Time> expiry = backend_->Renew(*id, *ttl);
  if (!expiry.ok()) return expiry.status();
  v1::RenewResponse resp;
  if (IsFinite(*expiry)) TimeToProto(*expiry, resp.mutable_lease_expires_at());
  return resp;
}

absl::StatusOr<v1::ReportResponse> QuotaService::Report(const Caller& caller,
                                                        const v1::ReportRequest& req) {
  if (absl::Status s = Authorize(caller, AccessMethod::kReport, req.credential()); !s.ok()) {
    return s;
  }
  if (absl::Status s = ValidateName("credential", req.credential()); !s.ok()) return s;
  if (absl::Status s = ValidateName("feature", req.feature()); !s.ok()) return s;
  if (req.http_status() < 100 || req.http_status() > 599) {
    return absl::InvalidArgumentError(absl::StrCat("http_status ", req.http_status(),
                                                   " is not an HTTP status code (100..599)"));
  }
  if (req.headers_size() > kMaxReportHeaders) {
    return absl::InvalidArgumentError(absl::StrCat("headers has ", req.headers_size(),
                                                   " entries; at most ", kMaxReportHeaders,
                                                   " are allowed"));
  }
  size_t header_bytes = 0;
  UpstreamHeaders headers;
  headers.reserve(req.headers_size());
  for (int i = 0; i < req.headers_size(); ++i) {
    const v1::Header& h = req.headers(i);
    const std::string field = absl::StrCat("headers[", i, "]");
    if (h.name().empty()) return absl::InvalidArgumentError(field + ".name is required");
    if (absl::Status s = ValidateText(field + ".name", h.name(), kMaxHeaderNameLength); !s.ok()) {
      return s;
    }
    if (h.value().size() > kMaxHeaderValueLength) {
      return absl::InvalidArgumentError(absl::StrCat(
          field, ".value (", QuoteForError(h.name()), ") ", QuoteForError(h.value()), " is ",
          h.value().size(), " bytes long; at most ", kMaxHeaderValueLength, " are allowed"));
    }
    header_bytes += h.name().size() + h.value().size();
    headers.emplace_back(h.name(), h.value());
  }
  if (header_bytes > kMaxReportHeaderBytes) {
    return absl::InvalidArgumentError(absl::StrCat("headers hold ", header_bytes,
                                                   " bytes of names and values; at most ",
                                                   kMaxReportHeaderBytes, " are allowed"));
  }
  if (req.body().size() > kMaxReportBodyBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("body is ", req.body().size(), " bytes long; at most ", kMaxReportBodyBytes,
                     " are allowed (send the start of a longer body)"));
  }
  const absl::Time now = clock_->Now();
  absl::StatusOr<absl::Time> observed_at =
      ReportTime("observed_at", req.has_observed_at(), req.observed_at(), now, now);
  if (!observed_at.ok()) return observed_at.status();
  absl::StatusOr<absl::Time> sent_at =
      ReportTime("sent_at", req.has_sent_at(), req.sent_at(), *observed_at, now);
  if (!sent_at.ok()) return sent_at.status();
  // Without observed_at the server's clock stands for it while sent_at is the worker's: a
  // worker clock a little ahead must not lose the report, so sent_at is taken as observed_at.
  // Both from the worker and out of order is a caller's error.
  if (*sent_at > *observed_at && !req.has_observed_at()) sent_at = *observed_at;
  if (*sent_at > *observed_at) {
    return absl::InvalidArgumentError(absl::StrCat(
        "sent_at ", absl::FormatTime(absl::RFC3339_full, *sent_at, absl::UTCTimeZone()),
        " is after observed_at ",
        absl::FormatTime(absl::RFC3339_full, *observed_at, absl::UTCTimeZone())));
  }
  UpstreamAnswer answer;
  answer.credential = req.credential();
  answer.feature = req.feature();
  answer.http_status = req.http_status();
  answer.headers = std::move(headers);
  answer.body = req.body();
  answer.observed_at = *observed_at;
  answer.sent_at = *sent_at;
  absl::StatusOr<ReportResult> result = backend_->Report(answer);
  if (!result.ok()) return result.status();
  v1::ReportResponse out;
  v1::ReportResponse* resp = &out;
  for (std::string& a : result->adopted) resp->add_adopted(std::move(a));
  for (std::string& w : result->warnings) resp->add_warnings(std::move(w));
  if (IsFinite(result->cooldown_until)) {
    TimeToProto(result->cooldown_until, resp->mutable_cooldown_until());
    metrics_->OnCooldown(req.credential(), req.feature(), result->cooldown_until);
    throttles_->Record(
        {req.credential(), req.feature(), req.http_status(), *observed_at, result->cooldown_until});
  }
  if (!result->adopted.empty() || IsFinite(result->cooldown_until)) {
    Log(*log_, spdlog::level::info, "report applied",
        {{"credential", req.credential()},
         {"feature", req.feature()},
         {"http_status", req.http_status()},
         {"adopted", resp->adopted_size()},
         {"cooldown", resp->has_cooldown_until() ? absl::FormatTime(result->cooldown_until)
                                                 : std::string("none")}});
  }
  return out;
}

}  // namespace quotad
