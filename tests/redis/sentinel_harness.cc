#include "tests/redis/sentinel_harness.h"

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "tests/support/child_process.h"
#include "tests/support/eventually.h"

namespace quotad {
namespace testing {
namespace {

constexpr absl::Duration kPollStep = absl::Milliseconds(20);

bool IsMaster(const RedisServer& s) {
  absl::StatusOr<std::string> role = s.Command({"ROLE"});
  return role.ok() && absl::StartsWith(*role, "master");
}

}  // namespace

std::string FieldOf(const std::string& reply, const std::string& field) {
  if (reply.find('\n') != std::string::npos) {  // INFO: "field:value" lines
    for (absl::string_view line : absl::StrSplit(reply, '\n')) {
      line = absl::StripTrailingAsciiWhitespace(line);
      if (absl::ConsumePrefix(&line, field) && absl::ConsumePrefix(&line, ":")) {
        return std::string(line);
      }
    }
    return "";
  }
  std::vector<std::string> words = absl::StrSplit(reply, ' ');
  for (size_t i = 0; i + 1 < words.size(); i += 2) {
    if (words[i] == field) return words[i + 1];
  }
  return "";
}

absl::StatusOr<std::unique_ptr<SentinelGroup>> SentinelGroup::Start(SentinelGroupOptions options) {
  std::unique_ptr<SentinelGroup> g(new SentinelGroup(std::move(options)));
  const SentinelGroupOptions& o = g->options_;
  RedisServerOptions data;
  data.appendonly = o.appendonly;
  data.appendfsync = "everysec";
  absl::StatusOr<std::unique_ptr<RedisServer>> primary = RedisServer::Start(data);
  if (!primary.ok()) return primary.status();
  g->servers_.push_back(*std::move(primary));
  RedisServerOptions replica_options = data;
  replica_options.extra_args = {"--replicaof", "127.0.0.1", absl::StrCat(g->servers_[0]->port())};
  absl::StatusOr<std::unique_ptr<RedisServer>> replica = RedisServer::Start(replica_options);
  if (!replica.ok()) return replica.status();
  g->servers_.push_back(*std::move(replica));
  for (int i = 0; i < o.sentinels; ++i) {
    RedisServerOptions so;
    so.monitor_name = o.master_name;
    so.monitor_port = g->servers_[0]->port();
    so.quorum = o.quorum;
    so.down_after = o.down_after;
    so.failover_timeout = o.failover_timeout;
    absl::StatusOr<std::unique_ptr<RedisServer>> s = RedisServer::Start(so);
    if (!s.ok()) return s.status();
    g->sentinels_.push_back(*std::move(s));
  }
  if (!Eventually([&] { return g->Ready(); }, o.start_timeout, kPollStep)) {
    return absl::DeadlineExceededError(
        absl::StrCat("the replica did not sync or the sentinels did not find each other within ",
                     absl::FormatDuration(o.start_timeout), "; see the logs under ",
                     g->servers_[0]->dir(), " and ", g->sentinels_[0]->dir()));
  }
  return g;
}

bool SentinelGroup::Ready() const {
  absl::StatusOr<std::string> link = servers_[1]->Command({"INFO", "replication"});
  if (!link.ok() || FieldOf(*link, "master_link_status") != "up") return false;
  const std::string others = absl::StrCat(sentinels_.size() - 1);
  for (const auto& s : sentinels_) {
    absl::StatusOr<std::string> m = s->Command({"SENTINEL", "MASTER", options_.master_name});
    if (!m.ok() || FieldOf(*m, "num-slaves") != "1" ||
        FieldOf(*m, "num-other-sentinels") != others) {
      return false;
    }
    // The replica as the sentinel sees it: reachable, its link to the primary up.
    absl::StatusOr<std::string> r = s->Command({"SENTINEL", "REPLICAS", options_.master_name});
    if (!r.ok() || FieldOf(*r, "flags") != "slave" || FieldOf(*r, "master-link-status") != "ok") {
      return false;
    }
  }
  return true;
}

std::string SentinelGroup::url() const {
  std::vector<std::string> at;
  for (const auto& s : sentinels_) at.push_back(absl::StrCat(s->host(), ":", s->port()));
  return absl::StrCat("redis-sentinel://", absl::StrJoin(at, ","), "/", options_.master_name);
}

absl::StatusOr<int> SentinelGroup::NamedPrimaryPort() const {
  absl::Status last = absl::UnavailableError("no sentinel");
  for (const auto& s : sentinels_) {
    absl::StatusOr<std::string> r =
        s->Command({"SENTINEL", "GET-MASTER-ADDR-BY-NAME", options_.master_name});
    if (!r.ok()) {
      last = r.status();
      continue;
    }
    std::vector<std::string> parts = absl::StrSplit(*r, ' ');
    int port = 0;
    if (parts.size() == 2 && absl::SimpleAtoi(parts[1], &port)) return port;
    last = absl::InternalError(absl::StrCat("sentinel answered '", *r, "'"));
  }
  return last;
}

RedisServer* SentinelGroup::ServerOnPort(int port) {
  for (auto& s : servers_) {
    if (s->port() == port) return s.get();
  }
  return nullptr;
}

absl::Status SentinelGroup::Failover(absl::Duration timeout) {
  std::string answer;
  const bool ok = Eventually(
      [&] {
        absl::StatusOr<std::string> r =
            sentinels_[0]->Command({"SENTINEL", "FAILOVER", options_.master_name});
        answer = r.ok() ? *r : r.status().ToString();
        return answer == "OK";
      },
      timeout, kPollStep);
  if (ok) return absl::OkStatus();
  return absl::UnavailableError(absl::StrCat("SENTINEL FAILOVER answered ", answer));
}

absl::StatusOr<int> SentinelGroup::WaitForNewPrimary(int old_port, absl::Duration timeout) {
  int port = 0;
  const bool ok = Eventually(
      [&] {
        port = 0;
        for (const auto& s : sentinels_) {
          absl::StatusOr<std::string> r =
              s->Command({"SENTINEL", "GET-MASTER-ADDR-BY-NAME", options_.master_name});
          std::vector<std::string> parts = absl::StrSplit(r.ok() ? *r : "", ' ');
          int p = 0;
          if (parts.size() != 2 || !absl::SimpleAtoi(parts[1], &p) || p == old_port ||
              (port != 0 && p != port)) {
            return false;
          }
          port = p;
        }
        RedisServer* s = ServerOnPort(port);
        return s != nullptr && IsMaster(*s);
      },
      timeout, kPollStep);
  if (ok) return port;
  return absl::DeadlineExceededError(absl::StrCat("no new primary (other than port ", old_port,
                                                  ") within ", absl::FormatDuration(timeout)));
}

std::string SentinelGroup::Events() const {
  std::string out;
  for (const auto& s : sentinels_) {
    const std::string log = ReadFile(absl::StrCat(s->dir(), "/sentinel.log"));
    for (absl::string_view line : absl::StrSplit(log, '\n')) {
      for (absl::string_view event : {"+sdown", "-sdown", "+odown", "+switch-master",
                                      "+promoted-slave", "+convert-to-slave", "+failover-end",
                                      "-failover-abort", "+selected-slave"}) {
        if (absl::StrContains(line, event)) {
          absl::StrAppend(&out, s->port(), ": ", line, "\n");
          break;
        }
      }
    }
  }
  return out;
}

}  // namespace testing
}  // namespace quotad
