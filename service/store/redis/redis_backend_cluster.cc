// RedisBackend's health in Cluster mode: quotad's function library on every master, and with
// WAIT, the masters short of replicas (their credentials refused at once: ShortMasterOf);
// EnoughReplicas is also the standalone and Sentinel check of the primary.

#include <string>
#include <utility>

#include "service/store/redis/redis_backend.h"
#include "service/store/redis/redis_cluster.h"

namespace quotad {

bool RedisBackend::EnoughReplicas(redis::RedisClient& primary) const {
  // ROLE on a primary: ["master", offset, [[ip, port, offset], ...]], its replicas connected.
  absl::StatusOr<redis::Reply> role = primary.CallSync({"ROLE"});
  return role.ok() && role->type == redis::Reply::Type::kArray && role->elements.size() >= 3 &&
         role->elements[2].type == redis::Reply::Type::kArray &&
         static_cast<int>(role->elements[2].elements.size()) >= options_.wait_replicas;
}

bool RedisBackend::CheckClusterHealth() {
  absl::MutexLock lock(&cluster_mu_);
  // A credential refused as its short master's is sent no call, so no MOVED tells the map that
  // its slot moved to a master that can grant: while any master is short, read the map anew.
  if (options_.wait_replicas > 0 && any_short_.load(std::memory_order_acquire)) {
    cluster_->Refresh(options_.call_timeout).IgnoreError();  // the old map serves meanwhile
  }
  // A call found a master without the library (restarted empty, or new): check them all.
  if (!library_loaded_.load(std::memory_order_acquire)) cluster_loaded_.clear();
  int up = 0;
  bool all = true;
  absl::flat_hash_set<std::string> short_masters;
  for (const auto& [address, client] : cluster_->Masters()) {
    const std::string name = address.ToString();
    if (client->connected() == 0) {
      cluster_loaded_.erase(name);  // it may come back empty: load it again then
      continue;
    }
    ++up;
    // With WAIT, a master short of replicas can grant nothing: its credentials are refused at
    // once (ShortMasterOf) instead of each waiting out WAIT's timeout; the others serve. A
    // master that is down is not asked: its slots' calls fail on their own.
    if (options_.wait_replicas > 0 && !EnoughReplicas(*client)) short_masters.insert(name);
    if (cluster_loaded_.contains(name)) continue;
    redis::RedisFunctions functions(client, [this] { return clock_->Now(); });
    if (functions.EnsureLoaded(options_.call_timeout * 2).ok()) {
      cluster_loaded_.insert(name);
    } else {
      all = false;
    }
  }
  if (options_.wait_replicas > 0) {
    // NOT_SERVING only when no master that is up can grant.
    replicas_enough_.store(up == 0 || static_cast<int>(short_masters.size()) < up,
                           std::memory_order_release);
    absl::MutexLock short_lock(&short_mu_);
    any_short_.store(!short_masters.empty(), std::memory_order_release);
    short_masters_ = std::move(short_masters);
  }
  // A master that is down fails its own slots' calls (kUnavailable); the others serve.
  library_loaded_.store(up > 0 && all, std::memory_order_release);
  return serving();
}

std::string RedisBackend::ShortMasterOf(absl::string_view credential) const {
  if (cluster_ == nullptr || !any_short_.load(std::memory_order_acquire)) return "";
  std::string master = cluster_->MasterOf(redis::KeySlot(redis::StateKey(credential))).ToString();
  absl::MutexLock lock(&short_mu_);
  return short_masters_.contains(master) ? master : "";
}

}  // namespace quotad
