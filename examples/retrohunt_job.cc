// A Retrohunt-like long job: holds one concurrency slot (retrohunt_jobs) for far longer than its
// lease TTL. The client renews the lease in the background; if quotad loses it anyway, the job
// sees lost() and stops instead of running without a slot.
//
//   retrohunt_job --server=localhost:50051 --credential=virustotal/premium
//                 --feature=retrohunt_jobs --ttl=30s --run=5m

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <cstdio>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/time/clock.h"
#include "quotad/client/quota_client.h"

ABSL_FLAG(std::string, server, "localhost:50051", "quotad address");
ABSL_FLAG(std::string, credential, "virustotal/premium", "the API key's name in quotad");
ABSL_FLAG(std::string, feature, "retrohunt_jobs", "a feature with a concurrency limit");
ABSL_FLAG(absl::Duration, ttl, absl::Seconds(30), "lease TTL (renewed at about a third of it)");
ABSL_FLAG(absl::Duration, run, absl::Minutes(5), "how long the job runs");
ABSL_FLAG(absl::Duration, wait, absl::Minutes(10), "how long to wait for a free slot");

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  quotad::client::ClientOptions client_options;
  client_options.holder = "retrohunt_job";
  quotad::client::QuotaClient quota(
      grpc::CreateChannel(absl::GetFlag(FLAGS_server), grpc::InsecureChannelCredentials()),
      client_options);

  std::atomic<bool> lost{false};
  quotad::client::AcquireOptions options;
  options.lease_ttl = absl::GetFlag(FLAGS_ttl);
  options.client_wait = absl::GetFlag(FLAGS_wait);  // queue for a slot client-side
  options.on_lost = [&](const absl::Status& why) {
    std::fprintf(stderr, "slot lost: %s\n", why.ToString().c_str());
    lost = true;
  };
  absl::StatusOr<quotad::client::Lease> slot =
      quota.Acquire(absl::GetFlag(FLAGS_credential), absl::GetFlag(FLAGS_feature), options);
  if (!slot.ok()) {
    std::fprintf(stderr, "acquire: %s\n", slot.status().ToString().c_str());
    return 1;
  }
  if (!slot->granted()) {
    std::fprintf(stderr, "no slot: %s\n", slot->limited_by().c_str());
    return 1;
  }
  std::printf("retrohunt_job started lease=%s\n", slot->id().c_str());

  // The job: scan in steps; stop when the slot is gone.
  const absl::Time start = absl::Now();
  const absl::Time first_expiry = slot->expires_at();
  while (absl::Now() - start < absl::GetFlag(FLAGS_run)) {
    if (lost) return 1;
    absl::SleepFor(absl::Milliseconds(100));  // one scan step
  }
  std::printf("retrohunt_job done ran=%s ttl=%s renewed_past_first_expiry=%s\n",
              absl::FormatDuration(absl::Now() - start).c_str(),
              absl::FormatDuration(absl::GetFlag(FLAGS_ttl)).c_str(),
              slot->expires_at() > first_expiry ? "yes" : "no");
  return slot->Release().ok() ? 0 : 1;  // or just let `slot` go out of scope
}
