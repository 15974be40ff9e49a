// RedisCluster's slot map: CLUSTER SLOTS, the masters, and the worker that refreshes the map and
// resends redirected calls (redis_cluster.h).

#include <algorithm>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "service/store/redis/redis_cluster.h"

namespace quotad {
namespace redis {
namespace {

// The map is asked again at most this often (a burst of MOVED asks once).
constexpr std::chrono::milliseconds kRefreshInterval{50};
constexpr absl::Duration kSlotsTimeout = absl::Milliseconds(500);

std::string AddressKey(const HostPort& hp) { return absl::StrCat(hp.host, ":", hp.port); }

}  // namespace

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
  // A master that is up first: the wait queue's subscriber (redis_backend_wait.cc) connects to
  // primary(), and PUBLISH reaches every node; stuck on a dead master it would never resubscribe.
  const auto masters = Masters();
  for (const auto& [address, client] : masters) {
    if (client->connected() > 0) return address;
  }
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
    const int up = connected();
    size_t masters = 0;
    {
      absl::MutexLock lock(&mu_);
      masters = masters_.size();
    }
    if (up > 0 && static_cast<size_t>(up) == masters) return true;
    if (absl::Now() >= deadline) return up > 0;
    absl::SleepFor(absl::Milliseconds(5));
  }
}

absl::Status RedisCluster::Refresh(absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  const int64_t target = refreshes_ + 2;  // one that started after now (one may be running)
  refresh_wanted_ = true;
  last_refresh_ = Steady::time_point{};
  auto done = [this, target]()
                  ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return refreshes_ >= target || stopping_; };
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
