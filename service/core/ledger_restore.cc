// Ledger::Restore: reads the journal back (reservations as charged, leases as held, cooldowns and
// outside estimates as learnt) into a new ledger, before it serves; Ledger::CreateRestored reads
// it while the policy compiles.

#include <algorithm>
#include <memory>
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
  // Sliding blocks of one counter in reserve-time order, so each knows the next one's time.
  std::vector<Reservation>& rs = state.reservations;
  auto in_order = [](const Reservation& a, const Reservation& b) {
    return std::tie(a.key.credential, a.key.limit, a.key.scope, a.window_start_ns) <
           std::tie(b.key.credential, b.key.limit, b.key.scope, b.window_start_ns);
  };
  // A store that reads in key order (SQLite by primary key) spares the sort at start-up.
  if (!std::is_sorted(rs.begin(), rs.end(), in_order)) std::sort(rs.begin(), rs.end(), in_order);
  for (size_t i = 0; i < rs.size(); ++i) {
    const Reservation& r = rs[i];
    Credential* cred = FindCredential(r.key.credential);
    if (cred == nullptr) continue;
    absl::MutexLock lock(&cred->mu);
    const CompiledCredential& cc = *cred->compiled;
    auto it = cc.rule_index.find(r.key.limit);
    if (it == cc.rule_index.end()) continue;
    const int64_t next_ns =
        (i + 1 < rs.size() && rs[i + 1].key == r.key) ? rs[i + 1].window_start_ns : now;
    Counter* counter = cred->CounterFor(it->second, r.key.scope, true);
    counter->Restore(cc.rules[it->second], RuleTime(cc.rules[it->second], now), r.window_start_ns,
                     r.until_ns, r.units, next_ns);
    // What a restored high-water mark stands for may include the upstream's count.
    counter->NoRefundsBefore(now);
  }
  // A scoped limit's records of the "" scope may be those of the limit before a reload made it
  // scoped: every new scope starts with what they count (as the reload itself does).
  for (Credential* cred : table()->in_order) {
    absl::MutexLock lock(&cred->mu);
    const CompiledCredential& cc = *cred->compiled;
    for (size_t r = 0; r < cc.rules.size(); ++r) {
      if (!cc.rules[r].spec.scoped) continue;
      auto it = cred->scoped[r].find("");
      if (it == cred->scoped[r].end()) continue;
      const Rule& rule = cc.rules[r];
      const int64_t at = RuleTime(rule, now);
      const int64_t used = it->second.View(rule, at).used;
      if (used <= 0 || rule.spec.kind == LimitKind::kConcurrency) continue;
      cred->scope_seeds.resize(cc.rules.size());
      cred->scope_seeds[r] = {std::max(cred->scope_seeds[r].units, used), at};
      // Scopes the journal named (perhaps only with records of past windows) count them too.
      for (auto& [scope, counter] : cred->scoped[r]) {
        const int64_t own = counter.View(rule, at).used;
        if (scope.empty() || own >= used) continue;
        int64_t unused;
        counter.Fits(rule, at, 0, &unused);
        counter.Charge(rule, at, used - own, 0, 0);
      }
    }
  }
  for (const JournalLease& jl : state.leases) {
    if (jl.expiry_ns <= now) continue;
    absl::StatusOr<LeaseId> id = LeaseId::Parse(jl.id);
    Credential* cred = FindCredential(jl.credential);
    if (!id.ok() || cred == nullptr) continue;
    absl::MutexLock lock(&cred->mu);
    const CompiledCredential& cc = *cred->compiled;
    auto fit = cc.feature_index.find(jl.feature);
    if (fit == cc.feature_index.end()) continue;
    const CompiledFeature& feature = cc.features[fit->second];
    LeaseRecord rec;
    rec.credential = cred;
    rec.compiled = cred->versions.back().compiled;  // the version in force: cc
    rec.version_seq = cred->versions.back().seq;
    rec.feature = fit->second;
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
        cred->CounterFor(r, jl.scope, true)->RestoreHeld(jl.expiry_ns, id->lo, jl.cost, now);
      }
    }
    if (feature.has_concurrency && !rec.journaled_with_slots) {
      // Granted refund-only, it holds a slot under this configuration: write it so, or a
      // renewal (which renews a row) and a later restart would lose the slot.
      if (absl::Status s = ledger_internal::JournalWithSlots(*options_.journal, *id, &rec,
                                                             rec.expiry_ns);
          !s.ok()) {
        return s;
      }
    }
    LeaseShard& shard = leases_->ShardFor(*id);
    absl::MutexLock shard_lock(&shard.mu);
    shard.leases.insert_or_assign(*id, std::move(rec));
  }
  for (const JournalCooldown& jc : state.cooldowns) {
    if (jc.until_ns <= now) continue;
    Credential* cred = FindCredential(jc.credential);
    if (cred == nullptr) continue;
    absl::MutexLock lock(&cred->mu);
    if (cred->compiled->FindFeature(jc.feature) < 0) continue;
    Credential::Cooldown& c = cred->cooldowns[jc.feature];
    c.until_ns = std::max(c.until_ns, jc.until_ns);
  }
  for (const JournalOutside& jo : state.outside) {
    if (jo.until_ns <= now) continue;
    Credential* cred = FindCredential(jo.credential);
    if (cred == nullptr) continue;
    absl::MutexLock lock(&cred->mu);
    if (cred->compiled->rule_index.find(jo.limit) == cred->compiled->rule_index.end()) continue;
    cred->outside.insert_or_assign(
        jo.limit, OutsideEstimate(static_cast<double>(jo.outside_milli) / 1000.0, jo.at_ns,
                                  jo.cooldown_until_ns, static_cast<int>(jo.consecutive)));
  }
  return absl::OkStatus();
}

}  // namespace quotad
