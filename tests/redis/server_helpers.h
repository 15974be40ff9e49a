#ifndef QUOTAD_TESTS_REDIS_SERVER_HELPERS_H_
#define QUOTAD_TESTS_REDIS_SERVER_HELPERS_H_

// The options of a quotad server in the shared-mode tests: in process, on a free loopback port,
// over the Redis at `redis_url`, with a fast sweeper (health follows Redis within 50 ms), no
// config watching and a short shutdown. Header-only.

#include <string>

#include "absl/time/time.h"
#include "service/server/server.h"

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

}  // namespace quotad::testing

#endif  // QUOTAD_TESTS_REDIS_SERVER_HELPERS_H_
