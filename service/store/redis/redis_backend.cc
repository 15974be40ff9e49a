#include "service/store/redis/redis_backend.h"

#include <algorithm>
#include <optional>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "service/core/lease_id.h"
#include "service/store/redis/redis_cluster.h"

namespace quotad {
namespace {

// A counter's name in Redis: the rule's "feature.limit", and for scoped rules the scope in
// brackets (rule names hold no bracket).
std::string CounterName(const Rule& rule, absl::string_view scope) {
  if (!rule.spec.scoped) return rule.full_name;
  return absl::StrCat(rule.full_name, "[", scope, "]");
}

bool DecodeFields(absl::string_view in, std::vector<std::string>* out) {
  while (!in.empty()) {
    const size_t colon = in.find(':');
    size_t n = 0;
    if (colon == absl::string_view::npos || !absl::SimpleAtoi(in.substr(0, colon), &n) ||
        n > in.size() - colon - 1) {
      return false;
    }
    out->emplace_back(in.substr(colon + 1, n));
    in.remove_prefix(colon + 1 + n);
  }
  return true;
}

}  // namespace

std::string EncodeFields(std::initializer_list<absl::string_view> fields) {
  std::string out;
  for (absl::string_view f : fields) absl::StrAppend(&out, f.size(), ":", f);
  return out;
}

std::string LeaseLocatorKey(absl::string_view lease_id) {
  return absl::StrCat("q:lease:", lease_id);
}

absl::StatusOr<redis::RedisClientOptions> ParseRedisUrl(absl::string_view url) {
  constexpr absl::string_view kScheme = "redis://";
  constexpr absl::string_view kSentinel = "redis-sentinel://";
  constexpr absl::string_view kCluster = "redis-cluster://";
  auto bad = [&](absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat("--redis=", url, ": ", why));
  };
  // "HOST[:PORT]" or "[IPV6][:PORT]" into `out` (the host without its brackets), or why not.
  auto host_port = [&](absl::string_view text, int default_port,
                       redis::HostPort* out) -> absl::Status {
    out->port = default_port;
    absl::string_view host = text;
    std::optional<absl::string_view> port;
    if (absl::ConsumePrefix(&host, "[")) {
      const size_t close = host.find(']');
      if (close == absl::string_view::npos) {
        return bad(absl::StrCat("no ']' closes the address in '", text, "'"));
      }
      absl::string_view after = host.substr(close + 1);
      host = host.substr(0, close);
      if (!after.empty()) {
        if (!absl::ConsumePrefix(&after, ":")) {
          return bad(absl::StrCat("expected ':PORT' after ']' in '", text, "'"));
        }
        port = after;
      }
    } else {
      if (text.find_first_of("[]") != absl::string_view::npos) {
        return bad(absl::StrCat("misplaced bracket in '", text, "'"));
      }
      const size_t colon = text.find(':');
      if (colon != absl::string_view::npos) {
        if (text.find(':', colon + 1) != absl::string_view::npos) {
          return bad(absl::StrCat("more than one ':' in '", text,
                                  "' (an IPv6 address goes in brackets: [::1]:6379)"));
        }
        host = text.substr(0, colon);
        port = text.substr(colon + 1);
      }
    }
    if (port.has_value() &&
        (port->empty() || !std::all_of(port->begin(), port->end(), absl::ascii_isdigit) ||
         !absl::SimpleAtoi(*port, &out->port) || out->port <= 0 || out->port > 65535)) {
      return bad(absl::StrCat("the port of '", text, "' must be 1..65535"));
    }
    if (host.empty()) return bad(absl::StrCat("no host in '", text, "'"));
    out->host = std::string(host);
    return absl::OkStatus();
  };
  redis::RedisClientOptions options;
  if (absl::StartsWith(url, kCluster)) {
    absl::string_view rest = url.substr(kCluster.size());
    if (!rest.empty() && rest.back() == '/') rest.remove_suffix(1);
    if (rest.find_first_of("/@?") != absl::string_view::npos) {
      return bad("a path, user or password is not supported (redis-cluster://HOST[:PORT],...)");
    }
    for (absl::string_view n : absl::StrSplit(rest, ',')) {
      redis::HostPort hp;
      if (absl::Status st = host_port(n, 6379, &hp); !st.ok()) return st;
      options.cluster_nodes.push_back(std::move(hp));
    }
    return options;
  }
  if (absl::StartsWith(url, kSentinel)) {
    absl::string_view rest = url.substr(kSentinel.size());
    const size_t slash = rest.find('/');
    if (slash == absl::string_view::npos || slash + 1 == rest.size()) {
      return bad("no master name (redis-sentinel://HOST:PORT[,HOST:PORT...]/MASTERNAME)");
    }
    const absl::string_view name = rest.substr(slash + 1);
    if (name.find_first_of("/@?, ") != absl::string_view::npos) {
      return bad(absl::StrCat("bad master name '", name, "'"));
    }
    if (rest.substr(0, slash).find_first_of("@?") != absl::string_view::npos) {
      return bad("a user or password is not supported");
    }
    for (absl::string_view s : absl::StrSplit(rest.substr(0, slash), ',')) {
      redis::HostPort hp;
      if (absl::Status st = host_port(s, 26379, &hp); !st.ok()) return st;
      options.sentinels.push_back(std::move(hp));
    }
    options.master_name = std::string(name);
    return options;
  }
  if (!absl::StartsWith(url, kScheme)) {
    return bad(
        "expected redis://HOST[:PORT], "
        "redis-sentinel://HOST:PORT[,HOST:PORT...]/MASTERNAME or "
        "redis-cluster://HOST:PORT[,HOST:PORT...]");
  }
  absl::string_view rest = url.substr(kScheme.size());
  if (!rest.empty() && rest.back() == '/') rest.remove_suffix(1);
  if (rest.find_first_of("/@?") != absl::string_view::npos) {
    return bad("a path, user or password is not supported (redis://HOST[:PORT])");
  }
  redis::HostPort hp;
  if (absl::Status st = host_port(rest, 6379, &hp); !st.ok()) return st;
  options.host = hp.host;
  options.port = hp.port;
  return options;
}

absl::StatusOr<std::unique_ptr<RedisBackend>> RedisBackend::Create(const Policy& policy,
                                                                   Clock* clock,
                                                                   RedisBackendOptions options) {
  absl::StatusOr<redis::RedisClientOptions> client_options = ParseRedisUrl(options.url);
  if (!client_options.ok()) return client_options.status();
  absl::StatusOr<std::shared_ptr<const Compiled>> compiled = Compile(policy);
  if (!compiled.ok()) return compiled.status();
  if (options.wait_replicas < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--redis_wait_replicas=", options.wait_replicas, " must be 0 or more"));
  }
  if (options.wait_replicas > 0 && options.wait_timeout < absl::Milliseconds(1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--redis_wait_timeout=", absl::FormatDuration(options.wait_timeout),
                     " must be at least 1ms (WAIT 0 would wait for ever)"));
  }
  if (options.wait_beat < absl::Milliseconds(1)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "wait_beat ", absl::FormatDuration(options.wait_beat), " must be at least 1ms"));
  }
  // Cluster with WAIT: each call waits for replicas of its slot's master (RedisCluster's
  // CallThenWait), and CheckClusterHealth checks every master's replicas.
  const bool cluster = !client_options->cluster_nodes.empty();
  client_options->connections = options.connections;
  client_options->call_timeout = options.call_timeout;
  std::string description;
  if (cluster) {
    description = absl::StrCat("redis-cluster://",
                               absl::StrJoin(client_options->cluster_nodes, ",",
                                             [](std::string* out, const redis::HostPort& hp) {
                                               out->append(hp.ToString());
                                             }));
  } else if (client_options->sentinels.empty()) {
    description = absl::StrCat("redis://", client_options->host, ":", client_options->port);
  } else {
    description = absl::StrCat("redis-sentinel://",
                               absl::StrJoin(client_options->sentinels, ",",
                                             [](std::string* out, const redis::HostPort& hp) {
                                               out->append(hp.ToString());
                                             }),
                               "/", client_options->master_name);
  }
  if (options.wait_replicas > 0) {
    absl::StrAppend(&description, " (WAIT ", options.wait_replicas, " replica(s), ",
                    absl::FormatDuration(options.wait_timeout), ")");
  }
  absl::StatusOr<std::unique_ptr<redis::RedisClient>> client;
  redis::RedisCluster* router = nullptr;
  if (cluster) {
    absl::StatusOr<std::unique_ptr<redis::RedisCluster>> c =
        redis::RedisCluster::Create(*client_options);
    if (c.ok()) router = c->get();
    client = c.ok() ? absl::StatusOr<std::unique_ptr<redis::RedisClient>>(*std::move(c))
                    : c.status();
  } else {
    client = redis::RedisClient::Create(*client_options);
  }
  if (!client.ok()) return client.status();
  const absl::Duration wait = options.connect_wait;
  std::unique_ptr<RedisBackend> backend(
      new RedisBackend(clock, std::move(options), description, *std::move(client)));
  {
    absl::MutexLock lock(&backend->mu_);
    backend->compiled_ = *std::move(compiled);
  }
  backend->cluster_ = router;
  backend->client_->WaitConnected(wait);
  backend->CheckHealth();
  return backend;
}

RedisBackend::RedisBackend(Clock* clock, RedisBackendOptions options, std::string description,
                           std::unique_ptr<redis::RedisClient> client)
    : clock_(clock),
      options_(std::move(options)),
      description_(std::move(description)),
      client_(std::move(client)),
      functions_(
          client_.get(), [clock] { return clock->Now(); },
          redis::WaitPolicy{options_.wait_replicas, options_.wait_timeout}) {}

RedisBackend::~RedisBackend() { StopWaiting(); }

bool RedisBackend::serving() const {
  return client_->connected() > 0 && library_loaded_.load(std::memory_order_acquire) &&
         replicas_enough_.load(std::memory_order_acquire);
}

bool RedisBackend::CheckHealth() {
  if (cluster_ != nullptr) return CheckClusterHealth();
  if (client_->connected() == 0) {
    // Redis may come back empty (no persistence): check the library again once it is up.
    library_loaded_.store(false, std::memory_order_release);
    return false;
  }
  if (!library_loaded_.load(std::memory_order_acquire)) {
    absl::StatusOr<int> version = functions_.EnsureLoaded(options_.call_timeout * 2);
    library_loaded_.store(version.ok(), std::memory_order_release);
  }
  if (options_.wait_replicas > 0) {
    // With WAIT, a primary with fewer replicas than asked for can grant nothing: say so
    // (NOT_SERVING, decisions refused at once) instead of timing out every call.
    replicas_enough_.store(EnoughReplicas(*client_), std::memory_order_release);
  }
  return serving();
}

absl::StatusOr<std::shared_ptr<const RedisBackend::Compiled>> RedisBackend::Compile(
    const Policy& policy) {
  if (absl::Status s = ValidatePolicy(policy); !s.ok()) return s;
  auto compiled = std::make_shared<Compiled>();
  compiled->policy = policy;
  for (const CredentialSpec& c : policy.credentials) {
    compiled->credentials[c.name] = std::make_shared<const CompiledCredential>(c.features);
    if (c.fail_open) compiled->fail_open.insert(c.name);
  }
  return std::shared_ptr<const Compiled>(std::move(compiled));
}

std::shared_ptr<const RedisBackend::Compiled> RedisBackend::compiled() const {
  absl::MutexLock lock(&mu_);
  return compiled_;
}

Policy RedisBackend::policy() const { return compiled()->policy; }

absl::Status RedisBackend::Reload(const Policy& policy) {
  // Usage lives in Redis, under the counters' names: a limit that keeps its name keeps its
  // units. Nothing is written here: the next call that reads a counter written under another
  // shape or scoping converts it, atomically, in Redis (quotad_reshape.lua; README "Reload that
  // changes a limit's shape"), so replicas that reload at different moments agree.
  absl::StatusOr<std::shared_ptr<const Compiled>> compiled = Compile(policy);
  if (!compiled.ok()) return compiled.status();
  absl::MutexLock lock(&mu_);
  compiled_ = *std::move(compiled);
  return absl::OkStatus();
}

absl::StatusOr<RedisBackend::Plan> RedisBackend::PlanFor(const Compiled& compiled,
                                                         absl::string_view credential,
                                                         absl::string_view feature,
                                                         absl::string_view scope) {
  auto it = compiled.credentials.find(credential);
  if (it == compiled.credentials.end()) {
    return absl::NotFoundError(absl::StrCat("credential '", credential, "' is not configured"));
  }
  Plan plan;
  plan.cc = it->second;
  const int f = plan.cc->FindFeature(feature);
  if (f < 0) {
    return absl::NotFoundError(absl::StrCat("feature '", feature,
                                            "' is not configured for credential '", credential,
                                            "'"));
  }
  plan.feature = &plan.cc->features[f];
  for (int r : plan.feature->rules) {
    const Rule& rule = plan.cc->rules[r];
    plan.counters.push_back({CounterName(rule, scope), &rule});
    if (rule.spec.scoped) plan.counters.back().scope = std::string(scope);
    // Redis counts the scopes of the feature's first scoped limit (Ledger::Acquire's check).
    if (r == plan.feature->first_scoped_rule) {
      plan.counters.back().max_scopes = plan.feature->max_scopes;
    }
    plan.rules.push_back(&rule);
    absl::StrAppend(&plan.signature, plan.counters.back().name, "\n");
  }
  return plan;
}

absl::Status RedisBackend::StoreError(const absl::Status& status, absl::string_view what) {
  if (redis::IsWaitShortfall(status)) {
    // Redis answered and applied the call: `what` (e.g. "nothing was granted") is not true.
    return absl::UnavailableError(absl::StrCat(
        "shared store ", description_, ": ", status.message(),
        "; it stays in Redis (a grant stays charged until its lease's TTL, and a retry with the "
        "same request_id is answered it once a replica holds it)"));
  }
  if (absl::IsUnavailable(status) || absl::IsDeadlineExceeded(status) ||
      absl::IsCancelled(status)) {
    return absl::UnavailableError(absl::StrCat("shared store ", description_, " did not answer (",
                                               status.message(), "): ", what));
  }
  if (absl::IsInternal(status) && absl::StrContains(absl::AsciiStrToLower(status.message()),
                                                    "function not found")) {
    library_loaded_.store(false, std::memory_order_release);  // CheckHealth loads it again
    return absl::UnavailableError(absl::StrCat("shared store ", description_,
                                               " lost quotad's function library: ", what));
  }
  return status;
}

absl::StatusOr<Decision> RedisBackend::Acquire(const AcquireRequest&) {
  return absl::InternalError("shared backend: use AcquireShared");
}

WaitTicket RedisBackend::AcquireOrWait(const AcquireRequest& request, absl::Duration max_wait,
                                       int priority, WaitCallback done) {
  return AcquireSharedOrWait(request, SharedRequestId{}, max_wait, priority, std::move(done));
}

LeaseId RedisBackend::NewHeldLeaseId(absl::string_view credential) const {
  LeaseId id = NewLeaseId();
  while (IsFailOpenLease(id)) id = NewLeaseId();
  if (cluster_ != nullptr) {
    // The locator q:lease:<id> lies in the credential's slot, so that one FCALL writes both.
    id = redis::LeaseIdInSlot(id, LeaseLocatorKey(""), redis::KeySlot(redis::StateKey(credential)));
  }
  return id;
}

void RedisBackend::AcquireShared(const AcquireRequest& req, const SharedRequestId& request_id,
                                 DecisionCallback done) {
  // The request is checked against the policy first (this replica has it), so that a fail-open
  // grant is one Redis would have been asked for.
  const std::shared_ptr<const Compiled> compiled = this->compiled();
  absl::StatusOr<Plan> plan = PlanFor(*compiled, req.credential, req.feature, req.scope);
  if (!plan.ok()) {
    done(plan.status());
    return;
  }
  const CompiledFeature& feature = *plan->feature;
  absl::StatusOr<absl::Duration> checked_ttl = CheckedTtl(*plan, req);
  if (!checked_ttl.ok()) {
    done(checked_ttl.status());
    return;
  }
  const absl::Duration ttl = *checked_ttl;
  const bool fail_open = compiled->fail_open.contains(req.credential);
  // Cluster with WAIT: a credential whose master is short of replicas is refused as well.
  const std::string short_master = ShortMasterOf(req.credential);
  if (!serving() || !short_master.empty()) {
    absl::Status down = absl::UnavailableError(absl::StrCat(
        "shared store ", description_,
        !short_master.empty()
            ? absl::StrCat(": master ", short_master, " of credential '", req.credential, "'")
            : "",
        replicas_enough_.load(std::memory_order_acquire) && short_master.empty()
            ? " is unreachable: nothing was granted"
            : " has fewer replicas connected than WAIT needs: nothing was granted"));
    done(fail_open ? GrantFailOpen(FailOpenLease(req, feature), ttl, down)
                   : absl::StatusOr<Decision>(std::move(down)));
    return;
  }
  redis::AcquireCall call = SharedCall(req, request_id, *plan, ttl);
  std::string lease_id = call.lease_id;
  // Granted here instead when Redis does not answer (fail_open credentials only).
  std::optional<LeaseInfo> fallback;
  if (fail_open) fallback = FailOpenLease(req, feature);
  functions_.Acquire(
      std::move(call),
      [this, plan = *std::move(plan), lease_id = std::move(lease_id), ttl,
       fallback = std::move(fallback),
       done = std::move(done)](absl::StatusOr<redis::AcquireAnswer> answer) mutable {
        done(Decide(plan, std::move(answer), lease_id, std::move(fallback), ttl));
      });
}

redis::AcquireCall RedisBackend::SharedCall(const AcquireRequest& req,
                                            const SharedRequestId& request_id, const Plan& plan,
                                            absl::Duration ttl) const {
  redis::AcquireCall call;
  call.credential = std::string(req.credential);
  call.lease_id = NewHeldLeaseId(req.credential).ToString();
  call.cost = req.cost;
  call.ttl = ttl;
  call.counters = plan.counters;
  call.feature = plan.feature->name;
  call.request_id = std::string(request_id.key);
  call.fingerprint = std::string(request_id.fingerprint);
  call.dedup_window = options_.dedup_window;
  call.locator_key = LeaseLocatorKey(call.lease_id);
  call.locator = EncodeFields({req.credential, req.feature, req.scope, req.holder,
                               absl::StrCat(req.cost), plan.signature});
  call.want_limits = req.want_limits;
  return call;
}

absl::StatusOr<Decision> RedisBackend::Decide(const Plan& plan,
                                              absl::StatusOr<redis::AcquireAnswer> answer,
                                              absl::string_view lease_id,
                                              std::optional<LeaseInfo> fallback,
                                              absl::Duration ttl) {
  if (answer.ok()) return DecisionOf(plan, *answer, lease_id);
  // A call that timed out may still run in Redis: its lease is never handed out and ends at
  // its TTL (the README's under-grant), so only a call never sent says nothing was granted.
  absl::Status error =
      StoreError(answer.status(), absl::IsDeadlineExceeded(answer.status())
                                      ? "no lease handed out (the call may still grant in Redis; "
                                        "that lease ends at its TTL)"
                                      : "nothing was granted");
  if (fallback.has_value() && absl::IsUnavailable(error)) {
    return GrantFailOpen(*std::move(fallback), ttl, error);
  }
  return error;
}

absl::StatusOr<absl::Duration> RedisBackend::CheckedTtl(const Plan& plan,
                                                        const AcquireRequest& req) {
  const CompiledFeature& feature = *plan.feature;
  if (req.cost <= 0 || req.cost > feature.min_capacity) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cost ", req.cost, " exceeds capacity ", feature.min_capacity, " of limit ",
        plan.cc->rules[feature.min_capacity_rule].full_name, " and can never be granted"));
  }
  const absl::Duration ttl =
      req.lease_ttl == absl::ZeroDuration() ? feature.default_lease_ttl : req.lease_ttl;
  if (ttl <= absl::ZeroDuration() || ttl > feature.max_lease_ttl) {
    return absl::InvalidArgumentError(
        absl::StrCat("lease_ttl ", absl::FormatDuration(ttl), " exceeds the maximum ",
                     absl::FormatDuration(feature.max_lease_ttl), " of feature ", feature.name));
  }
  return ttl;
}

absl::StatusOr<Decision> RedisBackend::DecisionOf(const Plan& plan,
                                                  const redis::AcquireAnswer& answer,
                                                  absl::string_view lease_id) {
  Decision d;
  d.granted = answer.granted;
  if (d.granted) {
    absl::StatusOr<LeaseId> id = LeaseId::Parse(answer.duplicate ? answer.lease_id : lease_id);
    if (!id.ok()) {
      return absl::InternalError(absl::StrCat("shared store answered lease ", answer.lease_id,
                                              ": ", id.status().message()));
    }
    d.lease_id = *id;
    d.lease_expiry = answer.lease_expiry;
  } else {
    d.retry_at = answer.retry_at;
    if (answer.cooling || answer.limiting < 0 ||
        answer.limiting >= static_cast<int>(plan.rules.size())) {
      d.limited_by = absl::StrCat(plan.feature->name, ".cooldown");
    } else {
      d.limited_by = plan.rules[answer.limiting]->full_name;
    }
  }
  // Decision::limits as Ledger::Acquire fills them.
  if (answer.limits.size() == plan.rules.size()) {
    d.limits.reserve(plan.rules.size());
    for (size_t i = 0; i < plan.rules.size(); ++i) {
      const Rule& rule = *plan.rules[i];
      LimitStatus& st = d.limits.emplace_back();
      st.name = rule.full_name;
      st.scope = plan.counters[i].scope;
      st.kind = rule.spec.kind;
      st.capacity = rule.Capacity();
      st.used = answer.limits[i].used;
      st.outside_estimate = answer.limits[i].outside;
      st.remaining = rule.spec.kind == LimitKind::kUnlimited
                         ? st.capacity
                         : std::max<int64_t>(0, st.capacity - st.used - st.outside_estimate);
      st.reset = answer.limits[i].reset;
    }
  }
  return d;
}

absl::StatusOr<RedisBackend::Locator> RedisBackend::ReadLocator(const LeaseId& id) {
  const std::string text = id.ToString();
  absl::StatusOr<redis::Reply> reply = client_->CallSync({"GET", LeaseLocatorKey(text)});
  if (!reply.ok()) return StoreError(reply.status(), "the lease was not looked up");
  if (reply->type == redis::Reply::Type::kNil) {
    return absl::NotFoundError(absl::StrCat("unknown or expired lease ", text));
  }
  if (reply->type != redis::Reply::Type::kString) {
    return absl::InternalError(absl::StrCat("lease ", text, ": unreadable locator ",
                                            reply->DebugString()));
  }
  return ParseLocator(reply->str, text);
}

absl::StatusOr<RedisBackend::Locator> RedisBackend::ParseLocator(absl::string_view value,
                                                                 absl::string_view id) {
  std::vector<std::string> f;
  Locator l;
  if (!DecodeFields(value, &f) || f.size() != 6 || !absl::SimpleAtoi(f[4], &l.cost)) {
    return absl::InternalError(absl::StrCat("lease ", id, ": unreadable locator"));
  }
  l.credential = std::move(f[0]);
  l.feature = std::move(f[1]);
  l.scope = std::move(f[2]);
  l.holder = std::move(f[3]);
  l.signature = std::move(f[5]);
  return l;
}

absl::StatusOr<LeaseInfo> RedisBackend::FindLease(const LeaseId& id) {
  if (IsFailOpenLease(id)) return FindFailOpen(id);
  absl::StatusOr<Locator> l = ReadLocator(id);
  if (!l.ok()) return l.status();
  LeaseInfo info;
  info.id = id;
  info.credential = l->credential;
  info.feature = l->feature;
  info.scope = l->scope;
  info.holder = l->holder;
  info.cost = l->cost;
  info.granted_at = absl::InfinitePast();  // not kept in the locator
  info.expiry = absl::InfiniteFuture();
  return info;
}

absl::StatusOr<ReleaseResult> RedisBackend::Release(const LeaseId& id,
                                                    std::optional<int64_t> used) {
  if (IsFailOpenLease(id)) return ReleaseFailOpen(id);
  absl::StatusOr<Locator> l = ReadLocator(id);
  if (!l.ok()) return l.status();
  if (used.has_value() && (*used < 0 || *used > l->cost)) {
    return absl::InvalidArgumentError(
        absl::StrCat("used ", *used, " must be 0..", l->cost, " (the lease's cost)"));
  }
  redis::ReleaseCall call;
  call.credential = l->credential;
  call.lease_id = id.ToString();
  call.used = used.value_or(-1);
  call.locator_key = LeaseLocatorKey(call.lease_id);
  absl::StatusOr<Plan> plan = PlanFor(*compiled(), l->credential, l->feature, l->scope);
  if (plan.ok()) {
    call.counters = plan->counters;
    // The feature's limits changed since the grant: its refund tokens no longer line up with
    // the counters, so nothing is refunded (slots are freed by name all the same).
    if (plan->signature != l->signature) call.used = -1;
  } else {
    call.used = -1;  // the feature is gone: only the lease (and its locator) end
  }
  absl::StatusOr<redis::ReleaseAnswer> answer = functions_.ReleaseSync(std::move(call));
  if (!answer.ok()) return StoreError(answer.status(), "the lease was not released");
  if (!answer->found) {
    return absl::NotFoundError(absl::StrCat("unknown or expired lease ", id.ToString()));
  }
  ReleaseResult result;
  result.freed = answer->freed;
  for (int64_t r : answer->refunded) result.refunded = std::max(result.refunded, r);
  return result;
}

absl::StatusOr<absl::Time> RedisBackend::Renew(const LeaseId& id, absl::Duration ttl) {
  if (IsFailOpenLease(id)) return RenewFailOpen(id, ttl);
  absl::StatusOr<Locator> l = ReadLocator(id);
  if (!l.ok()) return l.status();
  absl::StatusOr<Plan> plan = PlanFor(*compiled(), l->credential, l->feature, l->scope);
  if (!plan.ok()) return plan.status();
  const CompiledFeature& feature = *plan->feature;
  if (ttl == absl::ZeroDuration()) ttl = feature.default_lease_ttl;
  if (ttl < absl::ZeroDuration() || ttl > feature.max_lease_ttl) {
    return absl::InvalidArgumentError(
        absl::StrCat("ttl ", absl::FormatDuration(ttl), " exceeds the maximum ",
                     absl::FormatDuration(feature.max_lease_ttl), " of feature ", feature.name));
  }
  redis::RenewCall call;
  call.credential = l->credential;
  call.lease_id = id.ToString();
  call.ttl = ttl;
  call.counters = plan->counters;
  call.locator_key = LeaseLocatorKey(call.lease_id);
  absl::StatusOr<redis::RenewAnswer> answer = functions_.RenewSync(std::move(call));
  if (!answer.ok()) return StoreError(answer.status(), "the lease was not renewed");
  if (!answer->found) {
    return absl::NotFoundError(absl::StrCat("unknown or expired lease ", id.ToString()));
  }
  return answer->expiry;
}

}  // namespace quotad
