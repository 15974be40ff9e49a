#ifndef QUOTAD_TESTS_REDIS_SERVER_HELPERS_H_
#define QUOTAD_TESTS_REDIS_SERVER_HELPERS_H_

// The options of a quotad server in the shared-mode tests: in process, on a free loopback port,
// over the Redis at `redis_url`, with a fast sweeper (health follows Redis within 50 ms), no
// config watching and a short shutdown; and a wait until such a server serves. Header-only.

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "service/server/server.h"
#include "tests/support/eventually.h"

namespace quotad::testing {

inline ServerOptions SharedServerOptions(const std::string& config_path,
                                         const std::string& redis_url) {
  ServerOptions options;
  options.config_path = config_path;
  options.redis_url = redis_url;
  options.listen_address = "127.0.0.1:0";
  options.sweep_interval = absl::Milliseconds(50);
  options.config_watch_interval = absl::ZeroDuration();
  options.cq_threads = 2;
  options.shutdown_grace = absl::Seconds(2);
  return options;
}

// True once the quotad at `address` reports SERVING on the gRPC health service (connected to
// Redis, its library loaded), polled for at most `timeout`. QuotadServer::Start returns after
// at most connect_wait even when Redis is not answering yet: on a loaded machine its first calls
// can be refused UNAVAILABLE, so a test waits for this before it asks a fresh replica anything.
inline bool ServesWithin(const std::string& address, absl::Duration timeout = absl::Seconds(20)) {
  using grpc::health::v1::Health;
  using grpc::health::v1::HealthCheckRequest;
  using grpc::health::v1::HealthCheckResponse;
  std::unique_ptr<Health::Stub> health =
      Health::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  return Eventually(
      [&] {
        grpc::ClientContext ctx;
        ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(2)));
        HealthCheckResponse resp;
        return health->Check(&ctx, HealthCheckRequest(), &resp).ok() &&
               resp.status() == HealthCheckResponse::SERVING;
      },
      timeout, absl::Milliseconds(10));
}

}  // namespace quotad::testing

#endif  // QUOTAD_TESTS_REDIS_SERVER_HELPERS_H_
