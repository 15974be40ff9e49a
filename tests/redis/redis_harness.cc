#include "tests/redis/redis_harness.h"

#include <arpa/inet.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "tests/support/eventually.h"

namespace quotad {
namespace testing {
namespace {

// Polling a child process and a socket is the only way to learn that an external server is up;
// each wait below is bounded by a deadline.
constexpr absl::Duration kPollStep = absl::Milliseconds(10);

std::string ReplyText(const redisReply* r) {
  switch (r->type) {
    case REDIS_REPLY_INTEGER:
      return absl::StrCat(r->integer);
    case REDIS_REPLY_NIL:
      return "(nil)";
    case REDIS_REPLY_ERROR:
      return absl::StrCat("ERR:", std::string(r->str, r->len));
    case REDIS_REPLY_ARRAY: {
      std::vector<std::string> parts;
      for (size_t i = 0; i < r->elements; ++i) parts.push_back(ReplyText(r->element[i]));
      return absl::StrJoin(parts, " ");
    }
    default:
      return std::string(r->str, r->len);
  }
}

}  // namespace

absl::StatusOr<int> PickFreePort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return absl::InternalError(absl::StrCat("socket: ", strerror(errno)));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    const std::string err = strerror(errno);
    close(fd);
    return absl::InternalError(absl::StrCat("bind: ", err));
  }
  close(fd);
  return ntohs(addr.sin_port);
}

RedisServer::RedisServer(RedisServerOptions options) : options_(std::move(options)) {}

absl::StatusOr<std::unique_ptr<RedisServer>> RedisServer::Start(RedisServerOptions options) {
  std::unique_ptr<RedisServer> server(new RedisServer(std::move(options)));
  const char* tmp = getenv("TMPDIR");
  std::string templ = absl::StrCat(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp",
                                   "/quotad-redis-XXXXXX");
  if (mkdtemp(templ.data()) == nullptr) {
    return absl::InternalError(absl::StrCat("mkdtemp: ", strerror(errno)));
  }
  server->dir_ = templ;
  absl::Status last = absl::UnavailableError("no port tried");
  for (int attempt = 0; attempt < server->options_.port_attempts; ++attempt) {
    absl::StatusOr<int> port = PickFreePort();
    if (!port.ok()) return port.status();
    server->port_ = *port;
    last = server->sentinel() ? server->WriteSentinelConfig() : absl::OkStatus();
    if (last.ok()) last = server->Spawn();
    if (last.ok()) last = server->WaitReady();
    if (last.ok()) return server;
    server->Stop(SIGKILL).IgnoreError();  // e.g. the port was taken meanwhile: try another
  }
  return last;
}

RedisServer::~RedisServer() {
  Stop(SIGKILL).IgnoreError();
  if (!dir_.empty()) {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
}

absl::Status RedisServer::WriteSentinelConfig() {
  const std::string& name = options_.monitor_name;
  const std::string text =
      absl::StrCat("port ", port_, "\nbind ", host_, "\ndaemonize no\ndir ", dir_,
                   "\nlogfile sentinel.log\nsentinel resolve-hostnames no\n", "sentinel monitor ",
                   name, " ", host_, " ", options_.monitor_port, " ", options_.quorum,
                   "\nsentinel down-after-milliseconds ", name, " ",
                   absl::ToInt64Milliseconds(options_.down_after), "\nsentinel failover-timeout ",
                   name, " ", absl::ToInt64Milliseconds(options_.failover_timeout),
                   "\nsentinel parallel-syncs ", name, " 1\n");
  std::ofstream out(absl::StrCat(dir_, "/sentinel.conf"), std::ios::trunc);
  out << text;
  out.close();
  if (!out) return absl::InternalError(absl::StrCat("cannot write ", dir_, "/sentinel.conf"));
  return absl::OkStatus();
}

absl::Status RedisServer::Spawn() {
  // Everything the child needs is built before fork(): after it, only async-signal-safe calls.
  const char* binary = sentinel() ? "redis-sentinel" : "redis-server";
  std::vector<std::string> args = {"redis-server",
                                   "--port", absl::StrCat(port_),
                                   "--bind", host_,
                                   "--dir", dir_,
                                   "--save", "",
                                   "--appendonly", options_.appendonly ? "yes" : "no",
                                   "--appendfsync", options_.appendfsync,
                                   "--daemonize", "no",
                                   "--protected-mode", "yes",
                                   "--logfile", "redis.log"};
  if (sentinel()) args = {"redis-sentinel", absl::StrCat(dir_, "/sentinel.conf")};
  args.insert(args.end(), options_.extra_args.begin(), options_.extra_args.end());
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid < 0) return absl::InternalError(absl::StrCat("fork: ", strerror(errno)));
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127);  // the parent died before prctl
    execvp(binary, argv.data());
    _exit(127);
  }
  pid_ = pid;
  return absl::OkStatus();
}

absl::Status RedisServer::WaitReady() {
  bool exited = false, answered = false;
  testing::Eventually(
      [&] {
        int wstatus = 0;
        exited = waitpid(pid_, &wstatus, WNOHANG) == pid_;
        if (exited) return true;
        absl::StatusOr<std::string> pong = Command({"PING"});
        answered = pong.ok() && *pong == "PONG";
        return answered;
      },
      options_.start_timeout, kPollStep);
  if (exited) {
    pid_ = -1;
    return absl::UnavailableError(absl::StrCat(sentinel() ? "redis-sentinel" : "redis-server",
                                               " on port ", port_, " exited early; see ", dir_,
                                               sentinel() ? "/sentinel.log" : "/redis.log"));
  }
  if (answered) return absl::OkStatus();
  return absl::DeadlineExceededError(
      absl::StrCat("redis-server on port ", port_, " did not answer PING in time"));
}

absl::Status RedisServer::Stop(int signal, absl::Duration grace) {
  if (pid_ <= 0) return absl::OkStatus();
  kill(pid_, signal);
  const bool gone = testing::Eventually(
      [&] {
        int wstatus = 0;
        const pid_t r = waitpid(pid_, &wstatus, WNOHANG);
        return r == pid_ || (r < 0 && errno == ECHILD);
      },
      grace, kPollStep);
  if (!gone) {
    kill(pid_, SIGKILL);
    int wstatus = 0;
    waitpid(pid_, &wstatus, 0);  // SIGKILL cannot be ignored: this returns
  }
  pid_ = -1;
  return absl::OkStatus();
}

absl::Status RedisServer::Restart() {
  if (pid_ > 0) return absl::FailedPreconditionError("redis-server is still running");
  // The port was ours a moment ago; redis-server binds with SO_REUSEADDR.
  absl::Status s = Spawn();
  if (s.ok()) s = WaitReady();
  return s;
}

absl::Status RedisServer::Restart(std::vector<std::string> extra_args) {
  if (pid_ > 0) return absl::FailedPreconditionError("redis-server is still running");
  options_.extra_args = std::move(extra_args);
  return Restart();
}

absl::StatusOr<std::string> RedisServer::Command(const std::vector<std::string>& args) const {
  timeval tv{1, 0};
  redisContext* c = redisConnectWithTimeout(host_.c_str(), port_, tv);
  if (c == nullptr || c->err != 0) {
    const std::string err = c != nullptr ? c->errstr : "out of memory";
    if (c != nullptr) redisFree(c);
    return absl::UnavailableError(err);
  }
  redisSetTimeout(c, timeval{5, 0});
  std::vector<const char*> argv;
  std::vector<size_t> lens;
  for (const std::string& a : args) {
    argv.push_back(a.data());
    lens.push_back(a.size());
  }
  auto* reply = static_cast<redisReply*>(
      redisCommandArgv(c, static_cast<int>(argv.size()), argv.data(), lens.data()));
  if (reply == nullptr) {
    const std::string err = c->errstr;
    redisFree(c);
    return absl::UnavailableError(err);
  }
  std::string text = ReplyText(reply);
  freeReplyObject(reply);
  redisFree(c);
  return text;
}

int64_t RedisServer::Calls(const std::string& command) const {
  absl::StatusOr<std::string> info = Command({"INFO", "commandstats"});
  if (!info.ok()) return -1;
  const std::string mark = absl::StrCat("cmdstat_", command, ":calls=");
  const size_t at = info->find(mark);
  if (at == std::string::npos) return 0;
  const size_t from = at + mark.size();
  int64_t v = 0;
  if (!absl::SimpleAtoi(info->substr(from, info->find(',', from) - from), &v)) return -1;
  return v;
}

}  // namespace testing
}  // namespace quotad
