#ifndef QUOTAD_SERVICE_SERVER_LISTENER_H_
#define QUOTAD_SERVICE_SERVER_LISTENER_H_

#include <grpcpp/server_builder.h>
#include <sys/socket.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace quotad {

struct ListenerOptions {
  // host:port ("0.0.0.0:50051", "127.0.0.1:0", "[::]:0", "localhost:0"); port 0 picks one.
  std::string address;
  // Most connections open at once (handed to gRPC and not yet closed by it). A connection
  // beyond is accepted and closed at once (the client sees UNAVAILABLE and may retry).
  int64_t max_connections = 10000;
  // Self-probe: how often the listener dials its own port and checks that its accept loop took
  // the connection (zero: off), how long it waits, and after how many failures in a row
  // `on_wedged` runs.
  absl::Duration probe_interval = absl::Seconds(10);
  absl::Duration probe_timeout = absl::Seconds(5);
  int probe_failures = 3;
  // Called once (on the probe thread) when the accept loop stopped taking connections.
  std::function<void()> on_wedged;
  // Called on the accept thread: a connection was refused for `reason` ("connections": the
  // cap; "file_descriptors": accept() found no free descriptor and the connection was
  // dropped, see below).
  std::function<void(const char* reason)> on_refused;
};

// The gRPC port's listening socket and accept loop, in quotad's hands rather than gRPC's
// (issue 18, finding 2: gRPC 1.51 has no cap on a server's connections, and its listener stops
// accepting for good after accept() fails with EMFILE). Accepted sockets are handed to gRPC
// through ServerBuilder's external connection acceptor, which runs TLS and HTTP/2 on them as
// on its own.
//
// - Cap: at most `max_connections` handed to gRPC and still open. gRPC closes the sockets it
//   owns without telling anyone, so each handed-over socket is remembered as (fd, inode) and
//   counted as open while fstat(fd) still names that inode.
// - EMFILE/ENFILE: one descriptor is kept in reserve (/dev/null); when accept() finds none
//   free, the reserve is closed, the pending connection accepted and closed, and the reserve
//   reopened (libev's and nginx's answer), so the loop never spins and never stops.
// - Self-probe: see ListenerOptions.
//
// Thread-safe. Owns its socket and its two threads.
class Listener {
 public:
  // Binds and listens. kUnavailable when the address cannot be bound or is malformed.
  static absl::StatusOr<std::unique_ptr<Listener>> Bind(ListenerOptions options);
  ~Listener();

  Listener(const Listener&) = delete;
  Listener& operator=(const Listener&) = delete;

  int port() const { return port_; }

  // Starts the accept loop (and the probe), handing connections to `acceptor`, which must come
  // from the ServerBuilder of a started server.
  void Start(std::unique_ptr<grpc::experimental::ExternalConnectionAcceptor> acceptor);

  // Closes the listening socket and joins the threads. Connections handed over stay gRPC's.
  // Idempotent.
  void Stop() ABSL_LOCKS_EXCLUDED(mu_);

  // Connections handed to gRPC and still open (re-counted now).
  int64_t OpenConnections() ABSL_LOCKS_EXCLUDED(mu_);
  // Self-probes that failed in a row.
  int consecutive_probe_failures() const { return probe_failures_.load(); }

  // Tests only: while paused, the accept loop takes nothing (as a wedged gRPC listener).
  void PauseAcceptingForTest(bool paused) { paused_.store(paused); }

 private:
  Listener(ListenerOptions options, int fd, int port);
  void AcceptLoop();
  void ProbeLoop() ABSL_LOCKS_EXCLUDED(mu_);
  // One probe: true when the accept loop took the probe's connection within probe_timeout.
  bool ProbeOnce() ABSL_LOCKS_EXCLUDED(mu_);
  void AcceptOne() ABSL_LOCKS_EXCLUDED(mu_);
  // Our probe is noted; a connection beyond the cap is closed (*refused); any other is gRPC's.
  void HandOver(int fd, const sockaddr_storage& peer, bool* refused) ABSL_LOCKS_EXCLUDED(mu_);
  int64_t RecountLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const ListenerOptions options_;
  const int fd_;
  const int port_;
  int wake_[2] = {-1, -1};  // a pipe: a byte wakes the accept loop to stop
  int reserve_fd_ = -1;     // accept thread only
  std::unique_ptr<grpc::experimental::ExternalConnectionAcceptor> acceptor_;
  std::atomic<bool> paused_{false};
  std::atomic<int> probe_failures_{0};

  absl::Mutex mu_;
  absl::flat_hash_map<int, uint64_t> handed_ ABSL_GUARDED_BY(mu_);  // fd -> inode
  // Where the probe in flight dials from (the dialled address, its own port).
  bool probe_pending_ ABSL_GUARDED_BY(mu_) = false;
  sockaddr_storage probe_from_ ABSL_GUARDED_BY(mu_) = {};
  bool probe_taken_ ABSL_GUARDED_BY(mu_) = false;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  bool started_ = false;
  std::thread accept_thread_;
  std::thread probe_thread_;
};

}  // namespace quotad

#endif  // QUOTAD_SERVICE_SERVER_LISTENER_H_
