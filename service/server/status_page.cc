#include "service/server/status_page.h"

#include <google/protobuf/util/json_util.h>
#include <openssl/sha.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "quotad/v1/quotad.pb.h"
#include "service/core/limits.h"
#include "service/server/convert.h"

namespace quotad {
namespace {

constexpr absl::string_view kStyle = R"css(
body{font:14px/1.4 system-ui,sans-serif;margin:0 1.5em 2em;color:#1d2430;background:#fafbfc}
h1{font-size:1.4em;margin:.8em 0 .2em}h2{font-size:1.15em;margin:1.4em 0 .3em}
h3{font-size:1em;margin:1em 0 .3em}.muted{color:#667}.warn{color:#a15c00}.bad{color:#b3261e}
table{border-collapse:collapse;margin:.3em 0 1em;background:#fff}
th,td{border:1px solid #d8dde3;padding:.25em .6em;text-align:left;vertical-align:middle}
th{background:#eef1f4;font-weight:600}td.num{text-align:right;font-variant-numeric:tabular-nums}
meter{width:14em;height:1.1em}section.credential{border-top:2px solid #d8dde3;margin-top:1em}
.pill{display:inline-block;padding:0 .5em;border-radius:.8em;background:#fde7e4;color:#b3261e}
header{display:flex;gap:2em;align-items:baseline;flex-wrap:wrap}
)css";

// Refreshes the content every 5 seconds without reloading the page (pausable).
constexpr absl::string_view kScript = R"js(
(function(){var box=document.getElementById('auto');var n=0;
setInterval(function(){if(!box.checked)return;
fetch(location.pathname+location.search,{cache:'no-store'}).then(function(r){return r.text();})
.then(function(t){var m=new DOMParser().parseFromString(t,'text/html').getElementById('content');
if(m){document.getElementById('content').replaceWith(m);document.body.dataset.refreshes=++n;}})
.catch(function(){});},5000);})();
)js";

// The page and the JSON list at most this many leases, soonest expiry first.
constexpr size_t kMaxLeasesShown = 200;

std::string Sha256Base64(absl::string_view text) {
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(text.data()), text.size(), digest);
  return absl::Base64Escape(
      absl::string_view(reinterpret_cast<const char*>(digest), SHA256_DIGEST_LENGTH));
}

// Only the page's own script and style run; it can fetch itself and nothing else.
const std::string& ContentSecurityPolicy() {
  static const std::string* csp = new std::string(absl::StrCat(
      "default-src 'none'; script-src 'sha256-", Sha256Base64(kScript), "'; style-src 'sha256-",
      Sha256Base64(kStyle),
      "'; connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; "
      "frame-ancestors 'none'"));
  return *csp;
}

std::string Rfc3339(absl::Time t) {
  if (t == absl::InfiniteFuture()) return "never";
  if (t == absl::InfinitePast()) return "-";
  return absl::FormatTime("%Y-%m-%d %H:%M:%S UTC", t, absl::UTCTimeZone());
}

std::string JsonTime(absl::Time t) {
  return absl::FormatTime("%Y-%m-%dT%H:%M:%E*SZ", t, absl::UTCTimeZone());
}

// "42s", "3m 05s", "2h 10m", "3d 4h".
std::string Approx(absl::Duration d) {
  if (d == absl::InfiniteDuration()) return "never";
  if (d < absl::ZeroDuration()) d = absl::ZeroDuration();
  const int64_t s = absl::ToInt64Seconds(d);
  if (s < 60) return absl::StrCat(s, "s");
  if (s < 3600) return absl::StrFormat("%dm %02ds", s / 60, s % 60);
  if (s < 86400) return absl::StrFormat("%dh %02dm", s / 3600, (s % 3600) / 60);
  return absl::StrFormat("%dd %dh", s / 86400, (s % 86400) / 3600);
}

std::string In(absl::Time t, absl::Time now) {
  if (t == absl::InfiniteFuture()) return "never";
  return absl::StrCat("in ", Approx(t - now));
}

std::string JsonEscape(absl::string_view s) {
  std::string out;
  out.reserve(s.size() + 2);
  out.push_back('"');
  for (unsigned char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '<': out += "\\u003c"; break;
      case '>': out += "\\u003e"; break;
      case '&': out += "\\u0026"; break;
      default:
        if (c < 0x20) {
          absl::StrAppendFormat(&out, "\\u%04x", c);
        } else {
          out.push_back(static_cast<char>(c));
        }
    }
  }
  out.push_back('"');
  return out;
}

std::string ProtoJson(const google::protobuf::Message& m) {
  std::string out;
  google::protobuf::util::JsonPrintOptions options;
  (void)google::protobuf::util::MessageToJsonString(m, &out, options);
  return out;
}

void AppendLimitRow(std::string& h, const StatusSnapshot::Credential& c,
                    const StatusSnapshot::Limit& limit, absl::Time now) {
  const LimitStatus& l = limit.status;
  const bool unlimited = l.kind == LimitKind::kUnlimited;
  absl::StrAppend(&h, "<tr class=\"limit\" data-credential=\"", HtmlEscape(c.name),
                  "\" data-limit=\"", HtmlEscape(l.name), "\" data-scope=\"", HtmlEscape(l.scope),
                  "\" data-used=\"", l.used, "\" data-remaining=\"",
                  unlimited ? std::string() : absl::StrCat(l.remaining), "\" data-capacity=\"",
                  unlimited ? std::string() : absl::StrCat(l.capacity), "\"><td>",
                  HtmlEscape(l.name), "</td><td>", HtmlEscape(l.scope), "</td><td>",
                  LimitKindName(l.kind), "</td><td>");
  if (unlimited) {
    absl::StrAppend(&h, "<span class=\"muted\">unlimited</span></td><td class=\"num\">", l.used,
                    "</td><td class=\"num\">-</td><td class=\"num\">-</td>");
  } else {
    const double cap = static_cast<double>(std::max<int64_t>(l.capacity, 1));
    const double pct = 100.0 * static_cast<double>(l.used) / cap;
    absl::StrAppendFormat(&h,
                          "<meter class=\"bar\" min=\"0\" max=\"%d\" value=\"%d\" low=\"%.1f\" "
                          "high=\"%.1f\" optimum=\"0\" title=\"%.1f%% used\"></meter> %.0f%%",
                          l.capacity, std::min(l.used, l.capacity), 0.5 * cap, 0.9 * cap, pct,
                          pct);
    const bool low = l.remaining * 10 < l.capacity;
    absl::StrAppend(&h, "</td><td class=\"num used\">", l.used, "</td><td class=\"num remaining",
                    low ? " bad" : "", "\">", l.remaining, "</td><td class=\"num capacity\">",
                    l.capacity, "</td>");
  }
  absl::StrAppend(&h, "<td class=\"reset\" title=\"", Rfc3339(l.reset), "\">", In(l.reset, now),
                  "</td><td class=\"num\">",
                  limit.window > absl::ZeroDuration() ? Approx(limit.window) : "-", "</td></tr>\n");
}

}  // namespace

absl::Duration WindowLength(const LimitSpec& spec, absl::Time now) {
  switch (spec.kind) {
    case LimitKind::kSliding:
    case LimitKind::kRolling:
      return spec.period;
    case LimitKind::kTokenBucket:
      // The time a drained bucket takes to refill.
      if (spec.rate <= 0) return spec.period;
      return spec.period * (static_cast<double>(spec.capacity) / static_cast<double>(spec.rate));
    case LimitKind::kCalendar: {
      int64_t start = 0, end = 0;
      CalendarWindow(spec.unit, spec.zone, absl::ToUnixNanos(now), &start, &end);
      return absl::Nanoseconds(end - start);
    }
    case LimitKind::kConcurrency:
    case LimitKind::kUnlimited:
      return absl::ZeroDuration();
  }
  return absl::ZeroDuration();
}

void ThrottleLog::Record(ThrottleRecord record) {
  absl::MutexLock lock(&mu_);
  records_.push_front(std::move(record));
  while (records_.size() > capacity_) records_.pop_back();
}

std::vector<ThrottleRecord> ThrottleLog::Recent() const {
  absl::MutexLock lock(&mu_);
  return std::vector<ThrottleRecord>(records_.begin(), records_.end());
}

std::string HtmlEscape(absl::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&#39;"; break;
      default: out.push_back(c);
    }
  }
  return out;
}

StatusSnapshot TakeStatusSnapshot(Ledger& ledger, const ThrottleLog* throttles,
                                  absl::string_view credential) {
  StatusSnapshot s;
  s.now = ledger.clock()->Now();
  const Policy policy = ledger.policy();
  std::vector<const CredentialSpec*> specs;
  for (const CredentialSpec& c : policy.credentials) {
    if (credential.empty() || c.name == credential) specs.push_back(&c);
  }
  std::sort(specs.begin(), specs.end(),
            [](const CredentialSpec* a, const CredentialSpec* b) { return a->name < b->name; });
  for (const CredentialSpec* spec : specs) {
    absl::StatusOr<std::vector<LimitStatus>> usage = ledger.Usage(spec->name);
    if (!usage.ok()) continue;  // removed by a reload since policy() was read
    absl::flat_hash_map<std::string, const LimitSpec*> by_name;
    for (const FeatureSpec& f : spec->features) {
      for (const LimitSpec& l : f.limits) by_name[absl::StrCat(f.name, ".", l.name)] = &l;
    }
    StatusSnapshot::Credential& c = s.credentials.emplace_back();
    c.name = spec->name;
    c.profile = spec->profile;
    for (LimitStatus& l : *usage) {
      if (l.cooldown) {
        c.cooldowns.push_back(std::move(l));
        continue;
      }
      StatusSnapshot::Limit& limit = c.limits.emplace_back();
      if (auto it = by_name.find(l.name); it != by_name.end()) {
        limit.window = WindowLength(*it->second, s.now);
      }
      limit.status = std::move(l);
    }
  }
  s.leases = ledger.Leases(credential);
  std::sort(s.leases.begin(), s.leases.end(), [](const LeaseInfo& a, const LeaseInfo& b) {
    return std::tie(a.expiry, a.credential) < std::tie(b.expiry, b.credential);
  });
  s.queues = ledger.Queues();
  if (!credential.empty()) {
    s.queues.erase(std::remove_if(s.queues.begin(), s.queues.end(),
                                  [&](const QueueInfo& q) { return q.credential != credential; }),
                   s.queues.end());
  }
  s.waiting = ledger.waiting();
  if (throttles != nullptr) s.throttles = throttles->Recent();
  return s;
}

std::string RenderStatusHtml(const StatusSnapshot& s) {
  std::string h;
  h.reserve(4096 + s.credentials.size() * 1500 + s.leases.size() * 300);
  int64_t cooling = 0;
  for (const auto& c : s.credentials) cooling += static_cast<int64_t>(c.cooldowns.size());
  absl::StrAppend(&h,
                  "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                  "<meta name=\"viewport\" content=\"width=device-width\">"
                  "<title>quotad status</title><style>",
                  kStyle,
                  "</style></head><body>\n<header><h1>quotad status</h1>"
                  "<label><input type=\"checkbox\" id=\"auto\" checked> refresh every 5s</label>"
                  "<a href=\"/api/usage\">JSON</a> <a href=\"/metrics\">metrics</a></header>\n");
  absl::StrAppend(&h, "<main id=\"content\" data-generated=\"", JsonTime(s.now), "\">\n",
                  "<p class=\"muted\" id=\"summary\">", Rfc3339(s.now), " &middot; <b>",
                  s.credentials.size(), "</b> credentials &middot; <b id=\"lease-count\">",
                  s.leases.size(), "</b> live leases &middot; <b id=\"waiting\">", s.waiting,
                  "</b> waiting &middot; <b id=\"cooling\">", cooling,
                  "</b> cooling down</p>\n");

  // Throttles and cooldowns first: they are what needs attention.
  absl::StrAppend(&h, "<h2>Recent throttles</h2>\n");
  if (s.throttles.empty()) {
    absl::StrAppend(&h, "<p class=\"muted\" id=\"no-throttles\">No throttle reported.</p>\n");
  } else {
    absl::StrAppend(&h,
                    "<table id=\"throttles\"><tr><th>reported</th><th>credential</th>"
                    "<th>feature</th><th>HTTP</th><th>cooldown until</th></tr>\n");
    for (const ThrottleRecord& t : s.throttles) {
      absl::StrAppend(&h, "<tr class=\"throttle\"><td>", Rfc3339(t.reported_at), " (",
                      Approx(s.now - t.reported_at), " ago)</td><td>", HtmlEscape(t.credential),
                      "</td><td>", HtmlEscape(t.feature), "</td><td class=\"num\">",
                      t.http_status, "</td><td>", Rfc3339(t.cooldown_until), "</td></tr>\n");
    }
    absl::StrAppend(&h, "</table>\n");
  }
  absl::StrAppend(&h, "<h2>Cooldowns</h2>\n");
  if (cooling == 0) {
    absl::StrAppend(&h, "<p class=\"muted\" id=\"no-cooldowns\">No feature is cooling down.</p>\n");
  } else {
    absl::StrAppend(&h,
                    "<table id=\"cooldowns\"><tr><th>credential</th><th>feature</th>"
                    "<th>ends</th><th>ends at</th></tr>\n");
    for (const auto& c : s.credentials) {
      for (const LimitStatus& l : c.cooldowns) {
        const absl::string_view feature =
            absl::string_view(l.name).substr(0, l.name.size() - std::string(".cooldown").size());
        absl::StrAppend(&h, "<tr class=\"cooldown\" data-credential=\"", HtmlEscape(c.name),
                        "\" data-feature=\"", HtmlEscape(feature), "\" data-until=\"",
                        JsonTime(l.reset), "\"><td>", HtmlEscape(c.name), "</td><td>",
                        HtmlEscape(feature), "</td><td class=\"bad\">", In(l.reset, s.now),
                        "</td><td>", Rfc3339(l.reset), "</td></tr>\n");
      }
    }
    absl::StrAppend(&h, "</table>\n");
  }

  absl::StrAppend(&h, "<h2>Waiting requests</h2>\n");
  if (s.queues.empty()) {
    absl::StrAppend(&h, "<p class=\"muted\" id=\"no-queues\">Nobody waits.</p>\n");
  } else {
    absl::StrAppend(&h,
                    "<table id=\"queues\"><tr><th>credential</th><th>feature</th><th>scope</th>"
                    "<th>waiters</th><th>held back by</th><th>head served</th></tr>\n");
    for (const QueueInfo& q : s.queues) {
      absl::StrAppend(&h, "<tr class=\"queue\"><td>", HtmlEscape(q.credential), "</td><td>",
                      HtmlEscape(q.feature), "</td><td>", HtmlEscape(q.scope),
                      "</td><td class=\"num\">", q.waiters, "</td><td>", HtmlEscape(q.limited_by),
                      "</td><td>", In(q.retry_at, s.now), "</td></tr>\n");
    }
    absl::StrAppend(&h, "</table>\n");
  }

  absl::StrAppend(&h, "<h2>Live leases</h2>\n");
  if (s.leases.empty()) {
    absl::StrAppend(&h, "<p class=\"muted\" id=\"no-leases\">No live lease.</p>\n");
  } else {
    absl::StrAppend(&h,
                    "<table id=\"leases\"><tr><th>credential</th><th>feature</th><th>scope</th>"
                    "<th>holder</th><th>cost</th><th>granted</th><th>expires</th></tr>\n");
    // Every grant is a lease: show the soonest to expire, and how many more there are.
    const size_t shown = std::min(s.leases.size(), kMaxLeasesShown);
    for (size_t i = 0; i < shown; ++i) {
      const LeaseInfo& l = s.leases[i];
      absl::StrAppend(&h, "<tr class=\"lease\" data-lease=\"", l.id.ToString(), "\"><td>",
                      HtmlEscape(l.credential), "</td><td>", HtmlEscape(l.feature), "</td><td>",
                      HtmlEscape(l.scope), "</td><td class=\"holder\">", HtmlEscape(l.holder),
                      "</td><td class=\"num\">", l.cost, "</td><td>",
                      Approx(s.now - l.granted_at), " ago</td><td title=\"", Rfc3339(l.expiry),
                      "\">", In(l.expiry, s.now), "</td></tr>\n");
    }
    absl::StrAppend(&h, "</table>\n");
    if (shown < s.leases.size()) {
      absl::StrAppend(&h, "<p class=\"muted\" id=\"more-leases\">and ", s.leases.size() - shown,
                      " more (see Admin.ListLeases)</p>\n");
    }
  }

  absl::StrAppend(&h, "<h2>Credentials</h2>\n");
  for (const auto& c : s.credentials) {
    absl::StrAppend(&h, "<section class=\"credential\" data-credential=\"", HtmlEscape(c.name),
                    "\"><h3>", HtmlEscape(c.name), " <span class=\"muted\">",
                    HtmlEscape(c.profile), "</span>");
    if (!c.cooldowns.empty()) absl::StrAppend(&h, " <span class=\"pill\">cooling down</span>");
    absl::StrAppend(&h,
                    "</h3>\n<table><tr><th>limit</th><th>scope</th><th>kind</th><th>usage</th>"
                    "<th>used</th><th>remaining</th><th>capacity</th><th>resets</th>"
                    "<th>window</th></tr>\n");
    for (const StatusSnapshot::Limit& l : c.limits) AppendLimitRow(h, c, l, s.now);
    absl::StrAppend(&h, "</table></section>\n");
  }
  absl::StrAppend(&h, "</main>\n<script>", kScript, "</script>\n</body></html>\n");
  return h;
}

std::string RenderCredentialJson(const StatusSnapshot& s, const StatusSnapshot::Credential& c) {
  v1::GetUsageResponse resp;
  resp.set_credential(c.name);
  resp.set_profile(c.profile);
  for (const StatusSnapshot::Limit& l : c.limits) LimitStatusToProto(l.status, resp.add_limits());
  for (const LimitStatus& l : c.cooldowns) LimitStatusToProto(l, resp.add_limits());
  TimeToProto(s.now, resp.mutable_observed_at());
  return ProtoJson(resp);
}

std::string RenderUsageJson(const StatusSnapshot& s) {
  std::string j;
  j.reserve(1024 + s.credentials.size() * 800);
  absl::StrAppend(&j, "{\"observedAt\":\"", JsonTime(s.now), "\",\"waiting\":", s.waiting,
                  ",\"credentials\":[");
  for (size_t i = 0; i < s.credentials.size(); ++i) {
    if (i > 0) j += ",";
    j += RenderCredentialJson(s, s.credentials[i]);
  }
  absl::StrAppend(&j, "],\"leaseCount\":", s.leases.size(), ",\"leases\":[");
  for (size_t i = 0; i < std::min(s.leases.size(), kMaxLeasesShown); ++i) {
    if (i > 0) j += ",";
    v1::Lease lease;
    LeaseToProto(s.leases[i], &lease);
    j += ProtoJson(lease);
  }
  j += "],\"queues\":[";
  for (size_t i = 0; i < s.queues.size(); ++i) {
    const QueueInfo& q = s.queues[i];
    absl::StrAppend(&j, i > 0 ? "," : "", "{\"credential\":", JsonEscape(q.credential),
                    ",\"feature\":", JsonEscape(q.feature), ",\"scope\":", JsonEscape(q.scope),
                    ",\"waiters\":", q.waiters, ",\"limitedBy\":", JsonEscape(q.limited_by));
    if (IsFinite(q.retry_at)) absl::StrAppend(&j, ",\"retryAt\":\"", JsonTime(q.retry_at), "\"");
    j += "}";
  }
  j += "],\"throttles\":[";
  for (size_t i = 0; i < s.throttles.size(); ++i) {
    const ThrottleRecord& t = s.throttles[i];
    absl::StrAppend(&j, i > 0 ? "," : "", "{\"credential\":", JsonEscape(t.credential),
                    ",\"feature\":", JsonEscape(t.feature), ",\"httpStatus\":", t.http_status,
                    ",\"reportedAt\":\"", JsonTime(t.reported_at), "\"");
    if (IsFinite(t.cooldown_until)) {
      absl::StrAppend(&j, ",\"cooldownUntil\":\"", JsonTime(t.cooldown_until), "\"");
    }
    j += "}";
  }
  j += "]}\n";
  return j;
}

std::optional<HttpReply> StatusPage::Handle(const HttpRequest& request) const {
  const bool page = request.path == "/" || request.path == "/index.html";
  const bool api = request.path == "/api/usage";
  if (!page && !api) return std::nullopt;
  HttpReply reply;
  reply.headers = {{"Cache-Control", "no-store"},
                   {"X-Content-Type-Options", "nosniff"},
                   {"Referrer-Policy", "no-referrer"},
                   {"X-Frame-Options", "DENY"},
                   {"Content-Security-Policy", ContentSecurityPolicy()}};
  if (request.method != "GET" && request.method != "HEAD") {
    reply.status = 405;
    reply.headers.emplace_back("Allow", "GET, HEAD");
    reply.body = "only GET and HEAD\n";
    return reply;
  }
  if (page) {
    reply.content_type = "text/html; charset=utf-8";
    reply.body = RenderStatusHtml(TakeStatusSnapshot(*ledger_, throttles_));
    return reply;
  }
  reply.content_type = "application/json";
  const std::optional<std::string> credential = QueryParam(request.query, "credential");
  if (!credential.has_value()) {
    reply.body = RenderUsageJson(TakeStatusSnapshot(*ledger_, throttles_));
    return reply;
  }
  StatusSnapshot s;
  if (!credential->empty()) s = TakeStatusSnapshot(*ledger_, throttles_, *credential);
  if (s.credentials.empty()) {
    reply.status = 404;
    reply.body = absl::StrCat("{\"error\":", JsonEscape(absl::StrCat("credential '", *credential,
                                                                    "' is not configured")),
                              "}\n");
    return reply;
  }
  reply.body = RenderCredentialJson(s, s.credentials.front());
  reply.body += "\n";
  return reply;
}

}  // namespace quotad
