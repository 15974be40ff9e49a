// Constructs a client (no server needed: an Acquire against a closed port is UNAVAILABLE) and
// prints the library's version.
#include <grpcpp/grpcpp.h>

#include <cstdio>

#include "quotad/client/prefetch.h"
#include "quotad/client/quota_client.h"

int main() {
  quotad::client::ClientOptions options;
  options.retry.max_attempts = 1;
  options.call_timeout = absl::Seconds(2);
  quotad::client::QuotaClient client(
      grpc::CreateChannel("127.0.0.1:1", grpc::InsecureChannelCredentials()), options);
  absl::StatusOr<quotad::client::Lease> lease = client.Acquire("virustotal/prod", "requests");
  std::printf("quotad_client %s acquire=%s\n", quotad::client::Version(),
              absl::StatusCodeToString(lease.status().code()).c_str());
  return lease.ok() ? 1 : 0;
}
