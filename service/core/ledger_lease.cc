// The lease operations of the Ledger: Release, Renew, Leases, FindLease, Sweep. Each finds the
// lease in its shard (lease_table.h) first, then takes its credential's mutex and looks again
// under both (lock order: credential, then shard).

#include <algorithm>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/inlined_vector.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "service/core/ledger.h"
#include "service/core/ledger_internal.h"

namespace quotad {

using ledger_internal::Answer;
using ledger_internal::Credential;
using ledger_internal::LeaseRecord;
using ledger_internal::LeaseShard;
using ledger_internal::SatAdd;
using ledger_internal::Waiter;

namespace ledger_internal {

JournalLease ToJournal(const LeaseId& id, const LeaseRecord& rec, bool holds_slots) {
  JournalLease j;
  j.id = id.ToString();
  j.credential = rec.credential->name;
  j.feature = rec.compiled->features[rec.feature].name;
  j.scope = rec.scope;
  j.holder = rec.holder;
  j.cost = rec.cost;
  j.granted_ns = rec.granted_ns;
  j.expiry_ns = rec.expiry_ns;
  j.holds_slots = holds_slots;
  j.tokens.assign(rec.tokens.begin(), rec.tokens.end());
  return j;
}

absl::Status JournalWithSlots(Journal& journal, const LeaseId& id, LeaseRecord* rec,
                              int64_t expiry_ns) {
  journal.DeleteLease(id.ToString());  // no row yet: a release of the refund-only record
  JournalLease j = ToJournal(id, *rec, true);
  j.expiry_ns = expiry_ns;
  absl::Status s = journal.PutLease(j);
  if (s.ok()) rec->journaled_with_slots = true;
  return s;
}

}  // namespace ledger_internal

namespace {

absl::Status LeaseNotFound(const LeaseId& id) {
  return absl::NotFoundError(
      absl::StrCat("lease ", id.ToString(), " is unknown, released or expired"));
}

}  // namespace

absl::StatusOr<ReleaseResult> Ledger::Release(const LeaseId& id, std::optional<int64_t> used) {
  Credential* cred = nullptr;
  absl::StatusOr<ReleaseResult> result = ReleaseImpl(id, used, &cred);
  // Freed slots or refunded units may let waiting requests through.
  if (result.ok() && (result->freed > 0 || result->refunded > 0)) ServeCredential(*cred);
  return result;
}

absl::StatusOr<ReleaseResult> Ledger::ReleaseImpl(const LeaseId& id, std::optional<int64_t> used,
                                                  Credential** out_cred) {
  LeaseShard& shard = leases_->ShardFor(id);
  Credential* cred = nullptr;
  const int64_t before = NowNs();
  {
    absl::MutexLock l(&shard.mu);
    LeaseRecord* rec = shard.FindLive(id, before);
    if (rec == nullptr) return LeaseNotFound(id);
    cred = rec->credential;
  }
  *out_cred = cred;
  // Lock order: the credential, then the shard; so look again, at the time the locks are held
  // (a lease that expired meanwhile may already have lost its slot to another).
  absl::MutexLock cred_lock(&cred->mu);
  const int64_t now = NowNs();
  LeaseRecord rec;
  {
    absl::MutexLock l(&shard.mu);
    LeaseRecord* live = shard.FindLive(id, now);
    if (live == nullptr) return LeaseNotFound(id);
    if (used.has_value() && (*used < 0 || *used > live->cost)) {
      return absl::InvalidArgumentError(
          absl::StrCat("used ", *used, " is outside 0..", live->cost, " (the lease's cost)"));
    }
    rec = std::move(*live);
    shard.leases.erase(id);
  }
  if (options_.journal != nullptr) options_.journal->DeleteLease(id.ToString());
  ReleaseResult result;
  const CompiledCredential& then = *rec.compiled;
  const std::vector<int>& rules = then.features[rec.feature].rules;
  for (size_t i = 0; i < rules.size(); ++i) {
    const int r = CurrentRule(then, *cred->compiled, rules[i]);
    if (r < 0) continue;  // the limit is gone
    const Rule& rule = cred->compiled->rules[r];
    Counter* counter = cred->CounterFor(r, rec.scope, false);
    if (counter == nullptr) continue;
    if (rule.spec.kind == LimitKind::kConcurrency) {
      result.freed = std::max(result.freed, counter->Free(rec.expiry_ns, id.lo));
    } else if (used.has_value() && rec.granted_ns > cred->reset_ns &&
               !cred->RebuiltSince(rule.full_name, rec.version_seq)) {
      // A token means something only to a counter of the shape that made it: after a reload
      // rebuilt the counter, the units stay counted until they drain (under-grants, never over).
      result.refunded =
          std::max(result.refunded, counter->Refund(rule, RuleTime(rule, now), rec.tokens[i],
                                                    rec.cost, rec.cost - *used, rec.granted_ns));
    }
  }
  for (Credential::Retired& old : cred->retired) {
    if (old.all_scopes || old.scope == rec.scope) old.counter.Free(rec.expiry_ns, id.lo);
  }
  return result;
}

absl::StatusOr<absl::Time> Ledger::Renew(const LeaseId& id, absl::Duration ttl) {
  if (ttl < absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        absl::StrCat("ttl ", absl::FormatDuration(ttl), " is negative"));
  }
  LeaseShard& shard = leases_->ShardFor(id);
  Credential* cred = nullptr;
  const int64_t before = NowNs();
  {
    absl::MutexLock l(&shard.mu);
    LeaseRecord* rec = shard.FindLive(id, before);
    if (rec == nullptr) return LeaseNotFound(id);
    cred = rec->credential;
  }
  // Lock order: the credential, then the shard; so look again, at the time the locks are held:
  // a lease that expired meanwhile may already have lost its slot to another holder.
  absl::MutexLock cred_lock(&cred->mu);
  absl::MutexLock l(&shard.mu);
  const int64_t now = NowNs();
  LeaseRecord* live = shard.FindLive(id, now);
  if (live == nullptr) return LeaseNotFound(id);
  LeaseRecord& rec = *live;
  const CompiledCredential& then = *rec.compiled;
  const CompiledFeature& feature = then.features[rec.feature];
  if (ttl == absl::ZeroDuration()) ttl = feature.default_lease_ttl;
  if (ttl > feature.max_lease_ttl) {
    return absl::InvalidArgumentError(
        absl::StrCat("ttl ", absl::FormatDuration(ttl), " exceeds the maximum ",
                     absl::FormatDuration(feature.max_lease_ttl), " of feature ", feature.name));
  }
  const int64_t expiry = now + absl::ToInt64Nanoseconds(ttl);
  // The slots the lease holds, each of which must still be its own: a slot that was taken
  // from it (its expiry passed on a clock that stepped) is not given back by a renewal.
  absl::InlinedVector<Counter*, 2> slots;
  for (int then_rule : feature.rules) {
    const int r = CurrentRule(then, *cred->compiled, then_rule);
    if (r < 0 || cred->compiled->rules[r].spec.kind != LimitKind::kConcurrency) continue;
    Counter* counter = cred->CounterFor(r, rec.scope, false);
    if (counter == nullptr || !counter->Holds(rec.expiry_ns, id.lo)) {
      shard.leases.erase(id);
      return LeaseNotFound(id);
    }
    slots.push_back(counter);
  }
  if (options_.journal != nullptr && (feature.has_concurrency || !slots.empty())) {
    // A renewal lost in a crash would free the slot early under a running job. A lease granted
    // before a reload made its limit a concurrency one was written as refund-only: write it
    // again as one that holds slots.
    const absl::Status s =
        rec.journaled_with_slots
            ? options_.journal->RenewLease(id.ToString(), expiry)
            : ledger_internal::JournalWithSlots(*options_.journal, id, &rec, expiry);
    if (!s.ok()) {
      return absl::UnavailableError(
          absl::StrCat("state store failed, lease not renewed: ", s.message()));
    }
  }
  for (Counter* counter : slots) counter->MoveExpiry(rec.expiry_ns, id.lo, expiry);
  for (Credential::Retired& old : cred->retired) {
    if (old.all_scopes || old.scope == rec.scope) {
      old.counter.MoveExpiry(rec.expiry_ns, id.lo, expiry);
    }
  }
  rec.expiry_ns = expiry;
  return ToWall(expiry);
}

LeaseInfo Ledger::InfoOf(const LeaseId& id, const LeaseRecord& rec) const {
  LeaseInfo info;
  info.id = id;
  info.credential = rec.credential->name;
  const CompiledFeature& f = rec.compiled->features[rec.feature];
  info.feature = f.name;
  info.scope = rec.scope;
  info.holder = rec.holder;
  info.cost = rec.cost;
  info.granted_at = ToWall(rec.granted_ns);
  info.expiry = ToWall(rec.expiry_ns);
  for (int r : f.rules) {
    if (rec.compiled->rules[r].spec.kind == LimitKind::kConcurrency) info.holds_slots = true;
  }
  return info;
}

std::vector<LeaseInfo> Ledger::Leases(absl::string_view credential) {
  const int64_t now = NowNs();
  std::vector<LeaseInfo> out;
  for (LeaseShard& shard : leases_->shards()) {
    absl::MutexLock l(&shard.mu);
    for (const auto& [id, rec] : shard.leases) {
      if (rec.expiry_ns <= now) continue;
      if (!credential.empty() && rec.credential->name != credential) continue;
      out.push_back(InfoOf(id, rec));
    }
  }
  std::sort(out.begin(), out.end(),
            [](const LeaseInfo& a, const LeaseInfo& b) { return a.granted_at < b.granted_at; });
  return out;
}

absl::flat_hash_map<std::string, int64_t> Ledger::LeaseCounts() {
  const int64_t now = NowNs();
  absl::flat_hash_map<const Credential*, int64_t> by_credential;
  for (LeaseShard& shard : leases_->shards()) {
    absl::MutexLock l(&shard.mu);
    for (const auto& [id, rec] : shard.leases) {
      if (rec.expiry_ns > now) ++by_credential[rec.credential];
    }
  }
  absl::flat_hash_map<std::string, int64_t> out;
  for (const auto& [credential, n] : by_credential) out[credential->name] += n;
  return out;
}

std::optional<LeaseInfo> Ledger::FindLease(const LeaseId& id) {
  const int64_t now = NowNs();
  LeaseShard& shard = leases_->ShardFor(id);
  absl::MutexLock l(&shard.mu);
  const LeaseRecord* rec = shard.FindLive(id, now);
  if (rec == nullptr) return std::nullopt;
  return InfoOf(id, *rec);
}

int64_t Ledger::Sweep() {
  const int64_t now = NowNs();
  int64_t dropped = 0;
  for (LeaseShard& shard : leases_->shards()) {
    absl::MutexLock l(&shard.mu);
    const size_t erased = absl::erase_if(
        shard.leases, [now](const auto& entry) { return entry.second.expiry_ns <= now; });
    // Give the memory of a burst of leases back once it has passed.
    if (erased > 0 && shard.leases.size() * 4 < shard.leases.capacity()) shard.leases.rehash(0);
    dropped += static_cast<int64_t>(erased);
  }
  return dropped;
}

}  // namespace quotad
