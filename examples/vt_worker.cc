// A VirusTotal-like worker: for each file, look the hash up first (one unit), upload only when
// the service does not know the file (another unit), and report every upstream answer to quotad
// so that it learns the upstream's own count and throttles.
//
//   vt_worker --server=localhost:50051 --credential=virustotal/prod --files=20
//
// The upstream is a stand-in (FakeVirusTotal) that knows every third file and sends VirusTotal's
// rate-limit headers; replace it with your HTTP client.

#include <grpcpp/grpcpp.h>

#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "quotad/client/quota_client.h"

ABSL_FLAG(std::string, server, "localhost:50051", "quotad address");
ABSL_FLAG(std::string, credential, "virustotal/prod", "the API key's name in quotad");
ABSL_FLAG(std::string, feature, "requests", "the feature every call is charged to");
ABSL_FLAG(int, files, 10, "how many files to scan");
ABSL_FLAG(absl::Duration, wait, absl::Minutes(2), "how long to wait for quota per call");

namespace {

struct HttpAnswer {
  int status;
  std::vector<quotad::client::Header> headers;
  std::string body;
};

// Stands in for https://www.virustotal.com/api/v3: GET /files/{hash}, POST /files.
class FakeVirusTotal {
 public:
  HttpAnswer GetFile(const std::string& sha256) {
    ++calls_;
    if (known_.count(sha256) > 0) return Answer(200, R"({"data":{"type":"file"}})");
    return Answer(404, R"({"error":{"code":"NotFoundError"}})");
  }
  HttpAnswer Upload(const std::string& sha256) {
    ++calls_;
    known_[sha256] = true;
    return Answer(200, R"({"data":{"type":"analysis"}})");
  }
  void Know(const std::string& sha256) { known_[sha256] = true; }

 private:
  HttpAnswer Answer(int status, std::string body) {
    return {
        status,
        {{"X-RateLimit-Limit", "1000"}, {"X-RateLimit-Remaining", std::to_string(1000 - calls_)}},
        std::move(body)};
  }
  std::map<std::string, bool> known_;
  int calls_ = 0;
};

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  const std::string credential = absl::GetFlag(FLAGS_credential);
  const std::string feature = absl::GetFlag(FLAGS_feature);
  quotad::client::QuotaClient quota(
      grpc::CreateChannel(absl::GetFlag(FLAGS_server), grpc::InsecureChannelCredentials()));
  quotad::client::AcquireOptions wait;
  wait.client_wait = absl::GetFlag(FLAGS_wait);  // honour retry_after on denials, up to this long

  // One upstream call under one lease; its answer goes back to quotad.
  auto call = [&](auto&& do_call) -> absl::StatusOr<HttpAnswer> {
    absl::StatusOr<quotad::client::Lease> lease = quota.Acquire(credential, feature, wait);
    if (!lease.ok()) return lease.status();
    if (!lease->granted()) {
      return absl::ResourceExhaustedError(absl::StrCat("no quota: ", lease->limited_by(),
                                                       ", retry in ",
                                                       absl::FormatDuration(lease->retry_after())));
    }
    HttpAnswer answer = do_call();
    // A throttled call was not served: give the unit back; quotad cools the feature down.
    lease->Commit(answer.status == 429 ? 0 : 1).IgnoreError();
    absl::StatusOr<quotad::client::ReportResult> report =
        quota.ReportUpstream(credential, feature, answer.status, answer.headers, answer.body);
    if (!report.ok())
      std::fprintf(stderr, "report failed: %s\n", report.status().ToString().c_str());
    return answer;
  };

  FakeVirusTotal vt;
  int lookups = 0, uploads = 0;
  for (int i = 0; i < absl::GetFlag(FLAGS_files); ++i) {
    const std::string sha256 = absl::StrCat("sha256-of-file-", i);
    if (i % 3 == 0) vt.Know(sha256);
    absl::StatusOr<HttpAnswer> found = call([&] { return vt.GetFile(sha256); });
    if (!found.ok()) {
      std::fprintf(stderr, "lookup %s: %s\n", sha256.c_str(), found.status().ToString().c_str());
      return 1;
    }
    ++lookups;
    if (found->status == 404) {  // content-addressed: upload only what VirusTotal lacks
      absl::StatusOr<HttpAnswer> uploaded = call([&] { return vt.Upload(sha256); });
      if (!uploaded.ok()) {
        std::fprintf(stderr, "upload %s: %s\n", sha256.c_str(),
                     uploaded.status().ToString().c_str());
        return 1;
      }
      ++uploads;
    }
  }
  std::printf("vt_worker done lookups=%d uploads=%d\n", lookups, uploads);
  return 0;
}
