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
//   acquire-batch [ITEM ...] [--items_file=F] [--all_or_nothing] [--decisions_only]
//                                                        many Acquires in one call
//   release-batch [ITEM ...] [--items_file=F]   many Releases in one ReleaseBatch call
//
// A batch item is one argument or one line of --items_file ("-": stdin; when no ITEM argument
// and no --items_file is given, items are read from stdin); blank lines and lines starting with
// '#' are skipped. Values hold no whitespace.
//   acquire-batch item: CREDENTIAL FEATURE [scope=S] [cost=N] [ttl=30s] [holder=H]
//                                          [request_id=ID] [priority=P]
//   release-batch item: LEASE_ID [used=N] [request_id=ID]
// --scope, --cost, --ttl, --holder, --priority and --used are the defaults of every item;
// --request_id=ID gives item i the key "ID.i" (so that a re-run batch charges nothing twice)
// unless the item has its own request_id=.
//
// Output is a readable table, or the response as JSON with --json. Exit codes: 0 granted / ok,
// 1 denied, 2 error (bad usage or an RPC error, printed to stderr with its code). For a batch:
// 0 every item granted / released, 1 some item denied and none failed, 2 an item failed (its
// error is in the table) or the call failed.
//
// Against a local server, e.g.:
//   quotad --config=service/config/example.yaml --state=quotad-state.db --listen=localhost:50051 &
//   quotactl acquire virustotal/prod requests --max_wait=30s --request_id=job-17
//   quotactl report virustotal/prod requests 429 "Retry-After: 12"
//   quotactl acquire-batch "virustotal/prod requests" "virustotal/prod requests cost=2"
//   printf 'LEASE_A used=1\nLEASE_B used=0\n' | quotactl release-batch
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
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "quotad/v1/quotad.grpc.pb.h"

ABSL_FLAG(std::string, server, "localhost:50051", "quotad address, host:port.");
ABSL_FLAG(bool, json, false, "Print the response as JSON instead of a table.");
ABSL_FLAG(absl::Duration, timeout, absl::Seconds(5), "Deadline of the call.");
ABSL_FLAG(std::string, scope, "",
          "acquire, acquire-batch (every item's default): scope value inside the feature.");
ABSL_FLAG(int64_t, cost, 1, "acquire, acquire-batch (every item's default): units to charge.");
ABSL_FLAG(absl::Duration, ttl, absl::ZeroDuration(),
          "acquire, acquire-batch, renew: lease lifetime; 0 is the feature's default.");
ABSL_FLAG(absl::Duration, max_wait, absl::ZeroDuration(), "acquire: how long the call may wait.");
ABSL_FLAG(std::string, holder, "",
          "acquire, acquire-batch: who holds the lease (default: quotactl@HOST).");
ABSL_FLAG(std::string, request_id, "",
          "acquire, release: idempotency key; a retry with the same key gets the first answer. "
          "acquire-batch, release-batch: item i gets the key ID.i.");
ABSL_FLAG(int32_t, priority, 0, "acquire, acquire-batch: priority among waiting calls.");
ABSL_FLAG(int64_t, used, -1,
          "release, release-batch: units the upstream charged; -1 refunds nothing.");
ABSL_FLAG(std::string, body_file, "", "report: file holding the upstream's answer body.");
ABSL_FLAG(std::string, items_file, "",
          "acquire-batch, release-batch: file with one item per line; \"-\" is stdin (the "
          "default when no item is given as an argument).");

ABSL_FLAG(bool, all_or_nothing, false,
          "acquire-batch: every item granted or none (embedded quotad only).");
ABSL_FLAG(bool, decisions_only, false,
          "acquire-batch: answers without limits (shorter --json; the same decisions).");

namespace {

constexpr int kOk = 0;
constexpr int kDenied = 1;
constexpr int kError = 2;

namespace v1 = quotad::v1;

// The commands, for --help and for a usage error.
constexpr char kUsage[] =
    "usage: quotactl [--server=HOST:PORT] [--json] COMMAND ARGS\n"
    "  acquire CREDENTIAL FEATURE [--scope= --cost= --ttl= --holder= --request_id=\n"
    "                             --max_wait=30s --priority=P]\n"
    "  release LEASE_ID [--used=N] [--request_id=ID]\n"
    "  renew LEASE_ID [--ttl=30s]\n"
    "  report CREDENTIAL FEATURE HTTP_STATUS [\"Header-Name: value\" ...] "
    "[--body_file=F]\n"
    "  usage CREDENTIAL\n"
    "  leases [CREDENTIAL]\n"
    "  credentials\n"
    "  acquire-batch [ITEM ...] [--items_file=F|-] [--all_or_nothing] [--decisions_only]\n"
    "                             one AcquireBatch call\n"
    "      ITEM: \"CREDENTIAL FEATURE [scope=S] [cost=N] [ttl=30s] [holder=H]\n"
    "             [request_id=ID] [priority=P]\"\n"
    "  release-batch [ITEM ...] [--items_file=F|-]   one ReleaseBatch call\n"
    "      ITEM: \"LEASE_ID [used=N] [request_id=ID]\"\n"
    "  A batch item is an argument or a line of --items_file (\"-\": stdin, also\n"
    "  when no ITEM is given); blank and '#' lines are skipped. The flags --scope\n"
    "  --cost --ttl --holder --priority --used are every item's defaults;\n"
    "  --request_id=ID keys item i as ID.i. At most 1000 items.\n"
    "  Batch exit code: 0 all granted/released, 1 some denied, 2 an item failed.\n";

int Usage(const std::string& why) {
  std::fprintf(stderr, "quotactl: %s\n%s", why.c_str(), kUsage);
  return kError;
}

const char* CodeName(int code) {
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
  return code >= 0 && code <= 16 ? kNames[code] : "UNKNOWN";
}

int RpcError(const grpc::Status& s) {
  std::fprintf(stderr, "quotactl: %s: %s\n", CodeName(static_cast<int>(s.error_code())),
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

// One batch item as written: where it came from (named in errors) and its words.
struct ItemLine {
  std::string where;  // "argument 2", "items.txt:3", "stdin:3"
  std::vector<std::string> words;
};

void AddItemLine(std::string where, const std::string& text, std::vector<ItemLine>* items) {
  std::vector<std::string> words =
      absl::StrSplit(text, absl::ByAnyChar(" \t\r"), absl::SkipEmpty());
  if (words.empty() || words[0][0] == '#') return;
  items->push_back({std::move(where), std::move(words)});
}

// The items of a batch command: every ITEM argument (args[1..]), then the lines of
// --items_file ("-": stdin, also the source when no ITEM argument was given).
absl::StatusOr<std::vector<ItemLine>> ReadItems(const std::vector<std::string>& args) {
  std::vector<ItemLine> items;
  for (size_t i = 1; i < args.size(); ++i)
    AddItemLine(absl::StrCat("argument ", i), args[i], &items);
  std::string file = absl::GetFlag(FLAGS_items_file);
  if (file.empty() && args.size() <= 1) file = "-";
  if (file.empty()) return items;
  std::ifstream opened;
  std::istream* in = &std::cin;
  if (file != "-") {
    opened.open(file);
    if (!opened) return absl::InvalidArgumentError(absl::StrCat("cannot read --items_file ", file));
    in = &opened;
  }
  const std::string name = file == "-" ? "stdin" : file;
  std::string line;
  for (int n = 1; std::getline(*in, line); ++n)
    AddItemLine(absl::StrCat(name, ":", n), line, &items);
  return items;
}

// Splits "key=value" at its first '='; false when there is none.
bool SplitKeyValue(const std::string& word, std::string* key, std::string* value) {
  const size_t eq = word.find('=');
  if (eq == std::string::npos || eq == 0) return false;
  *key = word.substr(0, eq);
  *value = word.substr(eq + 1);
  return true;
}

absl::Status BadItem(const ItemLine& line, const std::string& why) {
  return absl::InvalidArgumentError(
      absl::StrCat(line.where, " (\"", absl::StrJoin(line.words, " "), "\"): ", why));
}

// Item `index` of acquire-batch: CREDENTIAL FEATURE [key=value ...] over the flags' defaults.
absl::Status ParseAcquireItem(const ItemLine& line, int index, v1::AcquireRequest* req) {
  std::string key, value;
  if (line.words.size() < 2 || SplitKeyValue(line.words[0], &key, &value) ||
      SplitKeyValue(line.words[1], &key, &value)) {
    return BadItem(line, "an item is CREDENTIAL FEATURE [key=value ...]");
  }
  req->set_credential(line.words[0]);
  req->set_feature(line.words[1]);
  req->set_scope(absl::GetFlag(FLAGS_scope));
  req->set_cost(absl::GetFlag(FLAGS_cost));
  if (absl::GetFlag(FLAGS_ttl) != absl::ZeroDuration()) {
    SetDuration(absl::GetFlag(FLAGS_ttl), req->mutable_lease_ttl());
  }
  // quotad answers a positive max_wait with the item's error: a batch never waits.
  if (absl::GetFlag(FLAGS_max_wait) != absl::ZeroDuration()) {
    SetDuration(absl::GetFlag(FLAGS_max_wait), req->mutable_max_wait());
  }
  req->set_holder(absl::GetFlag(FLAGS_holder).empty() ? DefaultHolder()
                                                      : absl::GetFlag(FLAGS_holder));
  req->set_priority(absl::GetFlag(FLAGS_priority));
  if (!absl::GetFlag(FLAGS_request_id).empty()) {
    req->set_request_id(absl::StrCat(absl::GetFlag(FLAGS_request_id), ".", index));
  }
  for (size_t i = 2; i < line.words.size(); ++i) {
    if (!SplitKeyValue(line.words[i], &key, &value)) {
      return BadItem(line, absl::StrCat("\"", line.words[i], "\" is not key=value"));
    }
    if (key == "scope") {
      req->set_scope(value);
    } else if (key == "cost") {
      int64_t cost = 0;
      if (!absl::SimpleAtoi(value, &cost)) {
        return BadItem(line, absl::StrCat("cost \"", value, "\" is not a number"));
      }
      req->set_cost(cost);
    } else if (key == "ttl") {
      absl::Duration ttl;
      if (!absl::ParseDuration(value, &ttl)) {
        return BadItem(line, absl::StrCat("ttl \"", value, "\" is not a duration (e.g. 30s)"));
      }
      req->clear_lease_ttl();
      if (ttl != absl::ZeroDuration()) SetDuration(ttl, req->mutable_lease_ttl());
    } else if (key == "holder") {
      req->set_holder(value);
    } else if (key == "request_id") {
      req->set_request_id(value);
    } else if (key == "priority") {
      int32_t priority = 0;
      if (!absl::SimpleAtoi(value, &priority)) {
        return BadItem(line, absl::StrCat("priority \"", value, "\" is not a number"));
      }
      req->set_priority(priority);
    } else {
      return BadItem(line, absl::StrCat("unknown key \"", key,
                                        "\" (expected scope, cost, ttl, holder, request_id or "
                                        "priority)"));
    }
  }
  return absl::OkStatus();
}

// Item `index` of release-batch: LEASE_ID [used=N] [request_id=ID] over the flags' defaults.
absl::Status ParseReleaseItem(const ItemLine& line, int index, v1::ReleaseRequest* req) {
  std::string key, value;
  if (SplitKeyValue(line.words[0], &key, &value)) {
    return BadItem(line, "an item is LEASE_ID [used=N] [request_id=ID]");
  }
  req->set_lease_id(line.words[0]);
  if (absl::GetFlag(FLAGS_used) >= 0) req->set_used(absl::GetFlag(FLAGS_used));
  if (!absl::GetFlag(FLAGS_request_id).empty()) {
    req->set_request_id(absl::StrCat(absl::GetFlag(FLAGS_request_id), ".", index));
  }
  for (size_t i = 1; i < line.words.size(); ++i) {
    if (!SplitKeyValue(line.words[i], &key, &value)) {
      return BadItem(line, absl::StrCat("\"", line.words[i], "\" is not key=value"));
    }
    if (key == "used") {
      int64_t used = 0;
      if (!absl::SimpleAtoi(value, &used)) {
        return BadItem(line, absl::StrCat("used \"", value, "\" is not a number"));
      }
      req->set_used(used);
    } else if (key == "request_id") {
      req->set_request_id(value);
    } else {
      return BadItem(line, absl::StrCat("unknown key \"", key, "\" (expected used or request_id)"));
    }
  }
  return absl::OkStatus();
}

std::string ItemErrorText(const v1::ItemError& e) {
  return absl::StrCat(CodeName(e.code()), ": ", e.message());
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(kUsage);
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

  if (command == "acquire-batch") {
    absl::StatusOr<std::vector<ItemLine>> lines = ReadItems(args);
    if (!lines.ok()) return Usage(std::string(lines.status().message()));
    if (lines->empty()) return Usage("acquire-batch got no items");
    v1::AcquireBatchRequest req;
    for (size_t i = 0; i < lines->size(); ++i) {
      absl::Status s = ParseAcquireItem((*lines)[i], static_cast<int>(i), req.add_items());
      if (!s.ok()) return Usage(std::string(s.message()));
    }
    req.set_all_or_nothing(absl::GetFlag(FLAGS_all_or_nothing));
    req.set_decisions_only(absl::GetFlag(FLAGS_decisions_only));
    v1::AcquireBatchResponse resp;
    grpc::Status s = quota->AcquireBatch(&context, req, &resp);
    if (!s.ok()) return RpcError(s);
    int granted = 0, denied = 0, failed = 0;
    std::vector<std::vector<std::string>> rows = {
        {"ITEM", "CREDENTIAL", "FEATURE", "RESULT", "LEASE", "DETAIL"}};
    for (int i = 0; i < resp.results_size(); ++i) {
      const v1::AcquireBatchItem& r = resp.results(i);
      const v1::AcquireRequest& item = req.items(i < req.items_size() ? i : 0);
      std::vector<std::string> row = {absl::StrCat(i), item.credential(), item.feature()};
      if (r.has_error()) {
        ++failed;
        row.insert(row.end(), {"error", "-", ItemErrorText(r.error())});
      } else if (r.response().granted()) {
        ++granted;
        row.insert(row.end(), {"granted", r.response().lease_id(),
                               absl::StrCat("expires ", Time(r.response().lease_expires_at()))});
      } else {
        ++denied;
        const v1::AcquireResponse& d = r.response();
        row.insert(row.end(), {"denied", "-",
                               absl::StrCat("by ", d.limited_by(), ", retry after ",
                                            d.has_retry_after() ? Dur(d.retry_after()) : "never")});
      }
      rows.push_back(std::move(row));
    }
    if (json) {
      PrintJson(resp);
    } else {
      PrintTable(rows);
      std::cout << "\ngranted " << granted << "  denied " << denied << "  errors " << failed
                << "\n";
    }
    if (resp.results_size() != req.items_size()) {
      std::fprintf(stderr, "quotactl: quotad answered %d results for %d items\n",
                   resp.results_size(), req.items_size());
      return kError;
    }
    return failed > 0 ? kError : denied > 0 ? kDenied : kOk;
  }

  if (command == "release-batch") {
    absl::StatusOr<std::vector<ItemLine>> lines = ReadItems(args);
    if (!lines.ok()) return Usage(std::string(lines.status().message()));
    if (lines->empty()) return Usage("release-batch got no items");
    v1::ReleaseBatchRequest req;
    for (size_t i = 0; i < lines->size(); ++i) {
      absl::Status s = ParseReleaseItem((*lines)[i], static_cast<int>(i), req.add_items());
      if (!s.ok()) return Usage(std::string(s.message()));
    }
    v1::ReleaseBatchResponse resp;
    grpc::Status s = quota->ReleaseBatch(&context, req, &resp);
    if (!s.ok()) return RpcError(s);
    int released = 0, failed = 0;
    std::vector<std::vector<std::string>> rows = {{"ITEM", "LEASE", "RESULT", "DETAIL"}};
    for (int i = 0; i < resp.results_size(); ++i) {
      const v1::ReleaseBatchItem& r = resp.results(i);
      std::vector<std::string> row = {absl::StrCat(i),
                                      req.items(i < req.items_size() ? i : 0).lease_id()};
      if (r.has_error()) {
        ++failed;
        row.insert(row.end(), {"error", ItemErrorText(r.error())});
      } else {
        ++released;
        row.insert(row.end(), {"released", absl::StrCat("refunded ", r.response().refunded(),
                                                        "  freed ", r.response().freed())});
      }
      rows.push_back(std::move(row));
    }
    if (json) {
      PrintJson(resp);
    } else {
      PrintTable(rows);
      std::cout << "\nreleased " << released << "  errors " << failed << "\n";
    }
    if (resp.results_size() != req.items_size()) {
      std::fprintf(stderr, "quotactl: quotad answered %d results for %d items\n",
                   resp.results_size(), req.items_size());
      return kError;
    }
    return failed > 0 ? kError : kOk;
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
