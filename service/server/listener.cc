#include "service/server/listener.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

namespace quotad {
namespace {

// The port of a socket address; 0 for other families.
int PortOf(const sockaddr_storage& a) {
  if (a.ss_family == AF_INET) return ntohs(reinterpret_cast<const sockaddr_in&>(a).sin_port);
  if (a.ss_family == AF_INET6) return ntohs(reinterpret_cast<const sockaddr_in6&>(a).sin6_port);
  return 0;
}

// Same family, address and port.
bool SameEndpoint(const sockaddr_storage& a, const sockaddr_storage& b) {
  if (a.ss_family != b.ss_family || PortOf(a) != PortOf(b)) return false;
  if (a.ss_family == AF_INET) {
    return reinterpret_cast<const sockaddr_in&>(a).sin_addr.s_addr ==
           reinterpret_cast<const sockaddr_in&>(b).sin_addr.s_addr;
  }
  if (a.ss_family == AF_INET6) {
    return std::memcmp(&reinterpret_cast<const sockaddr_in6&>(a).sin6_addr,
                       &reinterpret_cast<const sockaddr_in6&>(b).sin6_addr,
                       sizeof(in6_addr)) == 0;
  }
  return false;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Listener>> Listener::Bind(ListenerOptions options) {
  const std::string& address = options.address;
  const size_t colon = address.rfind(':');
  int port = -1;
  if (colon == std::string::npos || !absl::SimpleAtoi(address.substr(colon + 1), &port) ||
      port < 0 || port > 65535) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", address,
                                               ": expected host:port"));
  }
  absl::string_view host_view = absl::string_view(address).substr(0, colon);
  if (absl::ConsumePrefix(&host_view, "[")) absl::ConsumeSuffix(&host_view, "]");
  const std::string host(host_view);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* found = nullptr;
  const std::string service = std::to_string(port);
  if (int rc = getaddrinfo(host.empty() ? nullptr : host.c_str(), service.c_str(), &hints, &found);
      rc != 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen on ", address, ": ", gai_strerror(rc)));
  }
  std::string error = "no address";
  int fd = -1;
  for (addrinfo* ai = found; ai != nullptr && fd < 0; ai = ai->ai_next) {
    fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) {
      error = std::strerror(errno);
      continue;
    }
    const int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));  // not SO_REUSEPORT
    if (ai->ai_family == AF_INET6) {
      const int zero = 0;  // "[::]" takes IPv4 too
      setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero));
    }
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || listen(fd, SOMAXCONN) != 0) {
      error = std::strerror(errno);
      close(fd);
      fd = -1;
    }
  }
  freeaddrinfo(found);
  if (fd < 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", address, ": ", error));
  }
  sockaddr_storage bound{};
  socklen_t len = sizeof(bound);
  getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &len);
  return std::unique_ptr<Listener>(new Listener(std::move(options), fd, PortOf(bound)));
}

Listener::Listener(ListenerOptions options, int fd, int port)
    : options_(std::move(options)), fd_(fd), port_(port) {
  if (pipe2(wake_, O_CLOEXEC | O_NONBLOCK) != 0) wake_[0] = wake_[1] = -1;
  reserve_fd_ = open("/dev/null", O_RDONLY | O_CLOEXEC);
}

Listener::~Listener() {
  Stop();
  close(fd_);
  if (wake_[0] >= 0) close(wake_[0]);
  if (wake_[1] >= 0) close(wake_[1]);
  if (reserve_fd_ >= 0) close(reserve_fd_);
}

void Listener::Start(std::unique_ptr<grpc::experimental::ExternalConnectionAcceptor> acceptor) {
  acceptor_ = std::move(acceptor);
  started_ = true;
  accept_thread_ = std::thread([this] { AcceptLoop(); });
  if (options_.probe_interval > absl::ZeroDuration()) {
    probe_thread_ = std::thread([this] { ProbeLoop(); });
  }
}

void Listener::Stop() {
  {
    absl::MutexLock lock(&mu_);
    if (stop_) return;
    stop_ = true;
  }
  if (wake_[1] >= 0) {
    const char byte = 0;
    (void)!write(wake_[1], &byte, 1);
  }
  if (accept_thread_.joinable()) accept_thread_.join();
  if (probe_thread_.joinable()) probe_thread_.join();
  // No new connection from here on: the kernel refuses them instead of queueing them.
  shutdown(fd_, SHUT_RDWR);
}

void Listener::AcceptLoop() {
  for (;;) {
    pollfd fds[2] = {{fd_, POLLIN, 0}, {wake_[0], POLLIN, 0}};
    // While paused (tests), poll only for the stop byte, as a listener that stopped accepting.
    const int n = poll(paused_.load() ? fds + 1 : fds, paused_.load() ? 1 : 2,
                       paused_.load() ? 50 : -1);
    {
      absl::MutexLock lock(&mu_);
      if (stop_) return;
    }
    if (n <= 0 || paused_.load()) continue;
    if (fds[0].revents & POLLIN) AcceptOne();
  }
}

void Listener::AcceptOne() {
  sockaddr_storage peer{};
  socklen_t len = sizeof(peer);
  int fd = accept4(fd_, reinterpret_cast<sockaddr*>(&peer), &len, SOCK_CLOEXEC | SOCK_NONBLOCK);
  if (fd < 0) {
    if (errno == EMFILE || errno == ENFILE) {
      // No descriptor for the connection: drop it with the reserve's, or poll() would report
      // it again at once and the loop spin.
      if (reserve_fd_ >= 0) close(reserve_fd_);
      const int dropped = accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (dropped >= 0) close(dropped);
      reserve_fd_ = open("/dev/null", O_RDONLY | O_CLOEXEC);
      if (options_.on_refused) options_.on_refused("file_descriptors");
    }
    return;  // EAGAIN, ECONNABORTED, EINTR...: poll again
  }
  bool refused = false;
  HandOver(fd, peer, &refused);
  if (refused && options_.on_refused) options_.on_refused("connections");
}

void Listener::HandOver(int fd, const sockaddr_storage& peer, bool* refused) {
  absl::MutexLock lock(&mu_);
  if (probe_pending_ && SameEndpoint(peer, probe_from_)) {
    probe_taken_ = true;  // our own probe: proof that the loop accepts; not gRPC's
    close(fd);
    return;
  }
  if (static_cast<int64_t>(handed_.size()) >= options_.max_connections &&
      RecountLocked() >= options_.max_connections) {
    close(fd);
    *refused = true;
    return;
  }
  struct stat st;
  if (fstat(fd, &st) != 0) {
    close(fd);
    return;
  }
  handed_[fd] = st.st_ino;
  grpc::experimental::ExternalConnectionAcceptor::NewConnectionParameters p;
  p.listener_fd = fd_;
  p.fd = fd;
  acceptor_->HandleNewConnection(&p);  // gRPC owns fd from here on
}

int64_t Listener::RecountLocked() {
  for (auto it = handed_.begin(); it != handed_.end();) {
    struct stat st;
    if (fstat(it->first, &st) != 0 || st.st_ino != it->second || !S_ISSOCK(st.st_mode)) {
      handed_.erase(it++);
    } else {
      ++it;
    }
  }
  return static_cast<int64_t>(handed_.size());
}

int64_t Listener::OpenConnections() {
  absl::MutexLock lock(&mu_);
  return RecountLocked();
}

void Listener::ProbeLoop() {
  bool reported = false;
  for (;;) {
    {
      absl::MutexLock lock(&mu_);
      if (mu_.AwaitWithTimeout(absl::Condition(&stop_), options_.probe_interval)) return;
    }
    if (ProbeOnce()) {
      probe_failures_.store(0);
      continue;
    }
    const int failures = probe_failures_.fetch_add(1) + 1;
    if (failures >= options_.probe_failures && !reported) {
      reported = true;
      if (options_.on_wedged) options_.on_wedged();
    }
  }
}

bool Listener::ProbeOnce() {
  sockaddr_storage target{};
  socklen_t len = sizeof(target);
  if (getsockname(fd_, reinterpret_cast<sockaddr*>(&target), &len) != 0) return false;
  // A wildcard address is dialled on loopback.
  if (target.ss_family == AF_INET) {
    auto& a = reinterpret_cast<sockaddr_in&>(target);
    if (a.sin_addr.s_addr == htonl(INADDR_ANY)) a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  } else if (target.ss_family == AF_INET6) {
    auto& a = reinterpret_cast<sockaddr_in6&>(target);
    if (IN6_IS_ADDR_UNSPECIFIED(&a.sin6_addr)) a.sin6_addr = in6addr_loopback;
  }
  const int fd = socket(target.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return false;  // out of descriptors ourselves: counts as a failure
  // Bound first, so that the accept loop knows the probe's port before it can see it.
  sockaddr_storage local = target;
  if (local.ss_family == AF_INET) {
    reinterpret_cast<sockaddr_in&>(local).sin_port = 0;
  } else {
    reinterpret_cast<sockaddr_in6&>(local).sin6_port = 0;
  }
  socklen_t local_len = len;
  bool taken = false;
  if (bind(fd, reinterpret_cast<sockaddr*>(&local), len) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr*>(&local), &local_len) == 0) {
    {
      absl::MutexLock lock(&mu_);
      probe_from_ = local;
      probe_pending_ = true;
      probe_taken_ = false;
    }
    const absl::Time deadline = absl::Now() + options_.probe_timeout;
    if (connect(fd, reinterpret_cast<sockaddr*>(&target), len) == 0 || errno == EINPROGRESS) {
      absl::MutexLock lock(&mu_);
      mu_.AwaitWithDeadline(absl::Condition(
                                +[](Listener* l) ABSL_EXCLUSIVE_LOCKS_REQUIRED(l->mu_) {
                                  return l->probe_taken_ || l->stop_;
                                },
                                this),
                            deadline);
      taken = probe_taken_ || stop_;
    }
    absl::MutexLock lock(&mu_);
    probe_pending_ = false;
  }
  close(fd);
  return taken;
}

}  // namespace quotad
