#include "tests/sim/upstream.h"

#include <algorithm>
#include <cstdlib>
#include <iostream>

#include "absl/time/civil_time.h"

namespace quotad::sim {
namespace {

// A log of charges; a charge counts while t < its time + period.
class Sliding : public UpstreamRule {
 public:
  Sliding(std::string name, int64_t capacity, absl::Duration period)
      : UpstreamRule(std::move(name)), capacity_(capacity), period_(period) {}

  absl::Time Earliest(absl::Time t, int64_t units) override {
    if (units > capacity_) return absl::InfiniteFuture();
    Expire(t);
    int64_t over = used_ + units - capacity_;
    if (over <= 0) return t;
    for (const auto& [at, n] : log_) {
      over -= n;
      if (over <= 0) return at + period_;
    }
    return absl::InfiniteFuture();  // unreachable: units <= capacity
  }

  void Charge(absl::Time t, int64_t units) override {
    Expire(t);
    log_.emplace_back(t, units);
    used_ += units;
  }

 private:
  void Expire(absl::Time t) {
    while (!log_.empty() && log_.front().first + period_ <= t) {
      used_ -= log_.front().second;
      log_.pop_front();
    }
  }

  const int64_t capacity_;
  const absl::Duration period_;
  std::deque<std::pair<absl::Time, int64_t>> log_;
  int64_t used_ = 0;
};

// A counter over consecutive windows [start, end); subclasses say where the window of t lies.
class Windowed : public UpstreamRule {
 public:
  Windowed(std::string name, int64_t capacity)
      : UpstreamRule(std::move(name)), capacity_(capacity) {}

  absl::Time Earliest(absl::Time t, int64_t units) override {
    if (units > capacity_) return absl::InfiniteFuture();
    Roll(t);
    return used_ + units <= capacity_ ? t : end_;
  }

  void Charge(absl::Time t, int64_t units) override {
    Roll(t);
    used_ += units;
  }

 protected:
  // The window that contains t.
  virtual void WindowOf(absl::Time t, absl::Time* start, absl::Time* end) const = 0;

 private:
  void Roll(absl::Time t) {
    if (t >= start_ && t < end_) return;
    if (t < start_) {
      std::cerr << name() << ": time went backwards\n";
      std::abort();
    }
    WindowOf(t, &start_, &end_);
    used_ = 0;
  }

  const int64_t capacity_;
  absl::Time start_ = absl::InfinitePast();
  absl::Time end_ = absl::InfinitePast();
  int64_t used_ = 0;
};

class UtcDay : public Windowed {
 public:
  using Windowed::Windowed;

 protected:
  void WindowOf(absl::Time t, absl::Time* start, absl::Time* end) const override {
    const absl::CivilDay day = absl::ToCivilDay(t, absl::UTCTimeZone());
    *start = absl::FromCivil(day, absl::UTCTimeZone());
    *end = absl::FromCivil(day + 1, absl::UTCTimeZone());
  }
};

class UtcMonth : public Windowed {
 public:
  using Windowed::Windowed;

 protected:
  void WindowOf(absl::Time t, absl::Time* start, absl::Time* end) const override {
    const absl::CivilMonth month = absl::ToCivilMonth(t, absl::UTCTimeZone());
    *start = absl::FromCivil(month, absl::UTCTimeZone());
    *end = absl::FromCivil(month + 1, absl::UTCTimeZone());
  }
};

class Fixed : public Windowed {
 public:
  Fixed(std::string name, int64_t capacity, absl::Duration period, absl::Time anchor)
      : Windowed(std::move(name), capacity), period_(period), anchor_(anchor) {}

 protected:
  void WindowOf(absl::Time t, absl::Time* start, absl::Time* end) const override {
    absl::Duration rem;
    const int64_t k = absl::IDivDuration(t - anchor_, period_, &rem);
    *start = anchor_ + k * period_;
    if (*start > t) *start -= period_;  // IDivDuration truncates toward zero
    *end = *start + period_;
  }

 private:
  const absl::Duration period_;
  const absl::Time anchor_;
};

class FromFirst : public UpstreamRule {
 public:
  FromFirst(std::string name, int64_t capacity, absl::Duration period)
      : UpstreamRule(std::move(name)), capacity_(capacity), period_(period) {}

  absl::Time Earliest(absl::Time t, int64_t units) override {
    if (units > capacity_) return absl::InfiniteFuture();
    if (t >= end_) return t;  // the request would open a new window
    return used_ + units <= capacity_ ? t : end_;
  }

  void Charge(absl::Time t, int64_t units) override {
    if (t >= end_) {
      end_ = t + period_;
      used_ = 0;
    }
    used_ += units;
  }

 private:
  const int64_t capacity_;
  const absl::Duration period_;
  absl::Time end_ = absl::InfinitePast();
  int64_t used_ = 0;
};

}  // namespace

std::unique_ptr<UpstreamRule> SlidingRule(std::string name, int64_t capacity,
                                          absl::Duration period) {
  return std::make_unique<Sliding>(std::move(name), capacity, period);
}
std::unique_ptr<UpstreamRule> UtcDayRule(std::string name, int64_t capacity) {
  return std::make_unique<UtcDay>(std::move(name), capacity);
}
std::unique_ptr<UpstreamRule> UtcMonthRule(std::string name, int64_t capacity) {
  return std::make_unique<UtcMonth>(std::move(name), capacity);
}
std::unique_ptr<UpstreamRule> FixedWindowRule(std::string name, int64_t capacity,
                                              absl::Duration period, absl::Time anchor) {
  return std::make_unique<Fixed>(std::move(name), capacity, period, anchor);
}
std::unique_ptr<UpstreamRule> FromFirstRequestRule(std::string name, int64_t capacity,
                                                   absl::Duration period) {
  return std::make_unique<FromFirst>(std::move(name), capacity, period);
}

Upstream::Upstream(std::string name, int throttle_status, int64_t max_in_flight)
    : name_(std::move(name)), throttle_status_(throttle_status), max_in_flight_(max_in_flight) {}

int Upstream::AddRule(std::unique_ptr<UpstreamRule> rule) {
  rules_.push_back(std::move(rule));
  return static_cast<int>(rules_.size()) - 1;
}

void Upstream::AddEndpoint(std::string name, std::vector<int> rules) {
  endpoints_.emplace_back(std::move(name), std::move(rules));
}

const std::vector<int>& Upstream::RulesOf(absl::string_view endpoint) const {
  for (const auto& [name, rules] : endpoints_) {
    if (name == endpoint) return rules;
  }
  std::cerr << name_ << ": unknown endpoint " << endpoint << "\n";
  std::abort();
}

Upstream::Answer Upstream::Send(absl::Time t, absl::string_view endpoint, int64_t units) {
  Answer answer;
  if (max_in_flight_ > 0 && in_flight_ >= max_in_flight_) {
    answer.status = throttle_status_;
    answer.rule = "simultaneous";
    return answer;
  }
  const std::vector<int>& rules = RulesOf(endpoint);
  for (int r : rules) {
    if (rules_[r]->Earliest(t, units) != t) {
      answer.status = throttle_status_;
      answer.rule = rules_[r]->name();
      return answer;
    }
  }
  for (int r : rules) rules_[r]->Charge(t, units);
  ++in_flight_;
  return answer;
}

void Upstream::Finish() { --in_flight_; }

absl::Time Upstream::Earliest(absl::Time t, absl::string_view endpoint, int64_t units) {
  const std::vector<int>& rules = RulesOf(endpoint);
  // Each rule may push the time later; repeat until every rule accepts the same instant.
  for (;;) {
    absl::Time next = t;
    for (int r : rules) next = std::max(next, rules_[r]->Earliest(next, units));
    if (next == t || next == absl::InfiniteFuture()) return next;
    t = next;
  }
}

std::unique_ptr<Upstream> VirusTotalPublic() {
  auto up = std::make_unique<Upstream>("virustotal-public", 429, 0);
  const int minute = up->AddRule(SlidingRule("requests_per_minute", 4, absl::Minutes(1)));
  const int day = up->AddRule(UtcDayRule("requests_per_day", 500));
  const int month = up->AddRule(UtcMonthRule("requests_per_month", 15500));
  up->AddEndpoint("requests", {minute, day, month});
  return up;
}

std::unique_ptr<Upstream> MetaDefenderCloud() {
  auto up = std::make_unique<Upstream>("metadefender-cloud", 429, 0);
  up->AddEndpoint("reputation",
                  {up->AddRule(FromFirstRequestRule("reputation_api", 4000, absl::Hours(24)))});
  up->AddEndpoint("prevention",
                  {up->AddRule(FromFirstRequestRule("prevention_api", 100, absl::Hours(24)))});
  return up;
}

std::unique_ptr<Upstream> MediaSilo(absl::Time anchor) {
  auto up = std::make_unique<Upstream>("mediasilo", 420, 0);
  up->AddEndpoint("requests",
                  {up->AddRule(FixedWindowRule("per_user_hour", 10000, absl::Hours(1), anchor))});
  return up;
}

std::unique_ptr<Upstream> CyberVault(const CyberVaultTier& tier) {
  auto up = std::make_unique<Upstream>("cybervault-" + tier.name, 429, tier.simultaneous);
  const int minute = up->AddRule(SlidingRule("tier_per_minute", tier.per_minute, absl::Minutes(1)));
  const int day = up->AddRule(UtcDayRule("tier_per_day", tier.per_day));
  up->AddEndpoint("requests", {minute, day});
  const std::pair<const char*, int64_t> overrides[] = {
      {"auth_login", 10}, {"threats_scan", 5}, {"reports_generate", 20}, {"incidents_read", 120}};
  for (const auto& [endpoint, per_minute] : overrides) {
    const int own = up->AddRule(
        SlidingRule(std::string(endpoint) + "_per_minute", per_minute, absl::Minutes(1)));
    up->AddEndpoint(endpoint, {own, minute, day});
  }
  return up;
}

}  // namespace quotad::sim
