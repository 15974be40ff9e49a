// Ledger::Restore: reads the journal back (reservations as charged, leases as held, cooldowns and
// outside estimates as learnt) into a new ledger, before it serves; Ledger::CreateRestored reads
// it while the policy compiles. What names a credential, limit or feature not configured then
// is kept (Credential::unplaced) and restored by the reload that configures it again.

#include <algorithm>
#include <memory>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "service/core/ledger.h"
#include "service/core/ledger_internal.h"

namespace quotad {

using ledger_internal::Answer;
using ledger_internal::Credential;
using ledger_internal::LeaseRecord;
using ledger_internal::LeaseShard;
using ledger_internal::SatAdd;
using ledger_internal::Waiter;

absl::StatusOr<std::unique_ptr<Ledger>> Ledger::CreateRestored(const Policy& policy, Clock* clock,
                                                               LedgerOptions options) {
  if (options.journal == nullptr) return Create(policy, clock, options);
  // The new ledger writes nothing to the journal while it compiles (a first Reload carries no
  // counters), so the read and the compile share nothing.
  absl::StatusOr<JournalState> state;
  std::thread loader([&state, journal = options.journal] { state = journal->Load(); });
  absl::StatusOr<std::unique_ptr<Ledger>> ledger = Create(policy, clock, options);
  loader.join();
  if (!ledger.ok()) return ledger.status();
  if (!state.ok()) return state.status();
  if (absl::Status s = (*ledger)->RestoreFrom(std::move(*state)); !s.ok()) return s;
  return ledger;
}

absl::Status Ledger::Restore() {
  if (options_.journal == nullptr) return absl::OkStatus();
  absl::StatusOr<JournalState> state = options_.journal->Load();
  if (!state.ok()) return state.status();
  return RestoreFrom(std::move(*state));
}

absl::Status Ledger::RestoreFrom(JournalState state) {
  const int64_t now = NowNs();
  // Records of a credential not configured now wait for a reload that brings it back, on a
  // credential that no table names until then (as a dropped credential's do in a running
  // ledger).
  absl::MutexLock reload_lock(&reload_mu_);
  auto find_or_keep = [&](const std::string& name) ABSL_EXCLUSIVE_LOCKS_REQUIRED(reload_mu_) {
    if (Credential* cred = FindCredential(name); cred != nullptr) return cred;
    auto found = credentials_.find(name);
    if (found == credentials_.end()) {
      auto kept = std::make_unique<Credential>(name);
      const absl::string_view key = kept->name;
      found = credentials_.emplace(key, std::move(kept)).first;
    }
    return found->second.get();
  };
  // Sliding blocks of one counter in reserve-time order, so each knows the next one's time.
  std::vector<Reservation>& rs = state.reservations;
  auto in_order = [](const Reservation& a, const Reservation& b) {
    return std::tie(a.key.credential, a.key.limit, a.key.scope, a.window_start_ns) <
           std::tie(b.key.credential, b.key.limit, b.key.scope, b.window_start_ns);
  };
  // A store that reads in key order (SQLite by primary key) spares the sort at start-up.
  if (!std::is_sorted(rs.begin(), rs.end(), in_order)) std::sort(rs.begin(), rs.end(), in_order);
  for (size_t i = 0, next = 0; i < rs.size(); i = next) {
    // The records of one limit of one credential, every scope: rs[i, next).
    next = i + 1;
    while (next < rs.size() && rs[next].key.credential == rs[i].key.credential &&
           rs[next].key.limit == rs[i].key.limit) {
      ++next;
    }
    Credential* cred = find_or_keep(rs[i].key.credential);
    absl::MutexLock lock(&cred->mu);
    int r = -1;
    if (cred->compiled != nullptr) {
      auto it = cred->compiled->rule_index.find(rs[i].key.limit);
      if (it != cred->compiled->rule_index.end()) r = it->second;
    }
    if (r < 0) {
      std::vector<Reservation>& kept = cred->unplaced.reservations[rs[i].key.limit];
      for (size_t k = i; k < next; ++k) {
        if (rs[k].until_ns > now) kept.push_back(std::move(rs[k]));
      }
      if (kept.empty()) cred->unplaced.reservations.erase(rs[i].key.limit);
      continue;
    }
    RestoreCounters(*cred, r, &rs[i], next - i, now);
  }
  for (Credential* cred : table()->in_order) {
    absl::MutexLock lock(&cred->mu);
    for (size_t r = 0; r < cred->compiled->rules.size(); ++r) {
      SeedScopesFromUnscoped(*cred, static_cast<int>(r), now);
    }
  }
  for (JournalLease& jl : state.leases) {
    if (jl.expiry_ns <= now) continue;
    absl::StatusOr<LeaseId> id = LeaseId::Parse(jl.id);
    if (!id.ok()) continue;
    Credential* cred = find_or_keep(jl.credential);
    absl::MutexLock lock(&cred->mu);
    if (cred->compiled == nullptr || cred->compiled->FindFeature(jl.feature) < 0) {
      cred->unplaced.leases.push_back(std::move(jl));
      continue;
    }
    if (absl::Status s = RestoreLease(*cred, jl, *id, now); !s.ok()) return s;
  }
  for (JournalCooldown& jc : state.cooldowns) {
    if (jc.until_ns <= now) continue;
    Credential* cred = find_or_keep(jc.credential);
    absl::MutexLock lock(&cred->mu);
    if (cred->compiled == nullptr || cred->compiled->FindFeature(jc.feature) < 0) {
      cred->unplaced.cooldowns.push_back(std::move(jc));
      continue;
    }
    Credential::Cooldown& c = cred->cooldowns[jc.feature];
    c.until_ns = std::max(c.until_ns, jc.until_ns);
  }
  for (JournalOutside& jo : state.outside) {
    if (jo.until_ns <= now) continue;
    Credential* cred = find_or_keep(jo.credential);
    absl::MutexLock lock(&cred->mu);
    if (cred->compiled == nullptr ||
        cred->compiled->rule_index.find(jo.limit) == cred->compiled->rule_index.end()) {
      cred->unplaced.outside.push_back(std::move(jo));
      continue;
    }
    cred->outside.insert_or_assign(
        jo.limit, OutsideEstimate(static_cast<double>(jo.outside_milli) / 1000.0, jo.at_ns,
                                  jo.cooldown_until_ns, static_cast<int>(jo.consecutive)));
  }
  return absl::OkStatus();
}

void Ledger::RestoreCounters(Credential& cred, int r, const Reservation* rs, size_t n,
                             int64_t now) {
  cred.mu.AssertHeld();
  const Rule& rule = cred.compiled->rules[r];
  for (size_t i = 0; i < n; ++i) {
    const Reservation& res = rs[i];
    const int64_t next_ns =
        (i + 1 < n && rs[i + 1].key == res.key) ? rs[i + 1].window_start_ns : now;
    Counter* counter = cred.CounterFor(r, res.key.scope, true);
    counter->Restore(rule, RuleTime(rule, now), res.window_start_ns, res.until_ns, res.units,
                     next_ns);
    // What a restored high-water mark stands for may include the upstream's count.
    counter->NoRefundsBefore(now);
  }
}

void Ledger::SeedScopesFromUnscoped(Credential& cred, int r, int64_t now) {
  cred.mu.AssertHeld();
  const CompiledCredential& cc = *cred.compiled;
  // A scoped limit's records of the "" scope may be those of the limit before a reload made it
  // scoped: every new scope starts with what they count (as the reload itself does).
  if (!cc.rules[r].spec.scoped) return;
  auto it = cred.scoped[r].find("");
  if (it == cred.scoped[r].end()) return;
  const Rule& rule = cc.rules[r];
  const int64_t at = RuleTime(rule, now);
  const int64_t used = it->second.View(rule, at).used;
  if (used <= 0 || rule.spec.kind == LimitKind::kConcurrency) return;
  cred.scope_seeds.resize(cc.rules.size());
  cred.scope_seeds[r] = {std::max(cred.scope_seeds[r].units, used), at};
  // Scopes the journal named (perhaps only with records of past windows) count them too.
  for (auto& [scope, counter] : cred.scoped[r]) {
    const int64_t own = counter.View(rule, at).used;
    if (scope.empty() || own >= used) continue;
    int64_t unused;
    counter.Fits(rule, at, 0, &unused);
    counter.Charge(rule, at, used - own, 0, 0);
  }
}

absl::Status Ledger::RestoreLease(Credential& cred, const JournalLease& jl, const LeaseId& id,
                                  int64_t now) {
  cred.mu.AssertHeld();
  const CompiledCredential& cc = *cred.compiled;
  const int f = cc.FindFeature(jl.feature);
  const CompiledFeature& feature = cc.features[f];
  LeaseRecord rec;
  rec.credential = &cred;
  rec.compiled = cred.versions.back().compiled;  // the version in force: cc
  rec.version_seq = cred.versions.back().seq;
  rec.feature = f;
  rec.scope = jl.scope;
  rec.holder = jl.holder;
  rec.cost = jl.cost;
  rec.granted_ns = jl.granted_ns;
  rec.expiry_ns = jl.expiry_ns;
  rec.journaled_with_slots = jl.holds_slots;
  for (size_t k = 0; k < feature.rules.size(); ++k) {
    rec.tokens.push_back(k < jl.tokens.size() ? jl.tokens[k] : 0);
    const int r = feature.rules[k];
    if (cc.rules[r].spec.kind == LimitKind::kConcurrency) {
      cred.CounterFor(r, jl.scope, true)->RestoreHeld(jl.expiry_ns, id.lo, jl.cost, now);
    }
  }
  if (feature.has_concurrency && !rec.journaled_with_slots) {
    // Granted refund-only, it holds a slot under this configuration: write it so, or a
    // renewal (which renews a row) and a later restart would lose the slot.
    if (absl::Status s =
            ledger_internal::JournalWithSlots(*options_.journal, id, &rec, rec.expiry_ns);
        !s.ok()) {
      return s;
    }
  }
  LeaseShard& shard = leases_->ShardFor(id);
  absl::MutexLock shard_lock(&shard.mu);
  shard.leases.insert_or_assign(id, std::move(rec));
  return absl::OkStatus();
}

void Ledger::RestoreUnplaced(Credential& cred, int64_t now) {
  cred.mu.AssertHeld();
  Credential::Unplaced& u = cred.unplaced;
  if (u.empty()) return;
  const CompiledCredential& cc = *cred.compiled;
  // Records that ended meanwhile go (as Compact drops them from the journal).
  for (auto it = u.reservations.begin(); it != u.reservations.end();) {
    std::vector<Reservation>& rs = it->second;
    rs.erase(std::remove_if(rs.begin(), rs.end(),
                            [now](const Reservation& r) { return r.until_ns <= now; }),
             rs.end());
    auto rule = cc.rule_index.find(it->first);
    if (!rs.empty() && rule != cc.rule_index.end()) {
      RestoreCounters(cred, rule->second, rs.data(), rs.size(), now);
      SeedScopesFromUnscoped(cred, rule->second, now);
      rs.clear();
    }
    if (rs.empty()) {
      u.reservations.erase(it++);
    } else {
      ++it;
    }
  }
  std::vector<JournalLease> leases;
  for (JournalLease& jl : u.leases) {
    if (jl.expiry_ns <= now) continue;
    absl::StatusOr<LeaseId> id = LeaseId::Parse(jl.id);  // parsed at restore: valid
    if (cc.FindFeature(jl.feature) < 0 || !id.ok()) {
      leases.push_back(std::move(jl));
      continue;
    }
    // On a journal failure it holds its slots here all the same; its renewal writes it.
    RestoreLease(cred, jl, *id, now).IgnoreError();
  }
  u.leases = std::move(leases);
  std::vector<JournalCooldown> cooldowns;
  for (JournalCooldown& jc : u.cooldowns) {
    if (jc.until_ns <= now) continue;
    if (cc.FindFeature(jc.feature) < 0) {
      cooldowns.push_back(std::move(jc));
      continue;
    }
    Credential::Cooldown& c = cred.cooldowns[jc.feature];
    c.until_ns = std::max(c.until_ns, jc.until_ns);
  }
  u.cooldowns = std::move(cooldowns);
  std::vector<JournalOutside> outside;
  for (JournalOutside& jo : u.outside) {
    if (jo.until_ns <= now) continue;
    if (!cc.rule_index.contains(jo.limit)) {
      outside.push_back(std::move(jo));
      continue;
    }
    // What the running ledger learnt since about this limit is newer.
    cred.outside.try_emplace(
        jo.limit, OutsideEstimate(static_cast<double>(jo.outside_milli) / 1000.0, jo.at_ns,
                                  jo.cooldown_until_ns, static_cast<int>(jo.consecutive)));
  }
  u.outside = std::move(outside);
}

}  // namespace quotad
