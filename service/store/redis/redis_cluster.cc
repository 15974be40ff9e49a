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
// The map is asked again at most this often (a burst of MOVED asks once).
constexpr std::chrono::milliseconds kRefreshInterval{50};
constexpr absl::Duration kSlotsTimeout = absl::Milliseconds(500);

const std::array<uint16_t, 256>& CrcTable() {
  static const std::array<uint16_t, 256> table = [] {
    std::array<uint16_t, 256> t{};
    for (int i = 0; i < 256; ++i) {
      uint16_t c = static_cast<uint16_t>(i << 8);
      for (int b = 0; b < 8; ++b) c = (c & 0x8000) ? static_cast<uint16_t>((c << 1) ^ 0x1021)
                                                    : static_cast<uint16_t>(c << 1);
      t[i] = c;
    }
    return t;
  }();
  return table;
}

// CRC16-XMODEM (poly 0x1021, init 0, no final xor), continued from `crc`.
uint16_t Crc16(uint16_t crc, absl::string_view data) {
  const auto& t = CrcTable();
  for (unsigned char ch : data) {
    crc = static_cast<uint16_t>((crc << 8) ^ t[((crc >> 8) ^ ch) & 0xff]);
  }
  return crc;
}

constexpr char kHex[] = "0123456789abcdef";

// For each 14-bit value v, a 20-bit number whose 5 hex digits have CRC16 & 0x3fff == v.
const std::vector<uint32_t>& SuffixTable() {
  static const std::vector<uint32_t> table = [] {
    std::vector<uint32_t> t(kClusterSlots, UINT32_MAX);
    int filled = 0;
    char text[5];
    for (uint32_t n = 0; n < (1u << 20) && filled < kClusterSlots; ++n) {
      for (int i = 0; i < 5; ++i) text[i] = kHex[(n >> (4 * (4 - i))) & 0xf];
      const int v = Crc16(0, absl::string_view(text, 5)) & 0x3fff;
      if (t[v] == UINT32_MAX) {
        t[v] = n;
        ++filled;
      }
    }
    return t;
  }();
  return table;
}

// The key a command touches first, if any: FCALL/FCALL_RO/EVAL/EVALSHA name theirs after
// numkeys; the commands below have none; every other command's first argument is its key.
std::optional<absl::string_view> KeyOf(const std::vector<std::string>& args) {
  if (args.size() < 2) return std::nullopt;
  const absl::string_view cmd = args[0];
  for (absl::string_view scripted : {"FCALL", "FCALL_RO", "EVAL", "EVALSHA", "EVAL_RO",
                                     "EVALSHA_RO"}) {
    if (absl::EqualsIgnoreCase(cmd, scripted)) {
      int n = 0;
      if (args.size() < 4 || !absl::SimpleAtoi(args[2], &n) || n <= 0) return std::nullopt;
      return absl::string_view(args[3]);
    }
  }
  for (absl::string_view keyless : {"TIME", "PING", "ROLE", "INFO", "DBSIZE", "FUNCTION",
                                    "CLUSTER", "WAIT", "SCRIPT", "CONFIG", "CLIENT", "ECHO",
                                    "SCAN", "KEYS", "ASKING", "FLUSHALL", "FLUSHDB"}) {
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

int KeySlot(absl::string_view key) {
  const size_t open = key.find('{');
  if (open != absl::string_view::npos) {
    const size_t close = key.find('}', open + 1);
    if (close != absl::string_view::npos && close > open + 1) {
      key = key.substr(open + 1, close - open - 1);
    }
  }
  return Crc16(0, key) & (kClusterSlots - 1);
}

LeaseId LeaseIdInSlot(LeaseId id, absl::string_view prefix, int slot) {
  // CRC16 with init 0 is linear: crc(P || S) = crc(P || 00000) ^ crc(S) for a 5-byte S.
  const std::string text = id.ToString();
  uint16_t c = Crc16(0, prefix);
  c = Crc16(c, absl::string_view(text).substr(0, text.size() - 5));
  c = Crc16(c, absl::string_view("\0\0\0\0\0", 5));
  const uint32_t suffix = SuffixTable()[(static_cast<uint32_t>(slot) ^ c) & 0x3fff];
  id.lo = (id.lo & ~uint64_t{0xfffff}) | suffix;
  return id;
}

absl::StatusOr<std::unique_ptr<RedisCluster>> RedisCluster::Create(RedisClientOptions options) {
  if (options.cluster_nodes.empty()) {
    return absl::InvalidArgumentError("Cluster mode needs at least one node");
  }
  std::unique_ptr<RedisCluster> cluster(new RedisCluster(std::move(options)));
  {
    absl::MutexLock lock(&cluster->mu_);
    for (const HostPort& hp : cluster->options_.cluster_nodes) {
      Node* node = cluster->NodeAt(hp);
      if (node == nullptr) return absl::InternalError(absl::StrCat("no client for ", hp.ToString()));
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

void RedisCluster::Call(std::vector<std::string> args, ReplyCallback done,
                        absl::Duration timeout) {
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
  op->deadline = Steady::now() + absl::ToChronoNanoseconds(
                                     timeout > absl::ZeroDuration() ? timeout
                                                                    : options_.call_timeout);
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

void RedisCluster::CallPipeline(std::vector<std::vector<std::string>> commands,
                                ReplyCallback done, absl::Duration timeout) {
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
         absl::UnavailableError(absl::StrCat("redis cluster: no master known for ",
                                             op->slot >= 0 ? absl::StrCat("slot ", op->slot)
                                                           : std::string("a keyless command"),
                                             ": nothing was done")));
    return;
  }
  const auto left = op->deadline - Steady::now();
  if (left <= Steady::duration::zero()) {
    Fail(std::move(op), absl::DeadlineExceededError(absl::StrCat(
                            "redis cluster: slot ", op->slot, " took longer than the call's timeout "
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
      reply = absl::UnavailableError(absl::StrCat("redis cluster master ", to.ToString(),
                                                  " (slot ", op->slot,
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
      Fail(std::move(op), absl::UnavailableError(absl::StrCat(
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
      Fail(std::move(op),
           absl::UnavailableError(absl::StrCat("redis cluster: slot ", op->slot,
                                               " is being migrated (", e,
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
    Fail(std::move(op), absl::UnavailableError(absl::StrCat("redis cluster master ", to.ToString(),
                                                            " (slot ", op->slot, "): ", e,
                                                            ": nothing was done")));
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
    op->deadline = Steady::now() + absl::ToChronoNanoseconds(
                                       timeout > absl::ZeroDuration() ? timeout
                                                                      : options_.call_timeout);
    op->done = [g, positions](absl::StatusOr<Reply> r) {
      ReplyCallback finish;
      absl::StatusOr<Reply> result;
      {
        absl::MutexLock lock(&g->mu);
        if (!r.ok()) {
          if (g->error.ok()) g->error = r.status();
        } else if (r->is_error() || r->type != Reply::Type::kArray ||
                   r->elements.size() != positions.size()) {
          if (g->error.ok()) g->error = absl::InternalError(absl::StrCat("MGET: ", r->DebugString()));
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
          done(absl::Status(r.status().code(),
                            absl::StrCat("redis cluster master ", to.ToString(),
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

void RedisCluster::RebuildMasters() {
  std::map<std::string, Node*> by_address;
  for (Node* n : owner_) {
    if (n != nullptr) by_address[AddressKey(n->address)] = n;
  }
  std::vector<Node*> next;
  for (auto& [k, n] : by_address) next.push_back(n);
  if (next != masters_) masters_epoch_.fetch_add(1, std::memory_order_acq_rel);
  masters_ = std::move(next);
}

std::vector<std::pair<HostPort, RedisClient*>> RedisCluster::Masters() const {
  absl::MutexLock lock(&mu_);
  std::vector<std::pair<HostPort, RedisClient*>> v;
  v.reserve(masters_.size());
  for (Node* n : masters_) v.emplace_back(n->address, n->client.get());
  return v;
}

HostPort RedisCluster::MasterOf(int slot) const {
  absl::MutexLock lock(&mu_);
  if (slot < 0 || slot >= kClusterSlots || owner_[slot] == nullptr) return HostPort{};
  return owner_[slot]->address;
}

int RedisCluster::connected() const {
  int up = 0;
  for (const auto& [address, client] : Masters()) {
    if (client->connected() > 0) ++up;
  }
  return up;
}

HostPort RedisCluster::primary() const {
  const auto masters = Masters();
  if (!masters.empty()) return masters.front().first;
  return options_.cluster_nodes.front();
}

int RedisCluster::failovers() const {
  absl::MutexLock lock(&mu_);
  return changes_;
}

bool RedisCluster::WaitConnected(absl::Duration timeout) const {
  // Polls: the clients signal nothing when they connect; bounded by `timeout`.
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    if (connected() > 0) return true;
    if (absl::Now() >= deadline) return false;
    absl::SleepFor(absl::Milliseconds(5));
  }
}

absl::Status RedisCluster::Refresh(absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  const int64_t target = refreshes_ + 2;  // one that started after now (one may be running)
  refresh_wanted_ = true;
  last_refresh_ = Steady::time_point{};
  auto done = [this, target]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return refreshes_ >= target || stopping_;
  };
  if (!mu_.AwaitWithTimeout(absl::Condition(&done), timeout)) {
    return absl::DeadlineExceededError("redis cluster: the slot map was not read in time");
  }
  return have_map_ ? absl::OkStatus()
                   : absl::UnavailableError("redis cluster: no node answered CLUSTER SLOTS");
}

absl::Status RedisCluster::DoRefresh() {
  std::vector<Node*> candidates;
  {
    absl::MutexLock lock(&mu_);
    candidates = masters_;
    for (Node* n : seeds_) {
      if (std::find(candidates.begin(), candidates.end(), n) == candidates.end()) {
        candidates.push_back(n);
      }
    }
  }
  absl::Status last = absl::UnavailableError("redis cluster: no node to ask for the slot map");
  for (Node* n : candidates) {
    if (n->client->connected() == 0) continue;
    absl::StatusOr<Reply> r = n->client->CallSync({"CLUSTER", "SLOTS"}, kSlotsTimeout);
    if (!r.ok()) {
      last = r.status();
      continue;
    }
    if (r->type != Reply::Type::kArray) {
      last = absl::InternalError(absl::StrCat("CLUSTER SLOTS: ", r->DebugString()));
      continue;
    }
    struct Range {
      int from, to;
      HostPort master;
    };
    std::vector<Range> ranges;
    bool ok = true;
    for (const Reply& e : r->elements) {
      if (e.type != Reply::Type::kArray || e.elements.size() < 3 ||
          e.elements[0].type != Reply::Type::kInteger ||
          e.elements[1].type != Reply::Type::kInteger ||
          e.elements[2].type != Reply::Type::kArray || e.elements[2].elements.size() < 2 ||
          e.elements[2].elements[1].type != Reply::Type::kInteger) {
        ok = false;
        break;
      }
      Range range{static_cast<int>(e.elements[0].integer), static_cast<int>(e.elements[1].integer),
                  HostPort{e.elements[2].elements[0].str,
                           static_cast<int>(e.elements[2].elements[1].integer)}};
      // An empty or unknown endpoint: the node answering.
      if (range.master.host.empty() || range.master.host == "?") {
        range.master.host = n->address.host;
      }
      if (range.from < 0 || range.to >= kClusterSlots || range.from > range.to) {
        ok = false;
        break;
      }
      ranges.push_back(std::move(range));
    }
    if (!ok) {
      last = absl::InternalError(absl::StrCat("CLUSTER SLOTS: ", r->DebugString()));
      continue;
    }
    absl::MutexLock lock(&mu_);
    if (stopping_) return absl::CancelledError("stopping");
    std::array<Node*, kClusterSlots> next{};
    for (const Range& range : ranges) {
      Node* m = NodeAt(range.master);
      for (int s = range.from; s <= range.to; ++s) next[s] = m;
    }
    const bool changed = next != owner_;
    if (changed && have_map_) ++changes_;
    owner_ = next;
    if (changed) RebuildMasters();
    have_map_ = true;
    return absl::OkStatus();
  }
  return last;
}

void RedisCluster::Work() {
  mu_.Lock();
  while (!stopping_) {
    const Steady::time_point now = Steady::now();
    if (!have_map_) refresh_wanted_ = true;  // keep asking, at kRefreshInterval
    if (refresh_wanted_ && now - last_refresh_ >= kRefreshInterval) {
      refresh_wanted_ = false;
      mu_.Unlock();
      DoRefresh().IgnoreError();  // callers see the old map's answers (or kUnavailable)
      mu_.Lock();
      last_refresh_ = Steady::now();
      ++refreshes_;
      continue;
    }
    if (!due_.empty() && due_.begin()->first <= now) {
      std::unique_ptr<Op> op = std::move(due_.begin()->second);
      due_.erase(due_.begin());
      mu_.Unlock();
      Send(std::move(op));
      mu_.Lock();
      continue;
    }
    Steady::time_point wake = now + std::chrono::milliseconds(100);
    if (!due_.empty()) wake = std::min(wake, due_.begin()->first);
    if (refresh_wanted_) wake = std::min(wake, last_refresh_ + kRefreshInterval);
    // Woken early by a resend due now, a refresh that may run, or the destructor.
    auto work = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      const Steady::time_point t = Steady::now();
      return stopping_ || (!due_.empty() && due_.begin()->first <= t) ||
             (refresh_wanted_ && t - last_refresh_ >= kRefreshInterval);
    };
    mu_.AwaitWithTimeout(absl::Condition(&work),
                         absl::FromChrono(std::max(wake - now, Steady::duration::zero())));
  }
  std::multimap<Steady::time_point, std::unique_ptr<Op>> rest;
  rest.swap(due_);
  mu_.Unlock();
  for (auto& [at, op] : rest) {
    Fail(std::move(op), absl::CancelledError("redis cluster client is shutting down"));
  }
}

}  // namespace redis
}  // namespace quotad
