// Ledger::Reload (a new policy: counters carried, rebuilt, retired or remembered by limit name)
// and Ledger::Reset (an operator zeroes a credential).

#include <algorithm>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "service/core/ledger.h"
#include "service/core/ledger_internal.h"

namespace quotad {

using ledger_internal::Answer;
using ledger_internal::Credential;
using ledger_internal::LeaseRecord;
using ledger_internal::LeaseShard;
using ledger_internal::SatAdd;
using ledger_internal::Waiter;

absl::Status Ledger::Reset(absl::string_view credential) {
  Credential* cred = FindCredential(credential);
  if (cred == nullptr) {
    return absl::NotFoundError(absl::StrCat("credential '", credential, "' is not configured"));
  }
  {
    absl::MutexLock lock(&cred->mu);
    const CompiledCredential& cc = *cred->compiled;
    for (size_t r = 0; r < cc.rules.size(); ++r) {
      cred->counters[r].Clear(cc.rules[r]);
      for (auto& [scope, counter] : cred->scoped[r]) counter.Clear(cc.rules[r]);
    }
    // What reloads kept of older configurations goes too: the operator said to start over.
    cred->retired.clear();
    cred->removed.clear();
    cred->scope_seeds.clear();
    const int64_t now = NowNs();
    cred->reset_ns = now;
    // So does what Report learnt: outside estimates, back-offs and cooldowns, in the journal as
    // well (a record that ends now is dropped at restore and by Compact).
    if (options_.journal != nullptr) {
      for (const auto& [limit, estimate] : cred->outside) {
        JournalOutside cleared;
        cleared.credential = cred->name;
        cleared.limit = limit;
        cleared.at_ns = now;
        cleared.until_ns = now;
        (void)options_.journal->PutOutside(cleared);  // at worst a restart restores a guess
      }
      for (const auto& [feature, cooldown] : cred->cooldowns) {
        (void)options_.journal->PutCooldown({cred->name, feature, now});
      }
      // And what a restart read for limits or features not configured since.
      for (const JournalOutside& jo : cred->unplaced.outside) {
        JournalOutside cleared = jo;
        cleared.at_ns = now;
        cleared.until_ns = now;
        (void)options_.journal->PutOutside(cleared);
      }
      for (const JournalCooldown& jc : cred->unplaced.cooldowns) {
        (void)options_.journal->PutCooldown({cred->name, jc.feature, now});
      }
    }
    cred->outside.clear();
    cred->cooldowns.clear();
    // Counts a restart kept for limits not configured now start over too (leases stay held).
    cred->unplaced.reservations.clear();
    cred->unplaced.outside.clear();
    cred->unplaced.cooldowns.clear();
  }
  ServeCredential(*cred);
  return absl::OkStatus();
}

absl::Status Ledger::Reload(const Policy& policy) {
  absl::Status s = ReloadImpl(policy);
  if (s.ok()) Pump();  // new capacities may let waiting requests through
  return s;
}

absl::Status Ledger::ReloadImpl(const Policy& policy) {
  if (absl::Status s = ValidatePolicy(policy); !s.ok()) return s;
  absl::MutexLock reload_lock(&reload_mu_);
  const int64_t now = NowNs();
  auto next = std::make_unique<ledger_internal::CredentialTable>();
  next->in_order.reserve(policy.credentials.size());
  next->by_name.reserve(policy.credentials.size());
  credentials_.reserve(policy.credentials.size());
  // Credentials with the same features share one compiled version (the features as keys point
  // into `policy`). Credentials of one profile tend to come together: the last features seen
  // are compared before hashing.
  absl::flat_hash_map<FeaturesKey, std::shared_ptr<const CompiledCredential>> shared;
  const std::vector<FeatureSpec>* last_features = nullptr;
  std::shared_ptr<const CompiledCredential> last_compiled;
  const std::string* last_profile = nullptr;
  for (const CredentialSpec& spec : policy.credentials) {
    auto found = credentials_.find(spec.name);
    if (found == credentials_.end()) {
      auto fresh = std::make_unique<Credential>(spec.name);
      const absl::string_view key = fresh->name;
      found = credentials_.emplace(key, std::move(fresh)).first;
    }
    Credential& cred = *found->second;
    absl::MutexLock lock(&cred.mu);
    std::shared_ptr<const CompiledCredential>& compiled =
        last_features != nullptr && SameFeatures(*last_features, spec.features)
            ? last_compiled
            : shared[FeaturesKey{&spec.features}];
    if (compiled == nullptr && !cred.versions.empty() &&
        SameFeatures(cred.versions.back().compiled->spec_features, spec.features)) {
      compiled = cred.versions.back().compiled;  // unchanged: no new version
    }
    if (compiled == nullptr) compiled = std::make_shared<const CompiledCredential>(spec.features);
    if (&compiled != &last_compiled) {
      last_features = &spec.features;
      last_compiled = compiled;
    }
    const size_t n = compiled->rules.size();
    std::vector<Counter> counters(n);
    std::vector<absl::flat_hash_map<std::string, Counter>> scoped(n);
    std::vector<Credential::ScopeSeed> seeds;
    std::vector<std::pair<int, std::string>> seeded;  // counters that need a reservation
    std::vector<int> rehome;                          // concurrency rules built anew
    const bool new_version = cred.versions.empty() || cred.versions.back().compiled != compiled;
    const uint64_t version_seq = new_version ? cred.next_version_seq : cred.versions.back().seq;
    if (cred.compiled != nullptr) {
      const CompiledCredential& old = *cred.compiled;
      // Counters retired by earlier reloads follow their limit by name, or end with it.
      for (Credential::Retired& retired : cred.retired) {
        auto it = compiled->rule_index.find(old.rules[retired.rule].full_name);
        retired.rule = it == compiled->rule_index.end() ? -1 : it->second;
      }
      cred.retired.erase(std::remove_if(cred.retired.begin(), cred.retired.end(),
                                        [now](const Credential::Retired& r) {
                                          return r.rule < 0 || r.until_ns <= now;
                                        }),
                         cred.retired.end());
      for (size_t r = 0; r < n; ++r) {
        const Rule& rule = compiled->rules[r];
        // The limit as it was: in the policy in force, or removed by an earlier reload.
        const Rule* was;
        Counter* was_counter;
        absl::flat_hash_map<std::string, Counter>* was_scoped;
        Credential::ScopeSeed was_seed;  // what the old rule's new scopes would start with
        if (auto it = old.rule_index.find(rule.full_name); it != old.rule_index.end()) {
          was = &old.rules[it->second];
          was_counter = &cred.counters[it->second];
          was_scoped = &cred.scoped[it->second];
          if (!cred.scope_seeds.empty()) was_seed = cred.scope_seeds[it->second];
        } else if (auto rit = cred.removed.find(rule.full_name); rit != cred.removed.end()) {
          was = rit->second.rule;
          was_counter = &rit->second.counter;
          was_scoped = &rit->second.scoped;
        } else {
          continue;
        }
        const Rule& o = *was;
        Counter& old_counter = *was_counter;
        auto& old_scoped = *was_scoped;
        if (rule.CarriesCounterOf(o)) {
          counters[r] = std::move(old_counter);
          scoped[r] = std::move(old_scoped);
          if (was_seed.units > 0) {
            seeds.resize(n);
            seeds[r] = was_seed;
          }
          continue;
        }
        // Any other edit: the old counters keep counting under the old rule until what they
        // hold drains, and the new counters start with the units the old ones count now, as
        // if charged at this moment (every unit the upstream may still count stays counted).
        cred.rebuilt_at[rule.full_name] = version_seq;
        if (rule.spec.kind == LimitKind::kConcurrency) {
          rehome.push_back(static_cast<int>(r));  // live leases hold its slots (below)
        }
        // The units a counter built for rule `from` stands for under the new rule.
        auto units_of = [&](const Rule& from, Counter& c) -> int64_t {
          // Slots held at the reload count as units charged now; a window's units are no slots.
          if (rule.spec.kind == LimitKind::kConcurrency) return 0;
          int64_t units = c.View(from, RuleTime(from, now)).used;
          // A bucket remembers only what has not refilled: under a slower refill, another kind,
          // or merged with other scopes' charges, the units it already gave back may still
          // count. At most a burst more were charged within its memory.
          if (from.spec.kind == LimitKind::kTokenBucket &&
              !(rule.spec.kind == LimitKind::kTokenBucket && rule.emission_ns <= from.emission_ns &&
                rule.spec.scoped == from.spec.scoped)) {
            units = SatAdd(units, from.Capacity());
          }
          // More than the capacity is kept (a later reload that raises it still sees them),
          // except by a bucket, whose debt beyond a burst only delays its refill.
          return rule.spec.kind == LimitKind::kTokenBucket ? std::min(units, rule.Capacity())
                                                           : units;
        };
        // The old counter of `scope`, and the counters earlier reloads retired under this name
        // (which may remember more than a counter in between could, a bucket's burst say).
        auto used_of = [&](Counter& c, absl::string_view scope)
                           ABSL_EXCLUSIVE_LOCKS_REQUIRED(cred.mu) -> int64_t {
          int64_t units = units_of(o, c);
          for (Credential::Retired& ret : cred.retired) {
            if (ret.rule == static_cast<int>(r) && (ret.all_scopes || ret.scope == scope)) {
              units = std::max(units, units_of(*ret.old_rule, ret.counter));
            }
          }
          return units;
        };
        auto seed = [&](Counter& c, int64_t units, absl::string_view scope) {
          if (units <= 0) return;
          int64_t unused;
          c.Fits(rule, RuleTime(rule, now), 0, &unused);  // rolls it to the current window
          c.Charge(rule, RuleTime(rule, now), units, 0, 0);
          seeded.emplace_back(static_cast<int>(r), std::string(scope));
        };
        auto retire = [&](absl::string_view scope,
                          Counter& c) ABSL_EXCLUSIVE_LOCKS_REQUIRED(cred.mu) {
          const int64_t until = FromRuleTime(o, c.DrainedAt(o, RuleTime(o, now)));
          if (until <= now || o.spec.kind == LimitKind::kUnlimited) return;
          cred.retired.push_back(Credential::Retired{&o, static_cast<int>(r), std::string(scope),
                                                     !o.spec.scoped, std::move(c), until});
        };
        if (!o.spec.scoped) {
          const int64_t units = used_of(old_counter, "");
          if (!rule.spec.scoped) {
            seed(counters[r], units, "");
          } else if (units > 0) {
            seeds.resize(n);  // every scope gets them when it first appears
            seeds[r] = {units, RuleTime(rule, now)};
            // The "" scope holds them too, which writes them ahead: a restart seeds every
            // scope from it (see Restore).
            seed(scoped[r][""], units, "");
          }
          retire("", old_counter);
        } else {
          int64_t total = 0;
          for (auto& [scope, c] : old_scoped) {
            const int64_t units = used_of(c, scope);
            total = SatAdd(total, units);
            if (rule.spec.scoped) seed(scoped[r][scope], units, scope);
            retire(scope, c);
          }
          if (was_seed.units > 0) {
            // Scopes not seen yet would have started with the seed: it still counts (in every
            // scope for a scoped rule, once for an unscoped one).
            Counter unseen;
            int64_t unused;
            unseen.Fits(o, was_seed.at_ns, 0, &unused);
            unseen.Charge(o, was_seed.at_ns, was_seed.units, 0, 0);
            const int64_t units = used_of(unseen, "");
            total = SatAdd(total, units);
            if (rule.spec.scoped && units > 0) {
              seeds.resize(n);
              seeds[r] = {units, RuleTime(rule, now)};
              seed(scoped[r][""], units, "");
            }
            retire("", unseen);
            if (!cred.retired.empty() && cred.retired.back().scope.empty()) {
              cred.retired.back().all_scopes = true;
            }
          }
          if (!rule.spec.scoped) seed(counters[r], total, "");
        }
      }
      // Limits that leave the policy are remembered, so that a reload that brings one back is
      // never looser than a restart (whose journal still has its records); drained ones go.
      for (const auto& [name, index] : compiled->rule_index) cred.removed.erase(name);
      for (size_t r = 0; r < old.rules.size(); ++r) {
        if (compiled->rule_index.contains(old.rules[r].full_name)) continue;
        cred.removed[old.rules[r].full_name] = Credential::Removed{
            &old.rules[r], std::move(cred.counters[r]), std::move(cred.scoped[r])};
      }
      absl::erase_if(cred.removed, [this, now](auto& entry) {
        Credential::Removed& gone = entry.second;
        const int64_t at = RuleTime(*gone.rule, now);
        if (gone.counter.DrainedAt(*gone.rule, at) > at) return false;
        for (auto& [scope, c] : gone.scoped) {
          if (c.DrainedAt(*gone.rule, at) > at) return false;
        }
        return true;
      });
    }
    if (!rehome.empty()) {
      // A concurrency limit built anew (a new kind or scoping): every live lease that charges
      // it holds its slots there, whatever the limit was when the lease was granted.
      for (LeaseShard& shard : leases_->shards()) {
        absl::MutexLock shard_lock(&shard.mu);
        for (auto& [id, rec] : shard.leases) {
          if (rec.credential != &cred || rec.expiry_ns <= now) continue;
          const CompiledCredential& then = *rec.compiled;
          for (int then_rule : then.features[rec.feature].rules) {
            auto it = compiled->rule_index.find(then.rules[then_rule].full_name);
            if (it == compiled->rule_index.end() ||
                std::find(rehome.begin(), rehome.end(), it->second) == rehome.end()) {
              continue;
            }
            Counter& c = compiled->rules[it->second].spec.scoped ? scoped[it->second][rec.scope]
                                                                 : counters[it->second];
            c.RestoreHeld(rec.expiry_ns, id.lo, rec.cost, now);
            // It holds a slot from now on: the journal must say so before a crash can come
            // (on failure, its next renewal writes it).
            if (options_.journal != nullptr && !rec.journaled_with_slots) {
              ledger_internal::JournalWithSlots(*options_.journal, id, &rec, rec.expiry_ns)
                  .IgnoreError();
            }
          }
        }
      }
    }
    cred.counters = std::move(counters);
    cred.scoped = std::move(scoped);
    cred.scope_seeds = std::move(seeds);
    cred.compiled = compiled.get();
    if (new_version) cred.versions.push_back({compiled, cred.next_version_seq++});
    cred.PruneVersions();
    // What a restart's journal had for limits, features or a credential not configured then,
    // as that restart would have restored it with this policy.
    RestoreUnplaced(cred, now);
    if (options_.journal != nullptr && !seeded.empty()) {
      // The carried units are written ahead like charges, so that a restart with the new file
      // keeps them too. On failure the next charge of each counter writes them.
      std::vector<Reservation> rs;
      struct Pending {
        Counter* counter;
        int rule;
        ReservationNeed need;
      };
      std::vector<Pending> pending;
      for (const auto& [r, scope] : seeded) {
        const Rule& rule = compiled->rules[r];
        Pending p{cred.CounterFor(r, scope, true), r, {}};
        if (!p.counter->NeedsReservation(rule, RuleTime(rule, now), 0, /*block=*/0, &p.need)) {
          continue;
        }
        for (const ReservationBlock& b : p.need.blocks()) {
          rs.push_back(Reservation{CounterKey{cred.name, rule.full_name, scope}, b.window_start_ns,
                                   b.until_ns, b.units});
        }
        pending.push_back(p);
      }
      if (!rs.empty() && options_.journal->Reserve(rs).ok()) {
        for (Pending& p : pending) {
          p.counter->Reserved(compiled->rules[p.rule], RuleTime(compiled->rules[p.rule], now),
                              p.need);
        }
      }
    }
    if (last_profile == nullptr || *last_profile != spec.profile) {
      last_profile = &*profiles_.insert(spec.profile).first;
    }
    cred.profile = last_profile;
    next->by_name[cred.name] = &cred;
    next->in_order.push_back(&cred);
  }
  // A table is kept for as long as the ledger lives (readers hold it without a lock), so a
  // reload that keeps the same credentials in the same order keeps the table in force.
  if (const ledger_internal::CredentialTable* current = table();
      current == nullptr || current->in_order != next->in_order) {
    table_.store(next.get(), std::memory_order_release);
    tables_.push_back(std::move(next));
  }
  return absl::OkStatus();
}

Ledger::ReloadFootprint Ledger::Footprint() const {
  ReloadFootprint out;
  absl::flat_hash_set<const CompiledCredential*> versions;
  absl::MutexLock reload_lock(&reload_mu_);
  out.tables = tables_.size();
  for (const auto& [name, cred] : credentials_) {
    absl::MutexLock lock(&cred->mu);
    for (const Credential::Version& v : cred->versions) versions.insert(v.compiled.get());
  }
  for (LeaseShard& shard : leases_->shards()) {
    absl::MutexLock shard_lock(&shard.mu);
    for (const auto& [id, rec] : shard.leases) versions.insert(rec.compiled.get());
  }
  out.versions = versions.size();
  return out;
}

void Credential::PruneVersions() {
  std::vector<const Rule*> kept_rules;  // rules of older versions that counters still use
  for (const Retired& r : retired) kept_rules.push_back(r.old_rule);
  for (const auto& [name, gone] : removed) kept_rules.push_back(gone.rule);
  size_t out = 0;
  for (size_t i = 0; i < versions.size(); ++i) {
    const CompiledCredential* v = versions[i].compiled.get();
    bool in_use = v == compiled;
    const Rule* first = v->rules.data();
    for (size_t k = 0; k < kept_rules.size() && !in_use; ++k) {
      in_use = kept_rules[k] >= first && kept_rules[k] < first + v->rules.size();
    }
    if (!in_use) continue;
    if (out != i) versions[out] = std::move(versions[i]);
    ++out;
  }
  versions.resize(out);
}

}  // namespace quotad
