// A worker process for client_test: takes a renewed concurrency lease and holds it until killed.
//
//   lease_holder SERVER CREDENTIAL FEATURE TTL_MS
//
// Prints `held lease=<id> ` once granted; exits 1 on an error or a denial.

#include <grpcpp/grpcpp.h>

#include <cstdio>
#include <cstdlib>

#include "absl/time/clock.h"
#include "quotad/client/quota_client.h"

int main(int argc, char** argv) {
  if (argc != 5) {
    std::fprintf(stderr, "usage: lease_holder SERVER CREDENTIAL FEATURE TTL_MS\n");
    return 2;
  }
  quotad::client::ClientOptions client_options;
  client_options.holder = "lease_holder";
  quotad::client::QuotaClient client(
      grpc::CreateChannel(argv[1], grpc::InsecureChannelCredentials()), client_options);
  quotad::client::AcquireOptions options;
  options.lease_ttl = absl::Milliseconds(std::atoi(argv[4]));
  absl::StatusOr<quotad::client::Lease> lease = client.Acquire(argv[2], argv[3], options);
  if (!lease.ok() || !lease->granted()) {
    std::fprintf(stderr, "not held: %s\n",
                 lease.ok() ? lease->limited_by().c_str() : lease.status().ToString().c_str());
    return 1;
  }
  std::printf("held lease=%s \n", lease->id().c_str());
  std::fflush(stdout);
  while (!lease->lost()) absl::SleepFor(absl::Milliseconds(100));
  std::fprintf(stderr, "lost: %s\n", lease->lost_status().ToString().c_str());
  return 1;
}
