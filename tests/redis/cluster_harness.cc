#include "tests/redis/cluster_harness.h"

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

absl::StatusOr<std::unique_ptr<ClusterGroup>> ClusterGroup::Start(ClusterGroupOptions options) {
  std::unique_ptr<ClusterGroup> g(new ClusterGroup(std::move(options)));
  const int n = g->options_.masters;
  for (int i = 0; i < n; ++i) {
    absl::Status last;
    for (int attempt = 0; attempt < 3; ++attempt) {
      absl::StatusOr<int> bus = PickFreePort();
      if (!bus.ok()) return bus.status();
      RedisServerOptions o;
      o.appendonly = false;  // the cluster tests are about routing, not persistence
      o.extra_args = {"--cluster-enabled",
                      "yes",
                      "--cluster-config-file",
                      "nodes.conf",
                      "--cluster-port",
                      absl::StrCat(*bus),
                      "--cluster-node-timeout",
                      absl::StrCat(absl::ToInt64Milliseconds(g->options_.node_timeout)),
                      "--cluster-require-full-coverage",
                      "no"};
      absl::StatusOr<std::unique_ptr<RedisServer>> s = RedisServer::Start(o);
      if (s.ok()) {
        g->nodes_.push_back(*std::move(s));
        g->bus_ports_.push_back(*bus);
        last = absl::OkStatus();
        break;
      }
      last = s.status();  // e.g. the bus port was taken meanwhile
    }
    if (!last.ok()) return last;
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
  if (!Eventually([&] { return g->Ready(); }, g->options_.start_timeout, absl::Milliseconds(20))) {
    return absl::DeadlineExceededError("the cluster's nodes did not all agree in time");
  }
  return g;
}

bool ClusterGroup::Ready() const {
  for (const auto& node : nodes_) {
    absl::StatusOr<std::string> info = node->Command({"CLUSTER", "INFO"});
    if (!info.ok() || !absl::StrContains(*info, "cluster_state:ok") ||
        !absl::StrContains(*info, absl::StrCat("cluster_known_nodes:", nodes_.size(), "\r")) ||
        !absl::StrContains(*info, "cluster_slots_ok:16384")) {
      return false;
    }
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

}  // namespace testing
}  // namespace quotad
