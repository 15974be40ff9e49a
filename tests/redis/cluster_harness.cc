#include "tests/redis/cluster_harness.h"

#include <hiredis/hiredis.h>
#include <signal.h>

#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "tests/support/eventually.h"

namespace quotad {
namespace testing {

constexpr int kSlots = 16384;

namespace {

// A reply as RedisServer::Command gives it (redis_harness.cc).
std::string Text(const redisReply* r) {
  switch (r->type) {
    case REDIS_REPLY_INTEGER:
      return absl::StrCat(r->integer);
    case REDIS_REPLY_NIL:
      return "(nil)";
    case REDIS_REPLY_ERROR:
      return absl::StrCat("ERR:", std::string(r->str, r->len));
    case REDIS_REPLY_ARRAY: {
      std::vector<std::string> parts;
      for (size_t i = 0; i < r->elements; ++i) parts.push_back(Text(r->element[i]));
      return absl::StrJoin(parts, " ");
    }
    default:
      return std::string(r->str, r->len);
  }
}

}  // namespace

absl::StatusOr<std::string> ClusterGroup::Run(const RedisServer& node,
                                              const std::vector<std::string>& args) {
  absl::StatusOr<std::string> r = node.Command(args);
  if (!r.ok()) return r.status();
  if (absl::StartsWith(*r, "ERR:")) {
    return absl::InternalError(
        absl::StrCat(absl::StrJoin(args, " "), " on port ", node.port(), ": ", *r));
  }
  return r;
}

std::vector<std::string> ClusterGroup::NodeArgs(int bus) const {
  std::vector<std::string> args = {"--cluster-enabled",
                                   "yes",
                                   "--cluster-config-file",
                                   "nodes.conf",
                                   "--cluster-port",
                                   absl::StrCat(bus),
                                   "--cluster-node-timeout",
                                   absl::StrCat(absl::ToInt64Milliseconds(options_.node_timeout)),
                                   "--cluster-require-full-coverage",
                                   "no"};
  args.insert(args.end(), options_.node_args.begin(), options_.node_args.end());
  return args;
}

absl::StatusOr<std::unique_ptr<RedisServer>> ClusterGroup::StartNode(int* bus) const {
  absl::Status last;
  for (int attempt = 0; attempt < 3; ++attempt) {
    absl::StatusOr<int> port = PickFreePort();
    if (!port.ok()) return port.status();
    RedisServerOptions o;
    o.appendonly = false;  // the cluster tests are about routing, not persistence
    o.extra_args = NodeArgs(*port);
    absl::StatusOr<std::unique_ptr<RedisServer>> s = RedisServer::Start(o);
    if (s.ok()) {
      *bus = *port;
      return s;
    }
    last = s.status();  // e.g. the bus port was taken meanwhile
  }
  return last;
}

absl::StatusOr<std::unique_ptr<ClusterGroup>> ClusterGroup::Start(ClusterGroupOptions options) {
  std::unique_ptr<ClusterGroup> g(new ClusterGroup(std::move(options)));
  if (g->options_.replicas_per_master < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "replicas_per_master ", g->options_.replicas_per_master, " must be 0 or more"));
  }
  const int n = g->options_.masters;
  for (int i = 0; i < n * (1 + g->options_.replicas_per_master); ++i) {
    int bus = 0;
    absl::StatusOr<std::unique_ptr<RedisServer>> s = g->StartNode(&bus);
    if (!s.ok()) return s.status();
    if (i < n) {
      g->nodes_.push_back(*std::move(s));
      g->bus_ports_.push_back(bus);
    } else {
      g->replicas_.push_back(*std::move(s));
      g->replica_bus_ports_.push_back(bus);
    }
  }
  g->owner_.resize(kSlots);
  for (int i = 0; i < n; ++i) {
    RedisServer& node = *g->nodes_[i];
    absl::StatusOr<std::string> id = Run(node, {"CLUSTER", "MYID"});
    if (!id.ok()) return id.status();
    g->ids_.push_back(*id);
    const int from = i * kSlots / n, to = (i + 1) * kSlots / n - 1;
    for (int s = from; s <= to; ++s) g->owner_[s] = i;
    for (const auto& cmd : std::vector<std::vector<std::string>>{
             {"CLUSTER", "SET-CONFIG-EPOCH", absl::StrCat(i + 1)},
             {"CLUSTER", "ADDSLOTSRANGE", absl::StrCat(from), absl::StrCat(to)}}) {
      if (absl::StatusOr<std::string> r = Run(node, cmd); !r.ok()) return r.status();
    }
  }
  for (int i = 1; i < n; ++i) {
    absl::StatusOr<std::string> r =
        Run(*g->nodes_[0], {"CLUSTER", "MEET", "127.0.0.1", absl::StrCat(g->nodes_[i]->port()),
                            absl::StrCat(g->bus_ports_[i])});
    if (!r.ok()) return r.status();
  }
  for (size_t r = 0; r < g->replicas_.size(); ++r) {
    absl::StatusOr<std::string> met =
        Run(*g->nodes_[0], {"CLUSTER", "MEET", "127.0.0.1", absl::StrCat(g->replicas_[r]->port()),
                            absl::StrCat(g->replica_bus_ports_[r])});
    if (!met.ok()) return met.status();
  }
  // A replica can follow its master once it has heard of it (gossip after MEET).
  for (size_t r = 0; r < g->replicas_.size(); ++r) {
    const std::string& master = g->ids_[r / g->options_.replicas_per_master];
    absl::Status last;
    if (!Eventually(
            [&] {
              absl::StatusOr<std::string> ok =
                  Run(*g->replicas_[r], {"CLUSTER", "REPLICATE", master});
              last = ok.status();
              return ok.ok();
            },
            g->options_.start_timeout, absl::Milliseconds(20))) {
      return absl::DeadlineExceededError(absl::StrCat("replica on port ", g->replicas_[r]->port(),
                                                      " could not follow ", master, ": ",
                                                      last.message()));
    }
  }
  if (!Eventually([&] { return g->Ready(); }, g->options_.start_timeout, absl::Milliseconds(20))) {
    return absl::DeadlineExceededError("the cluster's nodes did not all agree in time");
  }
  return g;
}

int ClusterGroup::OnlineReplicas(int i) const {
  absl::StatusOr<std::string> info = nodes_[i]->Command({"INFO", "replication"});
  if (!info.ok() || absl::StartsWith(*info, "ERR:")) return -1;
  int online = 0;
  for (absl::string_view line : absl::StrSplit(*info, '\n')) {
    if (absl::StartsWith(line, "slave") && absl::StrContains(line, "state=online")) ++online;
  }
  return online;
}

absl::StatusOr<std::string> ClusterGroup::ReadOnReplica(int i, int k,
                                                        const std::vector<std::string>& args) {
  const RedisServer& node = replica(i, k);
  redisContext* c = redisConnectWithTimeout(node.host().c_str(), node.port(), timeval{1, 0});
  if (c == nullptr || c->err != 0) {
    const std::string err = c != nullptr ? c->errstr : "out of memory";
    if (c != nullptr) redisFree(c);
    return absl::UnavailableError(absl::StrCat("replica on port ", node.port(), ": ", err));
  }
  redisSetTimeout(c, timeval{5, 0});
  absl::StatusOr<std::string> out = absl::UnavailableError("no reply");
  const std::vector<std::string> readonly = {"READONLY"};
  for (const std::vector<std::string>* cmd : {&readonly, &args}) {
    std::vector<const char*> argv;
    std::vector<size_t> lens;
    for (const std::string& a : *cmd) {
      argv.push_back(a.data());
      lens.push_back(a.size());
    }
    auto* reply = static_cast<redisReply*>(
        redisCommandArgv(c, static_cast<int>(argv.size()), argv.data(), lens.data()));
    if (reply == nullptr) {
      out = absl::UnavailableError(absl::StrCat("replica on port ", node.port(), ": ", c->errstr));
      break;
    }
    out = Text(reply);
    freeReplyObject(reply);
  }
  redisFree(c);
  return out;
}

bool ClusterGroup::Ready() const {
  const size_t known = nodes_.size() + replicas_.size();
  for (const auto* group : {&nodes_, &replicas_}) {
    for (const auto& node : *group) {
      absl::StatusOr<std::string> info = node->Command({"CLUSTER", "INFO"});
      if (!info.ok() || !absl::StrContains(*info, "cluster_state:ok") ||
          !absl::StrContains(*info, absl::StrCat("cluster_known_nodes:", known, "\r")) ||
          !absl::StrContains(*info, "cluster_slots_ok:16384")) {
        return false;
      }
    }
  }
  for (int i = 0; i < size(); ++i) {
    if (OnlineReplicas(i) < options_.replicas_per_master) return false;
  }
  return true;
}

std::string ClusterGroup::url() const {
  std::vector<std::string> parts;
  for (const auto& node : nodes_) parts.push_back(absl::StrCat("127.0.0.1:", node->port()));
  return absl::StrCat("redis-cluster://", absl::StrJoin(parts, ","));
}

absl::StatusOr<int64_t> ClusterGroup::KeyCount(int i) const {
  absl::StatusOr<std::string> r = Run(*nodes_[i], {"DBSIZE"});
  if (!r.ok()) return r.status();
  int64_t n = 0;
  if (!absl::SimpleAtoi(*r, &n)) return absl::InternalError(absl::StrCat("DBSIZE: ", *r));
  return n;
}

absl::Status ClusterGroup::MigrateSlot(int slot, int to, int batch,
                                       const std::function<void(int moved)>& between) {
  const int from = owner_[slot];
  if (from == to) return absl::InvalidArgumentError("the slot is there already");
  RedisServer& src = *nodes_[from];
  RedisServer& dst = *nodes_[to];
  const std::string s = absl::StrCat(slot);
  if (auto r = Run(dst, {"CLUSTER", "SETSLOT", s, "IMPORTING", ids_[from]}); !r.ok()) {
    return r.status();
  }
  if (auto r = Run(src, {"CLUSTER", "SETSLOT", s, "MIGRATING", ids_[to]}); !r.ok()) {
    return r.status();
  }
  int moved = 0;
  while (true) {
    absl::StatusOr<std::string> keys =
        Run(src, {"CLUSTER", "GETKEYSINSLOT", s, absl::StrCat(batch)});
    if (!keys.ok()) return keys.status();
    if (keys->empty()) break;
    std::vector<std::string> migrate = {"MIGRATE", "127.0.0.1", absl::StrCat(dst.port()), "", "0",
                                        "5000",    "KEYS"};
    int count = 0;
    for (absl::string_view k : absl::StrSplit(*keys, ' ', absl::SkipEmpty())) {
      migrate.emplace_back(k);
      ++count;
    }
    if (auto r = Run(src, migrate); !r.ok()) return r.status();
    moved += count;
    if (between) between(moved);
  }
  // The new owner first, then the old one (as redis-cli does), then the rest.
  std::vector<int> order = {to, from};
  for (int i = 0; i < size(); ++i) {
    if (i != to && i != from) order.push_back(i);
  }
  for (int i : order) {
    if (!nodes_[i]->running()) continue;
    if (auto r = Run(*nodes_[i], {"CLUSTER", "SETSLOT", s, "NODE", ids_[to]}); !r.ok()) {
      return r.status();
    }
  }
  owner_[slot] = to;
  return absl::OkStatus();
}

absl::Status ClusterGroup::Kill(int i) { return nodes_[i]->Stop(SIGKILL); }

absl::Status ClusterGroup::RestartMaster(int i, std::vector<std::string> extra_args) {
  std::vector<std::string> args = NodeArgs(bus_ports_[i]);
  args.insert(args.end(), extra_args.begin(), extra_args.end());
  return nodes_[i]->Restart(std::move(args));
}

}  // namespace testing
}  // namespace quotad
