#include "tests/sim/upstream.h"

#include <algorithm>
#include <cstdlib>
#include <iostream>

#include "absl/strings/str_cat.h"
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

  int64_t Capacity() const override { return capacity_; }
  int64_t Used(absl::Time t) override {
    Expire(t);
    return used_;
  }
  absl::Time Reset(absl::Time t) override {
    Expire(t);
    return log_.empty() ? t : log_.front().first + period_;
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

  int64_t Capacity() const override { return capacity_; }
  int64_t Used(absl::Time t) override {
    Roll(t);
    return used_;
  }
  absl::Time Reset(absl::Time t) override {
    Roll(t);
    return end_;
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

  int64_t Capacity() const override { return capacity_; }
  // A closed window counts nothing; MetaDefender then shows a fresh window of one period.
  int64_t Used(absl::Time t) override { return t >= end_ ? 0 : used_; }
  absl::Time Reset(absl::Time t) override { return t >= end_ ? t + period_ : end_; }

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

void Upstream::AddEndpoint(std::string name, std::vector<int> rules, int header_rule,
                           std::string family) {
  endpoints_.push_back(Endpoint{std::move(name), std::move(rules), header_rule, std::move(family)});
}

const Upstream::Endpoint& Upstream::EndpointOf(absl::string_view endpoint) const {
  for (const Endpoint& e : endpoints_) {
    if (e.name == endpoint) return e;
  }
  std::cerr << name_ << ": unknown endpoint " << endpoint << "\n";
  std::abort();
}

namespace {

// Whole seconds from `from` to `to`, rounded up (never announces a time earlier than the truth).
int64_t CeilSeconds(absl::Time from, absl::Time to) {
  if (to <= from) return 0;
  return absl::ToInt64Seconds(absl::Ceil(to - from, absl::Seconds(1)));
}

int64_t CeilEpoch(absl::Time t) {
  return absl::ToUnixSeconds(absl::Ceil(t - absl::UnixEpoch(), absl::Seconds(1)) +
                             absl::UnixEpoch());
}

}  // namespace

void Upstream::Describe(absl::Time t, const Endpoint& e, int refused, Answer* answer) {
  const bool throttled = answer->status != 200;
  Headers& h = answer->headers;
  UpstreamRule* shown = e.header_rule >= 0 ? rules_[e.header_rule].get() : nullptr;
  switch (header_style_) {
    case HeaderStyle::kNone:
      return;
    case HeaderStyle::kCyberVault: {
      if (shown != nullptr) {
        h.emplace_back("X-RateLimit-Limit", absl::StrCat(shown->Capacity()));
        h.emplace_back("X-RateLimit-Remaining",
                       absl::StrCat(std::max<int64_t>(0, shown->Capacity() - shown->Used(t))));
        h.emplace_back("X-RateLimit-Reset", absl::StrCat(CeilEpoch(shown->Reset(t))));
      }
      if (throttled) {
        // When the refusing rule takes one more; the in-flight cap frees as requests finish.
        const int64_t retry =
            refused >= 0 ? std::max<int64_t>(1, CeilSeconds(t, rules_[refused]->Earliest(t, 1)))
                         : 1;
        h.emplace_back("Retry-After", absl::StrCat(retry));
        answer->body = absl::StrCat(
            R"({"error": {"code": "RATE_LIMIT_EXCEEDED", "message": "You have exceeded your API )",
            R"(rate limit. Please retry after )", retry, R"( seconds.", "retry_after": )", retry,
            R"(, "documentation_url": "https://docs.cybervault.io/rate-limits"}})");
      }
      return;
    }
    case HeaderStyle::kMetaDefender: {
      if (shown == nullptr) return;
      const int64_t used = shown->Used(t);
      h.emplace_back("x-ratelimit-for", e.family);
      h.emplace_back("x-ratelimit-limit", absl::StrCat(shown->Capacity()));
      h.emplace_back("x-ratelimit-used", absl::StrCat(used));
      h.emplace_back("x-ratelimit-remaining",
                     absl::StrCat(std::max<int64_t>(0, shown->Capacity() - used)));
      h.emplace_back("x-ratelimit-reset-in", absl::StrCat(CeilSeconds(t, shown->Reset(t)), "s"));
      h.emplace_back("x-ratelimit-interval", "86400");
      if (throttled) {
        answer->body = absl::StrCat(
            R"({"error": {"code": 429000, "messages": ["Rate limit exceeded, retry after the )",
            R"(limit is reset. Limit: )", shown->Capacity(), R"( requests / day"]}})");
      }
      return;
    }
    case HeaderStyle::kMediaSilo: {
      if (shown == nullptr) return;
      h.emplace_back("X-RateLimit-Reset", absl::StrCat(CeilEpoch(shown->Reset(t))));
      h.emplace_back("X-RateLimit-Limit", absl::StrCat(shown->Capacity()));
      h.emplace_back("X-RateLimit-Remaining",
                     absl::StrCat(std::max<int64_t>(0, shown->Capacity() - shown->Used(t))));
      return;
    }
  }
}

Upstream::Answer Upstream::Send(absl::Time t, absl::string_view endpoint, int64_t units) {
  Answer answer;
  const Endpoint& e = EndpointOf(endpoint);
  if (max_in_flight_ > 0 && in_flight_ >= max_in_flight_) {
    answer.status = throttle_status_;
    answer.rule = "simultaneous";
    Describe(t, e, -1, &answer);
    return answer;
  }
  for (int r : e.rules) {
    if (rules_[r]->Earliest(t, units) != t) {
      answer.status = throttle_status_;
      answer.rule = rules_[r]->name();
      Describe(t, e, r, &answer);
      return answer;
    }
  }
  for (int r : e.rules) rules_[r]->Charge(t, units);
  ++in_flight_;
  Describe(t, e, -1, &answer);
  return answer;
}

void Upstream::Finish() { --in_flight_; }

absl::Time Upstream::Earliest(absl::Time t, absl::string_view endpoint, int64_t units) {
  const std::vector<int>& rules = EndpointOf(endpoint).rules;
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
  up->set_header_style(HeaderStyle::kMetaDefender);
  const int reputation =
      up->AddRule(FromFirstRequestRule("reputation_api", 4000, absl::Hours(24)));
  up->AddEndpoint("reputation", {reputation}, reputation, "reputation_api");
  const int prevention = up->AddRule(FromFirstRequestRule("prevention_api", 100, absl::Hours(24)));
  up->AddEndpoint("prevention", {prevention}, prevention, "prevention_api");
  return up;
}

std::unique_ptr<Upstream> MediaSilo(absl::Time anchor) {
  auto up = std::make_unique<Upstream>("mediasilo", 420, 0);
  up->set_header_style(HeaderStyle::kMediaSilo);
  const int hour = up->AddRule(FixedWindowRule("per_user_hour", 10000, absl::Hours(1), anchor));
  up->AddEndpoint("requests", {hour}, hour);
  return up;
}

std::unique_ptr<Upstream> CyberVault(const CyberVaultTier& tier) {
  auto up = std::make_unique<Upstream>("cybervault-" + tier.name, 429, tier.simultaneous);
  up->set_header_style(HeaderStyle::kCyberVault);
  const int minute = up->AddRule(SlidingRule("tier_per_minute", tier.per_minute, absl::Minutes(1)));
  const int day = up->AddRule(UtcDayRule("tier_per_day", tier.per_day));
  up->AddEndpoint("requests", {minute, day}, minute);
  const std::pair<const char*, int64_t> overrides[] = {
      {"auth_login", 10}, {"threats_scan", 5}, {"reports_generate", 20}, {"incidents_read", 120}};
  for (const auto& [endpoint, per_minute] : overrides) {
    const int own = up->AddRule(
        SlidingRule(std::string(endpoint) + "_per_minute", per_minute, absl::Minutes(1)));
    up->AddEndpoint(endpoint, {own, minute, day}, minute);
  }
  return up;
}

}  // namespace quotad::sim
