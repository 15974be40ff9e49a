// quotactl: a command-line client for quotad.
//
//   quotactl [--server=HOST:PORT] [--json] COMMAND ARGS...
//
//   acquire CREDENTIAL FEATURE [--scope=S] [--cost=N] [--ttl=30s] [--holder=H]
//                              [--request_id=ID] [--priority=P] [--max_wait=0s]
//   release LEASE_ID [--used=N] [--request_id=ID]
//   renew LEASE_ID [--ttl=30s]
//   report CREDENTIAL FEATURE HTTP_STATUS ["Header-Name: value" ...] [--body_file=F]
//   usage CREDENTIAL
//   leases [CREDENTIAL]
//   credentials
//
// Output is a readable table, or the response as JSON with --json. Exit codes: 0 granted / ok,
// 1 denied, 2 error (bad usage or an RPC error, printed to stderr with its code).
//
// Against a local server, e.g.:
//   quotad --config=service/config/example.yaml --state=quotad-state.db --listen=localhost:50051 &
//   quotactl acquire virustotal/prod requests --max_wait=30s --request_id=job-17
//   quotactl report virustotal/prod requests 429 "Retry-After: 12"
// With --max_wait the call's deadline is --timeout plus the wait.

#include <google/protobuf/util/json_util.h>
#include <grpcpp/grpcpp.h>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"
#include "quotad/v1/quotad.grpc.pb.h"

ABSL_FLAG(std::string, server, "localhost:50051", "quotad address, host:port.");
ABSL_FLAG(bool, json, false, "Print the response as JSON instead of a table.");
ABSL_FLAG(absl::Duration, timeout, absl::Seconds(5), "Deadline of the call.");
ABSL_FLAG(std::string, scope, "", "acquire: scope value inside the feature.");
ABSL_FLAG(int64_t, cost, 1, "acquire: units to charge.");
ABSL_FLAG(absl::Duration, ttl, absl::ZeroDuration(),
          "acquire, renew: lease lifetime; 0 is the feature's default.");
ABSL_FLAG(absl::Duration, max_wait, absl::ZeroDuration(), "acquire: how long the call may wait.");
ABSL_FLAG(std::string, holder, "", "acquire: who holds the lease (default: quotactl@HOST).");
ABSL_FLAG(std::string, request_id, "",
          "acquire, release: idempotency key; a retry with the same key gets the first answer.");
ABSL_FLAG(int32_t, priority, 0, "acquire: priority among waiting calls.");
ABSL_FLAG(int64_t, used, -1, "release: units the upstream charged; -1 refunds nothing.");
ABSL_FLAG(std::string, body_file, "", "report: file holding the upstream's answer body.");

namespace {

constexpr int kOk = 0;
constexpr int kDenied = 1;
constexpr int kError = 2;

namespace v1 = quotad::v1;

int Usage(const std::string& why) {
  std::fprintf(stderr, "quotactl: %s\n%s", why.c_str(),
               "usage: quotactl [--server=HOST:PORT] [--json] COMMAND ARGS\n"
               "  acquire CREDENTIAL FEATURE [--scope= --cost= --ttl= --holder= --request_id=\n"
               "                             --max_wait=30s --priority=P]\n"
               "  release LEASE_ID [--used=N] [--request_id=ID]\n"
               "  renew LEASE_ID [--ttl=30s]\n"
               "  report CREDENTIAL FEATURE HTTP_STATUS [\"Header-Name: value\" ...] "
               "[--body_file=F]\n"
               "  usage CREDENTIAL\n"
               "  leases [CREDENTIAL]\n"
               "  credentials\n");
  return kError;
}

int RpcError(const grpc::Status& s) {
  static const char* kNames[] = {"OK",
                                 "CANCELLED",
                                 "UNKNOWN",
                                 "INVALID_ARGUMENT",
                                 "DEADLINE_EXCEEDED",
                                 "NOT_FOUND",
                                 "ALREADY_EXISTS",
                                 "PERMISSION_DENIED",
                                 "RESOURCE_EXHAUSTED",
                                 "FAILED_PRECONDITION",
                                 "ABORTED",
                                 "OUT_OF_RANGE",
                                 "UNIMPLEMENTED",
                                 "INTERNAL",
                                 "UNAVAILABLE",
                                 "DATA_LOSS",
                                 "UNAUTHENTICATED"};
  const int code = static_cast<int>(s.error_code());
  std::fprintf(stderr, "quotactl: %s: %s\n", code >= 0 && code <= 16 ? kNames[code] : "UNKNOWN",
               s.error_message().c_str());
  return kError;
}

void PrintJson(const google::protobuf::Message& m) {
  std::string out;
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = true;
  options.preserve_proto_field_names = false;
  (void)google::protobuf::util::MessageToJsonString(m, &out, options);
  std::cout << out;
}

std::string Time(const google::protobuf::Timestamp& t) {
  if (t.seconds() == 0 && t.nanos() == 0) return "-";
  return absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ",
                          absl::FromUnixSeconds(t.seconds()) + absl::Nanoseconds(t.nanos()),
                          absl::UTCTimeZone());
}

std::string Dur(const google::protobuf::Duration& d) {
  return absl::FormatDuration(absl::Seconds(d.seconds()) + absl::Nanoseconds(d.nanos()));
}

std::string KindName(v1::LimitKind k) {
  std::string name = v1::LimitKind_Name(k);
  const std::string prefix = "LIMIT_KIND_";
  if (name.rfind(prefix, 0) == 0) name = name.substr(prefix.size());
  for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return name;
}

// Prints rows as left-aligned columns separated by two spaces.
void PrintTable(const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> widths;
  for (const auto& row : rows) {
    if (widths.size() < row.size()) widths.resize(row.size(), 0);
    for (size_t i = 0; i < row.size(); ++i) widths[i] = std::max(widths[i], row[i].size());
  }
  for (const auto& row : rows) {
    std::string line;
    for (size_t i = 0; i < row.size(); ++i) {
      line += row[i];
      if (i + 1 < row.size()) line += std::string(widths[i] - row[i].size() + 2, ' ');
    }
    std::cout << line << "\n";
  }
}

void PrintLimits(const google::protobuf::RepeatedPtrField<v1::LimitStatus>& limits) {
  std::vector<std::vector<std::string>> rows = {
      {"LIMIT", "SCOPE", "KIND", "USED", "REMAINING", "CAPACITY", "RESETS"}};
  for (const v1::LimitStatus& l : limits) {
    const bool unlimited = l.kind() == v1::LIMIT_KIND_UNLIMITED;
    rows.push_back({l.name(), l.scope().empty() ? "-" : l.scope(), KindName(l.kind()),
                    absl::StrCat(l.used()), unlimited ? "unlimited" : absl::StrCat(l.remaining()),
                    unlimited ? "unlimited" : absl::StrCat(l.capacity()),
                    l.has_reset_at() ? Time(l.reset_at()) : "-"});
  }
  PrintTable(rows);
}

void SetDuration(absl::Duration d, google::protobuf::Duration* out) {
  const int64_t s = absl::IDivDuration(d, absl::Seconds(1), &d);
  out->set_seconds(s);
  out->set_nanos(static_cast<int32_t>(absl::ToInt64Nanoseconds(d)));
}

std::string DefaultHolder() {
  char host[256] = {0};
  if (gethostname(host, sizeof(host) - 1) != 0) return "quotactl";
  return absl::StrCat("quotactl@", host);
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("quotactl [--server=HOST:PORT] [--json] COMMAND ARGS");
  std::vector<char*> positional = absl::ParseCommandLine(argc, argv);
  std::vector<std::string> args(positional.begin() + 1, positional.end());
  if (args.empty()) return Usage("no command given");
  const std::string command = args[0];
  const bool json = absl::GetFlag(FLAGS_json);

  auto channel =
      grpc::CreateChannel(absl::GetFlag(FLAGS_server), grpc::InsecureChannelCredentials());
  auto quota = v1::Quota::NewStub(channel);
  auto admin = v1::Admin::NewStub(channel);
  grpc::ClientContext context;
  // A waiting Acquire needs its wait on top of the usual deadline (the server caps the wait at
  // the call's deadline).
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::GetFlag(FLAGS_timeout) +
                                          absl::GetFlag(FLAGS_max_wait)));

  if (command == "acquire") {
    if (args.size() != 3) return Usage("acquire takes CREDENTIAL FEATURE");
    v1::AcquireRequest req;
    req.set_credential(args[1]);
    req.set_feature(args[2]);
    req.set_scope(absl::GetFlag(FLAGS_scope));
    req.set_cost(absl::GetFlag(FLAGS_cost));
    if (absl::GetFlag(FLAGS_ttl) != absl::ZeroDuration()) {
      SetDuration(absl::GetFlag(FLAGS_ttl), req.mutable_lease_ttl());
    }
    if (absl::GetFlag(FLAGS_max_wait) != absl::ZeroDuration()) {
      SetDuration(absl::GetFlag(FLAGS_max_wait), req.mutable_max_wait());
    }
    req.set_holder(absl::GetFlag(FLAGS_holder).empty() ? DefaultHolder()
                                                       : absl::GetFlag(FLAGS_holder));
    req.set_request_id(absl::GetFlag(FLAGS_request_id));
    req.set_priority(absl::GetFlag(FLAGS_priority));
    v1::AcquireResponse resp;
    grpc::Status s = quota->Acquire(&context, req, &resp);
    if (!s.ok()) return RpcError(s);
    if (json) {
      PrintJson(resp);
    } else if (resp.granted()) {
      std::cout << "granted  lease " << resp.lease_id() << "  expires "
                << Time(resp.lease_expires_at()) << "\n\n";
      PrintLimits(resp.limits());
    } else {
      std::cout << "denied  by " << resp.limited_by() << "  retry after "
                << (resp.has_retry_after() ? Dur(resp.retry_after()) : "never") << " (at "
                << (resp.has_retry_at() ? Time(resp.retry_at()) : "-") << ")\n\n";
      PrintLimits(resp.limits());
    }
    return resp.granted() ? kOk : kDenied;
  }

  if (command == "release") {
    if (args.size() != 2) return Usage("release takes LEASE_ID");
    v1::ReleaseRequest req;
    req.set_lease_id(args[1]);
    if (absl::GetFlag(FLAGS_used) >= 0) req.set_used(absl::GetFlag(FLAGS_used));
    req.set_request_id(absl::GetFlag(FLAGS_request_id));
    v1::ReleaseResponse resp;
    grpc::Status s = quota->Release(&context, req, &resp);
    if (!s.ok()) return RpcError(s);
    if (json) {
      PrintJson(resp);
    } else {
      std::cout << "released  refunded " << resp.refunded() << "  freed " << resp.freed() << "\n";
    }
    return kOk;
  }

  if (command == "renew") {
    if (args.size() != 2) return Usage("renew takes LEASE_ID");
    v1::RenewRequest req;
    req.set_lease_id(args[1]);
    if (absl::GetFlag(FLAGS_ttl) != absl::ZeroDuration()) {
      SetDuration(absl::GetFlag(FLAGS_ttl), req.mutable_ttl());
    }
    v1::RenewResponse resp;
    grpc::Status s = quota->Renew(&context, req, &resp);
    if (!s.ok()) return RpcError(s);
    if (json) {
      PrintJson(resp);
    } else {
      std::cout << "renewed  expires " << Time(resp.lease_expires_at()) << "\n";
    }
    return kOk;
  }

  if (command == "report") {
    if (args.size() < 4) {
      return Usage("report takes CREDENTIAL FEATURE HTTP_STATUS [\"Name: value\" ...]");
    }
    v1::ReportRequest req;
    req.set_credential(args[1]);
    req.set_feature(args[2]);
    int status = 0;
    if (!absl::SimpleAtoi(args[3], &status)) {
      return Usage(absl::StrCat("HTTP_STATUS \"", args[3], "\" is not a number"));
    }
    req.set_http_status(status);
    for (size_t i = 4; i < args.size(); ++i) {
      const size_t colon = args[i].find(':');
      if (colon == std::string::npos) {
        return Usage(absl::StrCat("header \"", args[i], "\" is not \"Name: value\""));
      }
      v1::Header* h = req.add_headers();
      h->set_name(args[i].substr(0, colon));
      h->set_value(std::string(absl::StripLeadingAsciiWhitespace(args[i].substr(colon + 1))));
    }
    if (!absl::GetFlag(FLAGS_body_file).empty()) {
      std::ifstream in(absl::GetFlag(FLAGS_body_file), std::ios::binary);
      if (!in) return Usage(absl::StrCat("cannot read ", absl::GetFlag(FLAGS_body_file)));
      std::stringstream body;
      body << in.rdbuf();
      req.set_body(body.str());
    }
    v1::ReportResponse resp;
    grpc::Status s = quota->Report(&context, req, &resp);
    if (!s.ok()) return RpcError(s);
    if (json) {
      PrintJson(resp);
      return kOk;
    }
    std::cout << "reported  cooldown until "
              << (resp.has_cooldown_until() ? Time(resp.cooldown_until()) : "-") << "\n";
    for (const std::string& a : resp.adopted()) std::cout << "adopted  " << a << "\n";
    for (const std::string& w : resp.warnings()) std::cout << "warning  " << w << "\n";
    return kOk;
  }

  if (command == "usage") {
    if (args.size() != 2) return Usage("usage takes CREDENTIAL");
    v1::GetUsageRequest req;
    req.set_credential(args[1]);
    v1::GetUsageResponse resp;
    // Every page, into one answer (the header fields from the first).
    for (bool first = true;; first = false) {
      grpc::ClientContext page_context;
      page_context.set_deadline(context.deadline());
      v1::GetUsageResponse page;
      grpc::Status s = admin->GetUsage(&page_context, req, &page);
      if (!s.ok()) return RpcError(s);
      if (first) {
        resp.set_credential(page.credential());
        resp.set_profile(page.profile());
        *resp.mutable_observed_at() = page.observed_at();
      }
      for (v1::LimitStatus& l : *page.mutable_limits()) *resp.add_limits() = std::move(l);
      if (page.next_page_token().empty()) break;
      req.set_page_token(page.next_page_token());
    }
    if (json) {
      PrintJson(resp);
    } else {
      std::cout << resp.credential() << "  profile " << resp.profile() << "  at "
                << Time(resp.observed_at()) << "\n\n";
      PrintLimits(resp.limits());
    }
    return kOk;
  }

  if (command == "leases") {
    if (args.size() > 2) return Usage("leases takes at most CREDENTIAL");
    v1::ListLeasesRequest req;
    if (args.size() == 2) req.set_credential(args[1]);
    v1::ListLeasesResponse resp;
    // Every page, into one answer.
    for (;;) {
      grpc::ClientContext page_context;
      page_context.set_deadline(context.deadline());
      v1::ListLeasesResponse page;
      grpc::Status s = admin->ListLeases(&page_context, req, &page);
      if (!s.ok()) return RpcError(s);
      for (v1::Lease& l : *page.mutable_leases()) *resp.add_leases() = std::move(l);
      if (page.next_page_token().empty()) break;
      req.set_page_token(page.next_page_token());
    }
    if (json) {
      PrintJson(resp);
      return kOk;
    }
    std::vector<std::vector<std::string>> rows = {
        {"LEASE", "CREDENTIAL", "FEATURE", "SCOPE", "COST", "HOLDER", "EXPIRES"}};
    for (const v1::Lease& l : resp.leases()) {
      rows.push_back({l.lease_id(), l.credential(), l.feature(),
                      l.scope().empty() ? "-" : l.scope(), absl::StrCat(l.cost()),
                      l.holder().empty() ? "-" : l.holder(), Time(l.expires_at())});
    }
    PrintTable(rows);
    return kOk;
  }

  if (command == "credentials") {
    if (args.size() != 1) return Usage("credentials takes no arguments");
    v1::ListCredentialsRequest req;
    v1::ListCredentialsResponse resp;
    // Every page, into one answer (profiles come with the first).
    for (;;) {
      grpc::ClientContext page_context;
      page_context.set_deadline(context.deadline());
      v1::ListCredentialsResponse page;
      grpc::Status s = admin->ListCredentials(&page_context, req, &page);
      if (!s.ok()) return RpcError(s);
      for (auto& c : *page.mutable_credentials()) *resp.add_credentials() = std::move(c);
      for (auto& p : *page.mutable_profiles()) *resp.add_profiles() = std::move(p);
      if (page.next_page_token().empty()) break;
      req.set_page_token(page.next_page_token());
    }
    if (json) {
      PrintJson(resp);
      return kOk;
    }
    std::vector<std::vector<std::string>> rows = {
        {"CREDENTIAL", "PROFILE", "FEATURE", "LIMIT", "KIND", "CAPACITY", "PERIOD"}};
    for (const v1::ConfiguredCredential& c : resp.credentials()) {
      for (const v1::ConfiguredFeature& f : c.features()) {
        for (const v1::ConfiguredLimit& l : f.limits()) {
          std::string period = l.has_period() ? Dur(l.period()) : "-";
          if (l.calendar_unit() != v1::CALENDAR_UNIT_UNSPECIFIED) {
            std::string unit = v1::CalendarUnit_Name(l.calendar_unit()).substr(14);
            for (char& ch : unit) ch = static_cast<char>(std::tolower(ch));
            period = absl::StrCat(unit, " ", l.time_zone());
          }
          rows.push_back(
              {c.name(), c.profile(), f.name(), l.name(), KindName(l.kind()),
               l.kind() == v1::LIMIT_KIND_UNLIMITED ? "unlimited" : absl::StrCat(l.capacity()),
               period});
        }
        if (f.limits().empty() && f.draws_on_size() > 0) {
          rows.push_back({c.name(), c.profile(), f.name(),
                          absl::StrCat("(draws on ", absl::StrJoin(f.draws_on(), ","), ")"), "-",
                          "-", "-"});
        }
      }
    }
    PrintTable(rows);
    std::cout << "\nprofiles:";
    for (const v1::ProfileEntry& p : resp.profiles()) {
      std::cout << " " << p.name() << (p.builtin() ? "" : "(file)");
    }
    std::cout << "\n";
    return kOk;
  }

  return Usage(absl::StrCat("unknown command \"", command, "\""));
}
