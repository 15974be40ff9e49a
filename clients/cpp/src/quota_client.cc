#include "quotad/client/quota_client.h"

#include <unistd.h>

#include <algorithm>
#include <utility>

#include "absl/random/distributions.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "src/core.h"

#ifndef QUOTAD_CLIENT_VERSION
#define QUOTAD_CLIENT_VERSION "0.0.0"
#endif

namespace quotad {
namespace client {

const char* Version() { return QUOTAD_CLIENT_VERSION; }

std::string NewRequestId() {
  static absl::Mutex mu(absl::kConstInit);
  static absl::BitGen* gen = new absl::BitGen();
  uint64_t hi, lo;
  {
    absl::MutexLock lock(&mu);
    hi = absl::Uniform<uint64_t>(*gen);
    lo = absl::Uniform<uint64_t>(*gen);
  }
  return absl::StrFormat("%016x%016x", hi, lo);
}

namespace internal {
namespace {

absl::Time FromProto(const google::protobuf::Timestamp& t) {
  return absl::FromUnixSeconds(t.seconds()) + absl::Nanoseconds(t.nanos());
}
absl::Duration FromProto(const google::protobuf::Duration& d) {
  return absl::Seconds(d.seconds()) + absl::Nanoseconds(d.nanos());
}
void ToProto(absl::Duration d, google::protobuf::Duration* out) {
  const int64_t ns = absl::ToInt64Nanoseconds(d);
  out->set_seconds(ns / 1000000000);
  out->set_nanos(static_cast<int32_t>(ns % 1000000000));
}
void ToProto(absl::Time t, google::protobuf::Timestamp* out) {
  const int64_t ns = absl::ToUnixNanos(t);
  out->set_seconds(ns / 1000000000);
  out->set_nanos(static_cast<int32_t>(ns % 1000000000));
}

bool Retryable(grpc::StatusCode code) {
  return code == grpc::StatusCode::UNAVAILABLE || code == grpc::StatusCode::RESOURCE_EXHAUSTED ||
         code == grpc::StatusCode::ABORTED;
}

std::string DefaultHolder() {
  char host[256] = {};
  gethostname(host, sizeof(host) - 1);
  return absl::StrCat("pid-", getpid(), "@", host);
}

ClientOptions WithDefaults(ClientOptions o) {
  if (o.holder.empty()) o.holder = DefaultHolder();
  if (o.call_timeout <= absl::ZeroDuration()) o.call_timeout = absl::Seconds(5);
  if (o.retry.max_attempts < 1) o.retry.max_attempts = 1;
  return o;
}

}  // namespace

absl::Status FromGrpc(const grpc::Status& s) {
  if (s.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
}

Core::Core(std::shared_ptr<grpc::Channel> channel, ClientOptions options)
    : options_(WithDefaults(std::move(options))), stub_(v1::Quota::NewStub(channel)) {
  renewer_ = std::thread([this] { RenewLoop(); });
}

Core::~Core() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  renewer_.join();
}

void Core::Prepare(grpc::ClientContext* ctx, absl::Duration timeout) const {
  ctx->set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  if (options_.call_credentials != nullptr) ctx->set_credentials(options_.call_credentials);
}

double Core::Jitter(double jitter) {
  if (jitter <= 0) return 1.0;
  absl::MutexLock lock(&rng_mu_);
  return absl::Uniform(rng_, 1.0 - jitter, 1.0 + jitter);
}

grpc::Status Core::CallWithRetry(absl::Duration extra,
                                 const std::function<grpc::Status(grpc::ClientContext*)>& call,
                                 int* attempts) {
  const RetryPolicy& policy = options_.retry;
  absl::Duration backoff = policy.initial_backoff;
  grpc::Status status;
  for (int attempt = 1;; ++attempt) {
    grpc::ClientContext ctx;
    Prepare(&ctx, options_.call_timeout + extra);
    status = call(&ctx);
    if (attempts != nullptr) *attempts = attempt;
    if (status.ok() || !Retryable(status.error_code()) || attempt >= policy.max_attempts) {
      return status;
    }
    absl::SleepFor(backoff * Jitter(policy.jitter));
    backoff = std::min(policy.max_backoff, backoff * policy.multiplier);
  }
}

void Core::StartRenewing(std::shared_ptr<LeaseState> state) {
  absl::MutexLock lock(&mu_);
  renewing_.push_back(std::move(state));
  changed_ = true;
}

void Core::StopRenewing(const std::shared_ptr<LeaseState>& state) {
  {
    absl::MutexLock lock(&state->mu);
    state->released = true;
  }
  absl::MutexLock lock(&mu_);
  renewing_.erase(std::remove(renewing_.begin(), renewing_.end(), state), renewing_.end());
  changed_ = true;
}

void Core::RenewLoop() {
  for (;;) {
    std::vector<std::shared_ptr<LeaseState>> due;
    {
      absl::MutexLock lock(&mu_);
      absl::Time next = absl::InfiniteFuture();
      const absl::Time now = absl::Now();
      for (const auto& s : renewing_) {
        absl::MutexLock state_lock(&s->mu);
        if (s->next_renew <= now) {
          due.push_back(s);
        } else {
          next = std::min(next, s->next_renew);
        }
      }
      if (due.empty()) {
        changed_ = false;
        auto wake = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stop_ || changed_; };
        mu_.AwaitWithDeadline(absl::Condition(&wake), next);
      }
      if (stop_) return;
    }
    for (const auto& s : due) RenewOne(s);
  }
}

void Core::RenewOne(const std::shared_ptr<LeaseState>& state) {
  absl::Time expires_at;
  {
    absl::MutexLock lock(&state->mu);
    if (state->released || !state->lost.ok()) return;
    expires_at = state->expires_at;
  }
  const absl::Time now = absl::Now();
  v1::RenewRequest req;
  req.set_lease_id(state->id);
  if (state->ttl > absl::ZeroDuration()) ToProto(state->ttl, req.mutable_ttl());
  v1::RenewResponse resp;
  grpc::ClientContext ctx;
  // One attempt, bounded by what is left of the lease: the next try comes from the loop.
  absl::Duration timeout = options_.call_timeout;
  if (expires_at > now)
    timeout = std::min(timeout, std::max(absl::Milliseconds(50), (expires_at - now) / 2));
  Prepare(&ctx, timeout);
  const grpc::Status status = stub_->Renew(&ctx, req, &resp);

  absl::Status lost;
  std::function<void(const absl::Status&)> on_lost;
  {
    absl::MutexLock lock(&state->mu);
    if (state->released) return;
    const absl::Time after = absl::Now();
    if (status.ok()) {
      state->expires_at = FromProto(resp.lease_expires_at());
      state->period = std::max(absl::Milliseconds(10), (state->expires_at - after) / 3);
      state->next_renew = after + state->period * Jitter(0.1);
      return;
    }
    if (status.error_code() == grpc::StatusCode::NOT_FOUND) {
      lost = absl::NotFoundError(
          absl::StrCat("lease ", state->id, " lost: quotad says ", status.error_message()));
    } else if (after >= state->expires_at) {
      lost = absl::DeadlineExceededError(
          absl::StrCat("lease ", state->id, " expired at ", absl::FormatTime(state->expires_at),
                       " before a renewal got through; last error: ", FromGrpc(status).ToString()));
    } else {
      // Try again soon, well before the expiry.
      state->next_renew =
          after + std::max(absl::Milliseconds(10),
                           std::min(state->period / 4, (state->expires_at - after) / 4));
      return;
    }
    state->lost = lost;
    on_lost = state->on_lost;
  }
  {
    absl::MutexLock lock(&mu_);
    renewing_.erase(std::remove(renewing_.begin(), renewing_.end(), state), renewing_.end());
  }
  if (on_lost) on_lost(lost);
}

// Builds the Lease answering one Acquire, and starts the release of a Lease. Used by
// QuotaClient and Lease only. Stateless.
struct LeaseAccess {
  // The Lease for `resp`, the answer to an Acquire asked with `options` and `request_id`. A
  // granted lease that needs renewing is handed to the renewer of `core`.
  static Lease FromResponse(const std::shared_ptr<Core>& core, const v1::AcquireResponse& resp,
                            const AcquireOptions& options, const std::string& request_id) {
    Lease lease;
    lease.granted_ = resp.granted();
    lease.request_id_ = request_id;
    bool concurrency = false;
    lease.limits_.reserve(resp.limits_size());
    for (const v1::LimitStatus& l : resp.limits()) {
      LimitState s;
      s.name = l.name();
      s.scope = l.scope();
      s.concurrency = l.kind() == v1::LIMIT_KIND_CONCURRENCY;
      concurrency = concurrency || s.concurrency;
      s.capacity = l.capacity();
      s.used = l.used();
      s.remaining = l.remaining();
      if (l.has_reset_at()) s.reset_at = FromProto(l.reset_at());
      lease.limits_.push_back(std::move(s));
    }
    if (!resp.granted()) {
      lease.retry_after_ = FromProto(resp.retry_after());
      lease.retry_at_ =
          resp.has_retry_at() ? FromProto(resp.retry_at()) : absl::Now() + lease.retry_after_;
      lease.limited_by_ = resp.limited_by();
      return lease;
    }
    lease.id_ = resp.lease_id();
    lease.cost_ = options.cost;
    lease.core_ = core;
    auto state = std::make_shared<LeaseState>();
    state->id = resp.lease_id();
    state->ttl = options.lease_ttl;
    state->on_lost = options.on_lost;
    const absl::Time now = absl::Now();
    const bool renew = options.renew == AcquireOptions::Renew::kAlways ||
                       (options.renew == AcquireOptions::Renew::kAuto && concurrency);
    {
      absl::MutexLock lock(&state->mu);
      state->expires_at =
          resp.has_lease_expires_at() ? FromProto(resp.lease_expires_at()) : absl::InfiniteFuture();
      state->period = state->expires_at == absl::InfiniteFuture()
                          ? absl::Hours(1)
                          : std::max(absl::Milliseconds(10), (state->expires_at - now) / 3);
      state->next_renew = now + state->period;
    }
    lease.state_ = state;
    if (renew && state->expires_at != absl::InfiniteFuture()) core->StartRenewing(state);
    return lease;
  }

  // Starts ending `lease`: FailedPrecondition when it was not granted or is already released;
  // else marks it released (no more renewals) and returns its id, which the caller sends.
  static absl::StatusOr<std::string> BeginRelease(Lease& lease) {
    if (!lease.granted_ || lease.state_ == nullptr) {
      return absl::FailedPreconditionError("the lease was not granted");
    }
    {
      absl::MutexLock lock(&lease.state_->mu);
      if (lease.state_->released) {
        return absl::FailedPreconditionError("the lease was already released");
      }
    }
    lease.core_->StopRenewing(lease.state_);  // marks it released
    return lease.id_;
  }

  static int64_t Cost(const Lease& lease) { return lease.cost_; }
};

namespace {

// The status of one item of a batch: quotad's error for item `sent` of the request, renamed as
// item `index` of the caller's list (the two differ when items were refused before sending).
absl::Status ItemStatus(int index, int sent, const v1::ItemError& error) {
  absl::string_view message = error.message();
  absl::ConsumePrefix(&message, absl::StrCat("items[", sent, "]: "));
  const int code = error.code();
  const absl::StatusCode status_code =
      code > 0 && code <= 16 ? static_cast<absl::StatusCode>(code) : absl::StatusCode::kUnknown;
  return absl::Status(status_code, absl::StrCat("items[", index, "]: ", message));
}

// `status` as the error of item `index`.
absl::Status ItemError(int index, const absl::Status& status) {
  return absl::Status(status.code(), absl::StrCat("items[", index, "]: ", status.message()));
}

absl::Status WrongResultCount(int results, int sent) {
  return absl::InternalError(
      absl::StrCat("quotad answered ", results, " results for a batch of ", sent, " items"));
}

}  // namespace

}  // namespace internal

// ---- Lease ----

Lease::Lease(Lease&& other) noexcept { *this = std::move(other); }

Lease& Lease::operator=(Lease&& other) noexcept {
  if (this == &other) return *this;
  if (held()) (void)DoRelease(std::nullopt);
  granted_ = std::exchange(other.granted_, false);
  id_ = std::move(other.id_);
  request_id_ = std::move(other.request_id_);
  cost_ = std::exchange(other.cost_, 0);
  retry_after_ = other.retry_after_;
  retry_at_ = other.retry_at_;
  limited_by_ = std::move(other.limited_by_);
  limits_ = std::move(other.limits_);
  core_ = std::move(other.core_);
  state_ = std::move(other.state_);
  return *this;
}

Lease::~Lease() {
  if (held()) (void)DoRelease(std::nullopt);
}

absl::Time Lease::expires_at() const {
  if (state_ == nullptr) return absl::InfinitePast();
  absl::MutexLock lock(&state_->mu);
  return state_->expires_at;
}

bool Lease::held() const {
  if (!granted_ || state_ == nullptr) return false;
  absl::MutexLock lock(&state_->mu);
  return !state_->released && state_->lost.ok();
}

bool Lease::lost() const { return !lost_status().ok(); }

absl::Status Lease::lost_status() const {
  if (state_ == nullptr) return absl::OkStatus();
  absl::MutexLock lock(&state_->mu);
  return state_->lost;
}

absl::StatusOr<ReleaseResult> Lease::Commit(int64_t used) {
  if (used < 0 || used > cost_) {
    return absl::InvalidArgumentError(
        absl::StrCat("used must be in 0..", cost_, " (the lease's cost), got ", used));
  }
  return DoRelease(used);
}

absl::StatusOr<ReleaseResult> Lease::Release() { return DoRelease(std::nullopt); }

absl::StatusOr<ReleaseResult> Lease::DoRelease(std::optional<int64_t> used) {
  absl::StatusOr<std::string> id = internal::LeaseAccess::BeginRelease(*this);
  if (!id.ok()) return id.status();
  v1::ReleaseRequest req;
  req.set_lease_id(*std::move(id));
  if (used.has_value()) req.set_used(*used);
  req.set_request_id(NewRequestId());
  v1::ReleaseResponse resp;
  int attempts = 0;
  const grpc::Status status = core_->CallWithRetry(
      absl::ZeroDuration(),
      [&](grpc::ClientContext* ctx) { return core_->stub()->Release(ctx, req, &resp); }, &attempts);
  if (!status.ok()) {
    // A retry that finds no lease: the first attempt released it but its answer was lost.
    if (status.error_code() == grpc::StatusCode::NOT_FOUND && attempts > 1) return ReleaseResult{};
    return internal::FromGrpc(status);
  }
  return ReleaseResult{resp.refunded(), resp.freed()};
}

// ---- QuotaClient ----

QuotaClient::QuotaClient(std::shared_ptr<grpc::Channel> channel, ClientOptions options)
    : core_(std::make_shared<internal::Core>(std::move(channel), std::move(options))) {}

QuotaClient::~QuotaClient() = default;

const ClientOptions& QuotaClient::options() const { return core_->options(); }

absl::StatusOr<Lease> QuotaClient::Acquire(absl::string_view credential, absl::string_view feature,
                                           const AcquireOptions& options) {
  const absl::Time wait_until = absl::Now() + std::max(absl::ZeroDuration(), options.client_wait);
  v1::AcquireRequest req;
  req.set_credential(std::string(credential));
  req.set_feature(std::string(feature));
  req.set_scope(options.scope);
  req.set_cost(options.cost);
  if (options.max_wait > absl::ZeroDuration())
    internal::ToProto(options.max_wait, req.mutable_max_wait());
  if (options.lease_ttl > absl::ZeroDuration()) {
    internal::ToProto(options.lease_ttl, req.mutable_lease_ttl());
  }
  req.set_holder(core_->options().holder);
  req.set_priority(options.priority);
  const absl::Duration server_wait = std::max(absl::ZeroDuration(), options.max_wait);

  for (int round = 0;; ++round) {
    // A new decision gets a new id; transport retries of one decision keep it.
    if (options.request_id.empty()) {
      req.set_request_id(NewRequestId());
    } else {
      req.set_request_id(round == 0 ? options.request_id
                                    : absl::StrCat(options.request_id, ".", round));
    }
    v1::AcquireResponse resp;
    const grpc::Status status = core_->CallWithRetry(server_wait, [&](grpc::ClientContext* ctx) {
      resp.Clear();
      return core_->stub()->Acquire(ctx, req, &resp);
    });
    if (!status.ok()) return internal::FromGrpc(status);

    Lease lease = internal::LeaseAccess::FromResponse(core_, resp, options, req.request_id());
    if (lease.granted()) return lease;
    const absl::Time now = absl::Now();
    if (now >= wait_until) return lease;
    absl::Duration pause = lease.retry_after_ > absl::ZeroDuration()
                               ? lease.retry_after_
                               : core_->options().retry.initial_backoff;
    pause = std::min(pause * core_->Jitter(0.05) + absl::Milliseconds(1), wait_until - now);
    absl::SleepFor(pause);
  }
}

absl::StatusOr<std::vector<absl::StatusOr<Lease>>> QuotaClient::AcquireBatch(
    const std::vector<AcquireItem>& items, bool all_or_nothing) {
  AcquireBatchOptions options;
  options.all_or_nothing = all_or_nothing;
  return AcquireBatch(items, options);
}

absl::StatusOr<std::vector<absl::StatusOr<Lease>>> QuotaClient::AcquireBatch(
    const std::vector<AcquireItem>& items, const AcquireBatchOptions& options) {
  const bool all_or_nothing = options.all_or_nothing;
  std::vector<absl::StatusOr<Lease>> results;
  results.reserve(items.size());
  for (size_t i = 0; i < items.size(); ++i) results.emplace_back(absl::UnknownError("unanswered"));
  v1::AcquireBatchRequest req;
  std::vector<int> sent;  // sent[k]: the index in `items` of req.items(k)
  sent.reserve(items.size());
  for (size_t i = 0; i < items.size(); ++i) {
    const AcquireOptions& o = items[i].options;
    if (o.client_wait > absl::ZeroDuration()) {
      results[i] = internal::ItemError(
          static_cast<int>(i),
          absl::InvalidArgumentError(
              absl::StrCat("client_wait ", absl::FormatDuration(o.client_wait),
                           " is not allowed in a batch, which never waits (send it as Acquire)")));
      continue;
    }
    v1::AcquireRequest* item = req.add_items();
    item->set_credential(items[i].credential);
    item->set_feature(items[i].feature);
    item->set_scope(o.scope);
    item->set_cost(o.cost);
    // quotad refuses a positive max_wait in a batch, naming the item.
    if (o.max_wait > absl::ZeroDuration()) internal::ToProto(o.max_wait, item->mutable_max_wait());
    if (o.lease_ttl > absl::ZeroDuration()) {
      internal::ToProto(o.lease_ttl, item->mutable_lease_ttl());
    }
    item->set_holder(core_->options().holder);
    item->set_priority(o.priority);
    item->set_request_id(o.request_id.empty() ? NewRequestId() : o.request_id);
    sent.push_back(static_cast<int>(i));
  }
  if (sent.empty()) return results;
  if (all_or_nothing && sent.size() != items.size()) {
    // An item refused here refuses the batch, as quotad would: the others are denied in its
    // name, without a call.
    int blocker = 0;
    while (blocker < static_cast<int>(sent.size()) && sent[blocker] == blocker) ++blocker;
    v1::AcquireResponse denied;
    denied.set_limited_by(absl::StrCat("all_or_nothing:items[", blocker, "]"));
    for (size_t i = 0; i < items.size(); ++i) {
      if (static_cast<int>(i) == blocker) continue;
      results[i] = internal::LeaseAccess::FromResponse(core_, denied, items[i].options, "");
    }
    return results;
  }
  req.set_all_or_nothing(all_or_nothing);
  req.set_decisions_only(options.decisions_only);
  v1::AcquireBatchResponse resp;
  const grpc::Status status =
      core_->CallWithRetry(absl::ZeroDuration(), [&](grpc::ClientContext* ctx) {
        resp.Clear();
        return core_->stub()->AcquireBatch(ctx, req, &resp);
      });
  if (!status.ok()) return internal::FromGrpc(status);
  if (resp.results_size() != req.items_size()) {
    return internal::WrongResultCount(resp.results_size(), req.items_size());
  }
  for (int k = 0; k < resp.results_size(); ++k) {
    const int i = sent[k];
    const v1::AcquireBatchItem& r = resp.results(k);
    if (r.has_response()) {
      results[i] = internal::LeaseAccess::FromResponse(core_, r.response(), items[i].options,
                                                       req.items(k).request_id());
    } else if (r.has_error()) {
      results[i] = internal::ItemStatus(i, k, r.error());
    } else {
      results[i] = internal::ItemError(i, absl::InternalError("quotad's answer has no result"));
    }
  }
  return results;
}

absl::StatusOr<std::vector<absl::StatusOr<ReleaseResult>>> QuotaClient::ReleaseBatch(
    const std::vector<ReleaseItem>& items) {
  std::vector<absl::StatusOr<ReleaseResult>> results(items.size(),
                                                     absl::UnknownError("unanswered"));
  v1::ReleaseBatchRequest req;
  std::vector<int> sent;  // sent[k]: the index in `items` of req.items(k)
  sent.reserve(items.size());
  for (size_t i = 0; i < items.size(); ++i) {
    const int index = static_cast<int>(i);
    Lease* lease = items[i].lease;
    if (lease == nullptr) {
      results[i] = internal::ItemError(index, absl::InvalidArgumentError("lease is null"));
      continue;
    }
    const std::optional<int64_t> used = items[i].used;
    const int64_t cost = internal::LeaseAccess::Cost(*lease);
    if (used.has_value() && lease->granted() && (*used < 0 || *used > cost)) {
      results[i] = internal::ItemError(
          index, absl::InvalidArgumentError(absl::StrCat("used must be in 0..", cost,
                                                         " (the lease's cost), got ", *used)));
      continue;
    }
    absl::StatusOr<std::string> id = internal::LeaseAccess::BeginRelease(*lease);
    if (!id.ok()) {
      results[i] = internal::ItemError(index, id.status());
      continue;
    }
    v1::ReleaseRequest* item = req.add_items();
    item->set_lease_id(*std::move(id));
    if (used.has_value()) item->set_used(*used);
    item->set_request_id(NewRequestId());
    sent.push_back(index);
  }
  if (sent.empty()) return results;
  v1::ReleaseBatchResponse resp;
  int attempts = 0;
  const grpc::Status status = core_->CallWithRetry(
      absl::ZeroDuration(),
      [&](grpc::ClientContext* ctx) {
        resp.Clear();
        return core_->stub()->ReleaseBatch(ctx, req, &resp);
      },
      &attempts);
  if (!status.ok()) return internal::FromGrpc(status);
  if (resp.results_size() != req.items_size()) {
    return internal::WrongResultCount(resp.results_size(), req.items_size());
  }
  for (int k = 0; k < resp.results_size(); ++k) {
    const int i = sent[k];
    const v1::ReleaseBatchItem& r = resp.results(k);
    if (r.has_response()) {
      results[i] = ReleaseResult{r.response().refunded(), r.response().freed()};
    } else if (r.has_error()) {
      // A retry that finds no lease: the first attempt released it but its answer was lost.
      if (attempts > 1 && r.error().code() == static_cast<int>(grpc::StatusCode::NOT_FOUND)) {
        results[i] = ReleaseResult{};
      } else {
        results[i] = internal::ItemStatus(i, k, r.error());
      }
    } else {
      results[i] = internal::ItemError(i, absl::InternalError("quotad's answer has no result"));
    }
  }
  return results;
}

absl::StatusOr<ReportResult> QuotaClient::ReportUpstream(absl::string_view credential,
                                                         absl::string_view feature, int http_status,
                                                         const std::vector<Header>& headers,
                                                         absl::string_view body,
                                                         absl::Time observed_at,
                                                         absl::Time sent_at) {
  constexpr size_t kMaxBody = 64 * 1024;
  v1::ReportRequest req;
  req.set_credential(std::string(credential));
  req.set_feature(std::string(feature));
  req.set_http_status(http_status);
  for (const Header& h : headers) {
    v1::Header* out = req.add_headers();
    out->set_name(h.first);
    out->set_value(h.second);
  }
  req.set_body(std::string(body.substr(0, kMaxBody)));
  internal::ToProto(observed_at == absl::InfinitePast() ? absl::Now() : observed_at,
                    req.mutable_observed_at());
  if (sent_at != absl::InfinitePast()) internal::ToProto(sent_at, req.mutable_sent_at());
  v1::ReportResponse resp;
  const grpc::Status status =
      core_->CallWithRetry(absl::ZeroDuration(), [&](grpc::ClientContext* ctx) {
        resp.Clear();
        return core_->stub()->Report(ctx, req, &resp);
      });
  if (!status.ok()) return internal::FromGrpc(status);
  ReportResult result;
  result.adopted.assign(resp.adopted().begin(), resp.adopted().end());
  result.warnings.assign(resp.warnings().begin(), resp.warnings().end());
  if (resp.has_cooldown_until()) result.cooldown_until = internal::FromProto(resp.cooldown_until());
  return result;
}

}  // namespace client
}  // namespace quotad
