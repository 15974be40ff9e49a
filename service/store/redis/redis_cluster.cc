#include "service/store/redis/redis_cluster.h"

#include <algorithm>
#include <optional>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace quotad {
namespace redis {
namespace {

constexpr int kMaxRedirects = 5;
constexpr std::chrono::milliseconds kMaxTryAgainBackoff{100};

// numkeys; the commands below have none; every other command's first argument is its key.
std::optional<absl::string_view> KeyOf(const std::vector<std::string>& args) {
  if (args.size() < 2) return std::nullopt;
  const absl::string_view cmd = args[0];
  for (absl::string_view scripted :
       {"FCALL", "FCALL_RO", "EVAL", "EVALSHA", "EVAL_RO", "EVALSHA_RO"}) {
    if (absl::EqualsIgnoreCase(cmd, scripted)) {
      int n = 0;
      if (args.size() < 4 || !absl::SimpleAtoi(args[2], &n) || n <= 0) return std::nullopt;
      return absl::string_view(args[3]);
    }
  }
  for (absl::string_view keyless :
       {"TIME", "PING", "ROLE", "INFO", "DBSIZE", "FUNCTION", "CLUSTER", "WAIT", "SCRIPT", "CONFIG",
        "CLIENT", "ECHO", "SCAN", "KEYS", "ASKING", "FLUSHALL", "FLUSHDB"}) {
    if (absl::EqualsIgnoreCase(cmd, keyless)) return std::nullopt;
  }
  return absl::string_view(args[1]);
}

int SlotOf(const std::vector<std::string>& args) {
  const std::optional<absl::string_view> key = KeyOf(args);
  return key.has_value() ? KeySlot(*key) : -1;
}

// "host:port" (the last ':' splits, for IPv6) into `out`.
bool ParseAddress(absl::string_view text, HostPort* out) {
  const size_t colon = text.rfind(':');
  if (colon == absl::string_view::npos || colon == 0) return false;
  if (!absl::SimpleAtoi(text.substr(colon + 1), &out->port)) return false;
  out->host = std::string(text.substr(0, colon));
  return out->port > 0 && out->port <= 65535;
}

std::string AddressKey(const HostPort& hp) { return absl::StrCat(hp.host, ":", hp.port); }

}  // namespace

absl::StatusOr<std::unique_ptr<RedisCluster>> RedisCluster::Create(RedisClientOptions options) {
  if (options.cluster_nodes.empty()) {
    return absl::InvalidArgumentError("Cluster mode needs at least one node");
  }
  std::unique_ptr<RedisCluster> cluster(new RedisCluster(std::move(options)));
  {
    absl::MutexLock lock(&cluster->mu_);
    for (const HostPort& hp : cluster->options_.cluster_nodes) {
      Node* node = cluster->NodeAt(hp);
      if (node == nullptr) {
        return absl::InternalError(absl::StrCat("no client for ", hp.ToString()));
      }
      cluster->seeds_.push_back(node);
    }
    cluster->refresh_wanted_ = true;
  }
  cluster->worker_ = std::thread([c = cluster.get()] { c->Work(); });
  return cluster;
}

RedisCluster::RedisCluster(RedisClientOptions options) : options_(std::move(options)) {}

RedisCluster::~RedisCluster() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  if (worker_.joinable()) worker_.join();  // answers the resends it holds: kCancelled
  std::map<std::string, std::unique_ptr<Node>> nodes;
  {
    absl::MutexLock lock(&mu_);
    nodes.swap(nodes_);
  }
  nodes.clear();  // each client answers its pending calls (kCancelled) and joins its loop
}

RedisCluster::Node* RedisCluster::NodeAt(const HostPort& address) {
  const std::string key = AddressKey(address);
  auto it = nodes_.find(key);
  if (it != nodes_.end()) return it->second.get();
  RedisClientOptions o = options_;
  o.cluster_nodes.clear();
  o.sentinels.clear();
  o.host = address.host;
  o.port = address.port;
  absl::StatusOr<std::unique_ptr<RedisClient>> client = RedisClient::Create(std::move(o));
  if (!client.ok()) return nullptr;
  auto node = std::make_unique<Node>();
  node->address = address;
  node->client = *std::move(client);
  Node* raw = node.get();
  nodes_[key] = std::move(node);
  return raw;
}

void RedisCluster::Call(std::vector<std::string> args, ReplyCallback done, absl::Duration timeout) {
  if (!args.empty() && absl::EqualsIgnoreCase(args[0], "SCAN")) {
    CallScan(std::move(args), std::move(done), timeout);
    return;
  }
  if (args.size() > 2 && absl::EqualsIgnoreCase(args[0], "MGET")) {
    CallMulti(std::move(args), std::move(done), timeout);
    return;
  }
  auto op = std::make_unique<Op>();
  op->slot = SlotOf(args);
  op->args = std::move(args);
  op->done = std::move(done);
  op->deadline =
      Steady::now() +
      absl::ToChronoNanoseconds(timeout > absl::ZeroDuration() ? timeout : options_.call_timeout);
  Send(std::move(op));
}

void RedisCluster::CallThenWait(std::vector<std::string> args, int replicas,
                                absl::Duration wait_timeout, ReplyCallback done,
                                absl::Duration timeout) {
  auto op = std::make_unique<Op>();
  op->slot = SlotOf(args);
  op->args = std::move(args);
  op->done = std::move(done);
  op->wait_replicas = std::max(1, replicas);
  op->wait_timeout = wait_timeout;
  op->deadline =
      Steady::now() + absl::ToChronoNanoseconds(timeout > absl::ZeroDuration()
                                                    ? timeout
                                                    : options_.call_timeout + wait_timeout);
  Send(std::move(op));
}

void RedisCluster::CallPipeline(std::vector<std::vector<std::string>> commands, ReplyCallback done,
                                absl::Duration timeout) {
  int slot = -1;
  for (const auto& c : commands) {
    if ((slot = SlotOf(c)) >= 0) break;
  }
  RedisClient* client = nullptr;
  HostPort to;
  {
    absl::MutexLock lock(&mu_);
    Node* node = slot >= 0 ? owner_[slot] : nullptr;
    if (slot < 0 && !masters_.empty()) node = masters_.front();
    if (node != nullptr) {
      client = node->client.get();
      to = node->address;
    }
  }
  if (client == nullptr) {
    WantRefresh();
    done(absl::UnavailableError(absl::StrCat("redis cluster: no master known for slot ", slot)));
    return;
  }
  client->CallPipeline(std::move(commands), std::move(done), timeout);
}

void RedisCluster::Fail(std::unique_ptr<Op> op, absl::Status status) {
  ReplyCallback done = std::move(op->done);
  op.reset();
  done(std::move(status));
}

void RedisCluster::Send(std::unique_ptr<Op> op) {
  Node* node = nullptr;
  bool stopping = false;
  {
    absl::MutexLock lock(&mu_);
    stopping = stopping_;
    if (stopping) {
      // answered below
    } else if (op->asking) {
      node = NodeAt(op->ask_to);
    } else if (op->slot >= 0) {
      node = owner_[op->slot];
    } else {
      for (Node* n : masters_) {  // any master, one that is up first
        if (node == nullptr) node = n;
        if (n->client->connected() > 0) {
          node = n;
          break;
        }
      }
    }
  }
  if (stopping) {
    Fail(std::move(op), absl::CancelledError("redis cluster client is shutting down"));
    return;
  }
  if (node == nullptr) {
    WantRefresh();
    Fail(std::move(op),
         absl::UnavailableError(absl::StrCat(
             "redis cluster: no master known for ",
             op->slot >= 0 ? absl::StrCat("slot ", op->slot) : std::string("a keyless command"),
             ": nothing was done")));
    return;
  }
  const auto left = op->deadline - Steady::now();
  if (left <= Steady::duration::zero()) {
    // Only a resend gets here (a first send has its whole timeout left).
    Fail(std::move(op), absl::AbortedError(absl::StrCat("redis cluster: slot ", op->slot,
                                                        " took longer than the call's timeout "
                                                        "through redirects: nothing was done")));
    return;
  }
  const absl::Duration timeout = std::max(absl::FromChrono(left), absl::Milliseconds(1));
  RedisClient* client = node->client.get();
  const HostPort to = node->address;
  Op* raw = op.get();
  auto answered = [this, op = std::move(op), to](absl::StatusOr<Reply> reply) mutable {
    OnReply(std::move(op), to, std::move(reply));
  };
  if (raw->wait_replicas > 0) {
    client->CallThenWait(raw->args, raw->wait_replicas, raw->wait_timeout, std::move(answered),
                         timeout);
  } else if (raw->asking) {
    client->CallPipeline({{"ASKING"}, raw->args}, std::move(answered), timeout);
  } else {
    client->Call(raw->args, std::move(answered), timeout);
  }
}

void RedisCluster::OnReply(std::unique_ptr<Op> op, const HostPort& to,
                           absl::StatusOr<Reply> reply) {
  const bool asked = op->asking;
  op->asking = false;
  if (!reply.ok()) {
    // The command may have run: answered as it is, never resent.
    if (absl::IsUnavailable(reply.status())) {
      WantRefresh();  // a failover may have moved the slot
      reply = absl::UnavailableError(absl::StrCat("redis cluster master ", to.ToString(), " (slot ",
                                                  op->slot,
                                                  ") is unreachable: ", reply.status().message()));
    }
    Fail(std::move(op), reply.status());
    return;
  }
  if (asked) {
    // [ASKING's +OK, the command's reply]
    if (reply->type != Reply::Type::kArray || reply->elements.size() != 2) {
      Fail(std::move(op), absl::InternalError(absl::StrCat("redis cluster: ASKING pipeline "
                                                           "answered ",
                                                           reply->DebugString())));
      return;
    }
    Reply inner = std::move(reply->elements[1]);
    *reply = std::move(inner);
  }
  const Reply* head = &*reply;
  if (op->wait_replicas > 0 && reply->type == Reply::Type::kArray && !reply->elements.empty()) {
    head = &reply->elements[0];
  }
  if (!head->is_error()) {
    ReplyCallback done = std::move(op->done);
    op.reset();
    done(std::move(reply));
    return;
  }
  const absl::string_view e = head->str;
  const bool moved = absl::StartsWith(e, "MOVED ");
  const bool ask = absl::StartsWith(e, "ASK ");
  if (moved || (ask && op->wait_replicas == 0)) {
    // "MOVED <slot> <host:port>" / "ASK <slot> <host:port>": the command did not run.
    const size_t space = e.rfind(' ');
    HostPort target;
    if (!ParseAddress(e.substr(space + 1), &target)) {
      Fail(std::move(op), absl::InternalError(absl::StrCat("redis cluster: ", e)));
      return;
    }
    if (++op->redirects > kMaxRedirects) {
      Fail(std::move(op), absl::AbortedError(absl::StrCat(
                              "redis cluster: slot ", op->slot, " redirected more than ",
                              kMaxRedirects, " times (last: ", e, "): nothing was done")));
      return;
    }
    if (moved) {
      moved_.fetch_add(1, std::memory_order_relaxed);
      {
        absl::MutexLock lock(&mu_);
        if (!stopping_ && op->slot >= 0) {
          Node* n = NodeAt(target);
          if (n != nullptr && owner_[op->slot] != n) {
            owner_[op->slot] = n;
            ++changes_;
            RebuildMasters();
          }
        }
      }
      WantRefresh();
    } else {
      asked_.fetch_add(1, std::memory_order_relaxed);
      op->asking = true;
      op->ask_to = target;
    }
    Resend(std::move(op), Steady::now());
    return;
  }
  if (ask || absl::StartsWith(e, "TRYAGAIN")) {
    // The slot is migrating and the command's keys are split between the nodes (or, with
    // WAIT, an ASK: ASKING cannot precede a held call): it did not run; the migration ends.
    tried_again_.fetch_add(1, std::memory_order_relaxed);
    const Steady::time_point at = Steady::now() + op->backoff;
    if (at >= op->deadline) {
      Fail(std::move(op), absl::AbortedError(absl::StrCat(
                              "redis cluster: slot ", op->slot, " is being migrated (", e,
                              ") for longer than the call's timeout: nothing "
                              "was done")));
      return;
    }
    op->backoff = std::min(op->backoff * 2, kMaxTryAgainBackoff);
    // ASK then TRYAGAIN repeats until the migration ends: the back-off and the deadline bound
    // it, not the redirect count.
    op->redirects = 0;
    Resend(std::move(op), at);
    return;
  }
  if (absl::StartsWith(e, "CLUSTERDOWN")) {
    WantRefresh();
    Fail(std::move(op),
         absl::UnavailableError(absl::StrCat("redis cluster master ", to.ToString(), " (slot ",
                                             op->slot, "): ", e, ": nothing was done")));
    return;
  }
  ReplyCallback done = std::move(op->done);
  op.reset();
  done(std::move(reply));  // the command's own error
}

void RedisCluster::Resend(std::unique_ptr<Op> op, Steady::time_point at) {
  {
    absl::MutexLock lock(&mu_);
    if (!stopping_) {
      due_.emplace(at, std::move(op));
      return;
    }
  }
  Fail(std::move(op), absl::CancelledError("redis cluster client is shutting down"));
}

void RedisCluster::WantRefresh() {
  absl::MutexLock lock(&mu_);
  refresh_wanted_ = true;
}

void RedisCluster::CallMulti(std::vector<std::string> args, ReplyCallback done,
                             absl::Duration timeout) {
  // Keys by slot, each group one MGET; the answers put back in the keys' order.
  std::map<int, std::vector<size_t>> groups;
  for (size_t i = 1; i < args.size(); ++i) groups[KeySlot(args[i])].push_back(i - 1);
  struct Gather {
    absl::Mutex mu;
    Reply out;
    size_t left = 0;
    absl::Status error;
    ReplyCallback done;
  };
  auto g = std::make_shared<Gather>();
  g->out.type = Reply::Type::kArray;
  g->out.elements.resize(args.size() - 1);
  g->left = groups.size();
  g->done = std::move(done);
  for (auto& [slot, positions] : groups) {
    std::vector<std::string> mget = {args[0]};
    for (size_t p : positions) mget.push_back(args[p + 1]);
    auto op = std::make_unique<Op>();
    op->slot = slot;
    op->args = std::move(mget);
    op->deadline =
        Steady::now() +
        absl::ToChronoNanoseconds(timeout > absl::ZeroDuration() ? timeout : options_.call_timeout);
    op->done = [g, positions](absl::StatusOr<Reply> r) {
      ReplyCallback finish;
      absl::StatusOr<Reply> result;
      {
        absl::MutexLock lock(&g->mu);
        if (!r.ok()) {
          if (g->error.ok()) g->error = r.status();
        } else if (r->is_error() || r->type != Reply::Type::kArray ||
                   r->elements.size() != positions.size()) {
          if (g->error.ok()) {
            g->error = absl::InternalError(absl::StrCat("MGET: ", r->DebugString()));
          }
        } else {
          for (size_t i = 0; i < positions.size(); ++i) {
            g->out.elements[positions[i]] = std::move(r->elements[i]);
          }
        }
        if (--g->left > 0) return;
        finish = std::move(g->done);
        if (g->error.ok()) {
          result = std::move(g->out);
        } else {
          result = g->error;
        }
      }
      finish(std::move(result));
    };
    Send(std::move(op));
  }
}

void RedisCluster::CallScan(std::vector<std::string> args, ReplyCallback done,
                            absl::Duration timeout) {
  // Cursor "0" starts at the first master; "<i>:<cursor>" continues master i.
  size_t index = 0;
  std::string inner = "0";
  if (args.size() < 2) {
    done(absl::InvalidArgumentError("SCAN needs a cursor"));
    return;
  }
  if (args[1] != "0") {
    const size_t colon = args[1].find(':');
    if (colon == std::string::npos || !absl::SimpleAtoi(args[1].substr(0, colon), &index)) {
      done(absl::InvalidArgumentError(absl::StrCat("bad cluster SCAN cursor '", args[1], "'")));
      return;
    }
    inner = args[1].substr(colon + 1);
  }
  const std::vector<std::pair<HostPort, RedisClient*>> masters = Masters();
  if (index >= masters.size()) {
    done(absl::UnavailableError(absl::StrCat("redis cluster: SCAN of master ", index, " of ",
                                             masters.size(), " known: nothing was read")));
    return;
  }
  args[1] = inner;
  const HostPort to = masters[index].first;
  const size_t count = masters.size();
  masters[index].second->Call(
      std::move(args),
      [index, count, to, done = std::move(done)](absl::StatusOr<Reply> r) mutable {
        if (!r.ok()) {
          done(absl::Status(r.status().code(), absl::StrCat("redis cluster master ", to.ToString(),
                                                            " (SCAN): ", r.status().message())));
          return;
        }
        if (r->type == Reply::Type::kArray && r->elements.size() == 2) {
          std::string& next = r->elements[0].str;
          if (next != "0") {
            next = absl::StrCat(index, ":", next);
          } else if (index + 1 < count) {
            next = absl::StrCat(index + 1, ":0");
          }
        }
        done(std::move(r));
      },
      timeout);
}

}  // namespace redis
}  // namespace quotad
