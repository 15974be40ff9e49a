// Ledger: creation, ledger time, the credential table, the policy in force. The operation groups
// live in ledger_acquire.cc, ledger_wait.cc, ledger_lease.cc, ledger_report.cc, ledger_reload.cc
// and ledger_restore.cc; what they share is in ledger_internal.h (with the locking contract).

#include "service/core/ledger.h"

#include <algorithm>
#include <limits>
#include <memory>
#include <random>
#include <utility>

#include "service/core/ledger_internal.h"

namespace quotad {

using ledger_internal::Credential;
using ledger_internal::SatAdd;

namespace {

absl::Time FromNs(int64_t ns) {
  if (ns == kInfiniteNs) return absl::InfiniteFuture();
  if (ns == std::numeric_limits<int64_t>::min()) return absl::InfinitePast();
  return absl::FromUnixNanos(ns);
}

// How far the wall clock may drift from ledger time before the offset between them is updated.
constexpr int64_t kOffsetSlackNs = 1000000;

// A time moved by `by`, the infinities left as they are.
int64_t Shift(int64_t ns, int64_t by) {
  if (ns == kInfiniteNs || ns == std::numeric_limits<int64_t>::min()) return ns;
  return SatAdd(ns, by);
}
// Whether `rule` runs on the wall clock (calendar boundaries follow civil time).
bool OnWall(const Rule& rule) {
  return (rule.spec.kind == LimitKind::kCalendar || rule.spec.kind == LimitKind::kUnlimited) &&
         rule.spec.unit != CalendarUnit::kNone;
}

}  // namespace

Ledger::Ledger(Clock* clock, LedgerOptions options)
    : clock_(clock),
      options_(options),
      mono_anchor_ns_(absl::ToUnixNanos(clock->Now()) -
                      absl::ToInt64Nanoseconds(clock->Monotonic())),
      leases_(std::make_unique<ledger_internal::LeaseTable>()),
      jitter_rng_(options.jitter_seed != 0 ? options.jitter_seed : std::random_device{}()) {}

int64_t Ledger::NowNs() const {
  const int64_t now = mono_anchor_ns_ + absl::ToInt64Nanoseconds(clock_->Monotonic());
  // The two clocks are read one after the other and drift apart slowly: the offset moves only
  // when it changed by more than a millisecond (a step), so that the wall times callers see of
  // one lease or window stay the same from one answer to the next (page tokens compare them).
  const int64_t offset = absl::ToUnixNanos(clock_->Now()) - now;
  const int64_t old = wall_offset_ns_.load(std::memory_order_relaxed);
  if (offset - old > kOffsetSlackNs || old - offset > kOffsetSlackNs) {
    wall_offset_ns_.store(offset, std::memory_order_relaxed);
  }
  return now;
}

absl::Time Ledger::ToWall(int64_t ns) const {
  return FromNs(Shift(ns, wall_offset_ns_.load(std::memory_order_relaxed)));
}

int64_t Ledger::RuleTime(const Rule& rule, int64_t now) const {
  return OnWall(rule) ? Shift(now, wall_offset_ns_.load(std::memory_order_relaxed)) : now;
}

int64_t Ledger::FromRuleTime(const Rule& rule, int64_t t) const {
  return OnWall(rule) ? Shift(t, -wall_offset_ns_.load(std::memory_order_relaxed)) : t;
}

int64_t Ledger::FromWall(absl::Time t) const {
  if (t == absl::InfiniteFuture()) return kInfiniteNs;
  if (t == absl::InfinitePast()) return std::numeric_limits<int64_t>::min();
  return Shift(absl::ToUnixNanos(t), -wall_offset_ns_.load(std::memory_order_relaxed));
}

Ledger::~Ledger() = default;

absl::StatusOr<std::unique_ptr<Ledger>> Ledger::Create(const Policy& policy, Clock* clock,
                                                       LedgerOptions options) {
  std::unique_ptr<Ledger> ledger(new Ledger(clock, options));
  if (absl::Status s = ledger->Reload(policy); !s.ok()) return s;
  return ledger;
}

Credential* Ledger::FindCredential(absl::string_view name) const {
  const ledger_internal::CredentialTable* t = table();
  auto it = t->by_name.find(name);
  return it == t->by_name.end() ? nullptr : it->second;
}

int64_t Ledger::BlockFor(const Rule& rule) const {
  double base = static_cast<double>(rule.spec.capacity);
  if (rule.spec.kind == LimitKind::kTokenBucket) base = static_cast<double>(rule.spec.rate);
  if (rule.spec.kind == LimitKind::kUnlimited) return options_.max_reserve_block;
  const double block = base * options_.reserve_fraction;
  return std::clamp<int64_t>(static_cast<int64_t>(block), 1, options_.max_reserve_block);
}

int64_t Ledger::CompactionTimeNs() const {
  const int64_t now = NowNs();
  return std::min(now, Shift(now, wall_offset_ns_.load(std::memory_order_relaxed)));
}

Policy Ledger::policy() const {
  Policy p;
  for (Credential* cred : table()->in_order) {
    absl::MutexLock lock(&cred->mu);
    CredentialSpec& c = p.credentials.emplace_back();
    c.name = cred->name;
    if (cred->profile != nullptr) c.profile = *cred->profile;
    c.features = cred->compiled->spec_features;
  }
  return p;
}

int64_t Credential::LimitCooldown(const CompiledCredential& cc, const CompiledFeature& feature,
                                  int64_t now) const {
  int64_t until = 0;
  if (outside.empty()) return until;
  for (int r : feature.rules) {
    auto it = outside.find(cc.rules[r].full_name);
    if (it != outside.end() && it->second.cooldown_until_ns() > now) {
      until = std::max(until, it->second.cooldown_until_ns());
    }
  }
  return until;
}

}  // namespace quotad
