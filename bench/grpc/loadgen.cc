// Asynchronous load generator for quotad.v1.Quota/Acquire (or AcquireBatch), A/B against
// several targets.
//
//   grpc_loadgen --target=quotad=127.0.0.1:5001 --target=noop=127.0.0.1:5002
//                [--inflight=1,16,64] [--rounds=3] [--duration=3s] [--warmup=500ms]
//                [--credential=bench/key] [--feature=requests] [--batch=1,10,100,1000]
//                [--decisions_only=TARGET,...]
//
// Without --batch every call is one Acquire. With --batch every call is one AcquireBatch of
// that many identical items (with AcquireBatchRequest.decisions_only for the targets named by
// --decisions_only), each batch size is run at every in-flight level, and the figures are
// decisions (items) per second and calls per second, in a table with the targets side by side
// and the ratio of each to the baseline.
//
// For each round and each in-flight level, runs every target for `duration` (the order of the
// targets alternates between rounds so that neither always runs on a warmer machine), with
// exactly `inflight` calls outstanding, split over --threads client threads, each with its own
// async CompletionQueue and connection.
// Prints one line per run, then a table of medians over the rounds: req/s, p50 and p99 latency,
// and the ratio of each target's req/s to the last target's (the baseline).

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "quotad/v1/quotad.grpc.pb.h"

ABSL_FLAG(std::vector<std::string>, target, {},
          "name=host:port,name=host:port,...; the last is the baseline.");
ABSL_FLAG(std::vector<std::string>, inflight, std::vector<std::string>({"1", "16", "64"}),
          "Calls in flight.");
ABSL_FLAG(int, rounds, 3, "Interleaved rounds.");
ABSL_FLAG(absl::Duration, duration, absl::Seconds(3), "Measured time per run.");
ABSL_FLAG(absl::Duration, warmup, absl::Milliseconds(500), "Unmeasured time before each run.");
ABSL_FLAG(int, threads, 2,
          "Client threads, each with its own completion queue and connection; the calls in "
          "flight are split among them (one thread at 1 in flight).");
ABSL_FLAG(std::string, credential, "bench/key", "AcquireRequest.credential");
ABSL_FLAG(std::string, feature, "requests", "AcquireRequest.feature");
ABSL_FLAG(std::vector<std::string>, batch, {},
          "Items per AcquireBatch call, e.g. 1,10,100,1000; empty: unary Acquire calls.");
ABSL_FLAG(std::vector<std::string>, decisions_only, {},
          "Targets (by name) whose AcquireBatch calls set decisions_only (no limits answered).");

namespace {

using Clock = std::chrono::steady_clock;

struct Result {
  int64_t calls = 0;      // every completed call, warm-up included
  int64_t decisions = 0;  // every item decided (a unary call is one), warm-up included
  double rps = 0;         // calls per second, measured
  double dps = 0;         // decisions (items) per second, measured
  double p50_us = 0;
  double p99_us = 0;
  int64_t errors = 0;       // failed calls
  int64_t denied = 0;       // denied decisions
  int64_t item_errors = 0;  // batch items answered with an error
  int64_t measured_decisions = 0;
};

// The unary call: one Acquire, one decision.
struct UnaryKind {
  using Request = quotad::v1::AcquireRequest;
  using Response = quotad::v1::AcquireResponse;
  static Request MakeRequest(int /*batch*/, bool /*decisions_only*/) {
    Request request;
    request.set_credential(absl::GetFlag(FLAGS_credential));
    request.set_feature(absl::GetFlag(FLAGS_feature));
    request.set_holder("loadgen");
    return request;
  }
  static auto Prepare(quotad::v1::Quota::Stub* stub, grpc::ClientContext* context,
                      const Request& request, grpc::CompletionQueue* cq) {
    return stub->PrepareAsyncAcquire(context, request, cq);
  }
  static int64_t Decisions(const Response& response, Result* result) {
    if (!response.granted()) ++result->denied;
    return 1;
  }
};

// The batch call: one AcquireBatch of `batch` identical items.
struct BatchKind {
  using Request = quotad::v1::AcquireBatchRequest;
  using Response = quotad::v1::AcquireBatchResponse;
  static Request MakeRequest(int batch, bool decisions_only) {
    Request request;
    const quotad::v1::AcquireRequest item = UnaryKind::MakeRequest(1, false);
    for (int i = 0; i < batch; ++i) *request.add_items() = item;
    request.set_decisions_only(decisions_only);
    return request;
  }
  static auto Prepare(quotad::v1::Quota::Stub* stub, grpc::ClientContext* context,
                      const Request& request, grpc::CompletionQueue* cq) {
    return stub->PrepareAsyncAcquireBatch(context, request, cq);
  }
  static int64_t Decisions(const Response& response, Result* result) {
    for (const quotad::v1::AcquireBatchItem& r : response.results()) {
      if (r.has_error()) {
        ++result->item_errors;
      } else if (!r.response().granted()) {
        ++result->denied;
      }
    }
    return response.results_size();
  }
};

template <typename Kind>
struct Call {
  grpc::ClientContext context;
  typename Kind::Response response;
  grpc::Status status;
  std::unique_ptr<grpc::ClientAsyncResponseReader<typename Kind::Response>> reader;
  Clock::time_point start;
};

// One client thread: `inflight` calls outstanding on its own queue until `end`. Appends the
// latencies of the calls that started and ended inside [measure_from, end).
template <typename Kind>
Result RunThread(quotad::v1::Quota::Stub* stub, int inflight, int batch, bool decisions_only,
                 Clock::time_point measure_from, Clock::time_point end,
                 std::vector<uint32_t>* latencies) {
  grpc::CompletionQueue cq;
  const typename Kind::Request request = Kind::MakeRequest(batch, decisions_only);

  auto start_call = [&] {
    auto* call = new Call<Kind>;
    call->start = Clock::now();
    call->reader = Kind::Prepare(stub, &call->context, request, &cq);
    call->reader->StartCall();
    call->reader->Finish(&call->response, &call->status, call);
  };
  std::vector<uint32_t>& latencies_ns = *latencies;
  Result result;
  int outstanding = 0;
  for (int i = 0; i < inflight; ++i, ++outstanding) start_call();
  void* tag;
  bool ok;
  while (outstanding > 0 && cq.Next(&tag, &ok)) {
    auto* call = static_cast<Call<Kind>*>(tag);
    const Clock::time_point now = Clock::now();
    --outstanding;
    ++result.calls;
    const bool answered = ok && call->status.ok();
    const int64_t decisions = answered ? Kind::Decisions(call->response, &result) : 0;
    result.decisions += decisions;
    if (now >= measure_from && call->start >= measure_from && now < end) {
      if (!answered) {
        ++result.errors;
      } else {
        result.measured_decisions += decisions;
        latencies_ns.push_back(
            static_cast<uint32_t>(std::min<int64_t>(UINT32_MAX, (now - call->start).count())));
      }
    }
    delete call;
    if (now < end) {
      start_call();
      ++outstanding;
    }
  }
  cq.Shutdown();
  while (cq.Next(&tag, &ok)) {
  }
  return result;
}

// `inflight` calls split over up to --threads client threads, each on its own connection.
// `batch` 0: unary Acquire calls; else AcquireBatch calls of `batch` items.
Result Run(const std::string& address, int inflight, int batch, bool decisions_only,
           absl::Duration warmup, absl::Duration duration) {
  const int threads = std::max(1, std::min(inflight, absl::GetFlag(FLAGS_threads)));
  std::vector<std::unique_ptr<quotad::v1::Quota::Stub>> stubs;
  static int channel_id = 0;
  for (int t = 0; t < threads; ++t) {
    grpc::ChannelArguments args;
    args.SetInt("quotad.loadgen.channel", ++channel_id);  // a connection per thread
    stubs.push_back(quotad::v1::Quota::NewStub(
        grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args)));
  }
  const Clock::time_point measure_from = Clock::now() + absl::ToChronoNanoseconds(warmup);
  const Clock::time_point end = measure_from + absl::ToChronoNanoseconds(duration);
  std::vector<std::vector<uint32_t>> latencies(threads);
  std::vector<Result> results(threads);
  std::vector<std::thread> workers;
  for (int t = 0; t < threads; ++t) {
    const int n = inflight / threads + (t < inflight % threads ? 1 : 0);
    latencies[t].reserve(1 << 20);
    workers.emplace_back([&, t, n] {
      results[t] =
          batch == 0
              ? RunThread<UnaryKind>(stubs[t].get(), n, batch, false, measure_from, end,
                                     &latencies[t])
              : RunThread<BatchKind>(stubs[t].get(), n, batch, decisions_only, measure_from, end,
                                     &latencies[t]);
    });
  }
  for (std::thread& w : workers) w.join();
  Result result;
  std::vector<uint32_t> all;
  for (int t = 0; t < threads; ++t) {
    result.calls += results[t].calls;
    result.decisions += results[t].decisions;
    result.errors += results[t].errors;
    result.denied += results[t].denied;
    result.item_errors += results[t].item_errors;
    result.measured_decisions += results[t].measured_decisions;
    all.insert(all.end(), latencies[t].begin(), latencies[t].end());
  }
  std::sort(all.begin(), all.end());
  result.rps = all.size() / absl::ToDoubleSeconds(duration);
  result.dps = result.measured_decisions / absl::ToDoubleSeconds(duration);
  if (!all.empty()) {
    result.p50_us = all[all.size() / 2] / 1000.0;
    result.p99_us = all[std::min(all.size() - 1, all.size() * 99 / 100)] / 1000.0;
  }
  return result;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

// Unary Acquire calls: one line per run, then a table of medians per in-flight level and target.
int RunUnary(const std::vector<std::pair<std::string, std::string>>& targets,
             const std::vector<int>& levels) {
  // results[level][target] -> per-round results
  std::map<int, std::vector<std::vector<Result>>> results;
  const int rounds = absl::GetFlag(FLAGS_rounds);
  for (int round = 0; round < rounds; ++round) {
    for (int level : levels) {
      auto& per_target = results[level];
      per_target.resize(targets.size());
      for (size_t k = 0; k < targets.size(); ++k) {
        const size_t i = round % 2 == 0 ? k : targets.size() - 1 - k;
        Result r = Run(targets[i].second, level, /*batch=*/0, /*decisions_only=*/false,
                       absl::GetFlag(FLAGS_warmup), absl::GetFlag(FLAGS_duration));
        std::printf(
            "round=%d inflight=%d target=%s rps=%.0f p50_us=%.0f p99_us=%.0f "
            "errors=%lld denied=%lld\n",
            round + 1, level, targets[i].first.c_str(), r.rps, r.p50_us, r.p99_us,
            static_cast<long long>(r.errors), static_cast<long long>(r.denied));
        std::fflush(stdout);
        per_target[i].push_back(r);
      }
    }
  }

  std::printf("\nmedians over %d interleaved rounds of %s each (baseline: %s)\n", rounds,
              absl::FormatDuration(absl::GetFlag(FLAGS_duration)).c_str(),
              targets.back().first.c_str());
  std::printf("| in flight | target | req/s | p50 (us) | p99 (us) | ratio to %s |\n",
              targets.back().first.c_str());
  std::printf("| --- | --- | --- | --- | --- | --- |\n");
  for (int level : levels) {
    const auto& per_target = results[level];
    std::vector<double> base_rps;
    for (const Result& r : per_target.back()) base_rps.push_back(r.rps);
    const double base = Median(base_rps);
    for (size_t i = 0; i < targets.size(); ++i) {
      std::vector<double> rps, p50, p99;
      for (const Result& r : per_target[i]) {
        rps.push_back(r.rps);
        p50.push_back(r.p50_us);
        p99.push_back(r.p99_us);
      }
      std::printf("| %d | %s | %.0f | %.0f | %.0f | %.3f |\n", level, targets[i].first.c_str(),
                  Median(rps), Median(p50), Median(p99), base > 0 ? Median(rps) / base : 0.0);
    }
  }
  for (size_t i = 0; i < targets.size(); ++i) {
    int64_t calls = 0;
    for (const auto& [level, per_target] : results) {
      for (const Result& r : per_target[i]) calls += r.calls;
    }
    std::printf("total target=%s calls=%lld\n", targets[i].first.c_str(),
                static_cast<long long>(calls));
  }
  return 0;
}

// AcquireBatch calls: for each round, batch size and in-flight level, every target (the order
// alternating between rounds); one line per run, then the targets side by side: medians of
// decisions/s and calls/s, and each target's decisions/s divided by the baseline's.
int RunBatches(const std::vector<std::pair<std::string, std::string>>& targets,
               const std::vector<int>& levels, const std::vector<int>& batches) {
  // results[{batch, level}][target] -> per-round results
  std::map<std::pair<int, int>, std::vector<std::vector<Result>>> results;
  const int rounds = absl::GetFlag(FLAGS_rounds);
  const std::vector<std::string> decisions_only = absl::GetFlag(FLAGS_decisions_only);
  for (int round = 0; round < rounds; ++round) {
    for (int batch : batches) {
      for (int level : levels) {
        auto& per_target = results[{batch, level}];
        per_target.resize(targets.size());
        for (size_t k = 0; k < targets.size(); ++k) {
          const size_t i = round % 2 == 0 ? k : targets.size() - 1 - k;
          const bool d = std::find(decisions_only.begin(), decisions_only.end(),
                                   targets[i].first) != decisions_only.end();
          Result r = Run(targets[i].second, level, batch, d, absl::GetFlag(FLAGS_warmup),
                         absl::GetFlag(FLAGS_duration));
          std::printf(
              "round=%d batch=%d inflight=%d target=%s decisions_s=%.0f calls_s=%.0f "
              "p50_us=%.0f p99_us=%.0f errors=%lld denied=%lld item_errors=%lld\n",
              round + 1, batch, level, targets[i].first.c_str(), r.dps, r.rps, r.p50_us, r.p99_us,
              static_cast<long long>(r.errors), static_cast<long long>(r.denied),
              static_cast<long long>(r.item_errors));
          std::fflush(stdout);
          per_target[i].push_back(r);
        }
      }
    }
  }

  const std::string& base_name = targets.back().first;
  std::printf("\nmedians over %d interleaved rounds of %s each; decisions/s = items decided/s\n",
              rounds, absl::FormatDuration(absl::GetFlag(FLAGS_duration)).c_str());
  std::printf("| batch | in flight |");
  for (const auto& t : targets) {
    std::printf(" %s decisions/s | %s calls/s | %s p99 (us) |", t.first.c_str(), t.first.c_str(),
                t.first.c_str());
  }
  for (size_t i = 0; i + 1 < targets.size(); ++i) {
    std::printf(" %s / %s |", targets[i].first.c_str(), base_name.c_str());
  }
  std::printf("\n|---|---|");
  for (size_t i = 0; i < targets.size() * 4 - 1; ++i) std::printf("---|");
  std::printf("\n");
  for (int batch : batches) {
    for (int level : levels) {
      const auto& per_target = results[{batch, level}];
      std::vector<double> dps(targets.size());
      std::printf("| %d | %d |", batch, level);
      for (size_t i = 0; i < targets.size(); ++i) {
        std::vector<double> d, c, p99;
        for (const Result& r : per_target[i]) {
          d.push_back(r.dps);
          c.push_back(r.rps);
          p99.push_back(r.p99_us);
        }
        dps[i] = Median(d);
        std::printf(" %.0f | %.0f | %.0f |", dps[i], Median(c), Median(p99));
      }
      for (size_t i = 0; i + 1 < targets.size(); ++i) {
        std::printf(" %.3f |", dps.back() > 0 ? dps[i] / dps.back() : 0.0);
      }
      std::printf("\n");
    }
  }
  for (size_t i = 0; i < targets.size(); ++i) {
    int64_t calls = 0, decisions = 0;
    for (const auto& [key, per_target] : results) {
      for (const Result& r : per_target[i]) {
        calls += r.calls;
        decisions += r.decisions;
      }
    }
    std::printf("total target=%s decisions=%lld calls=%lld\n", targets[i].first.c_str(),
                static_cast<long long>(decisions), static_cast<long long>(calls));
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  std::vector<std::pair<std::string, std::string>> targets;
  for (const std::string& t : absl::GetFlag(FLAGS_target)) {
    std::vector<std::string> parts = absl::StrSplit(t, absl::MaxSplits('=', 1));
    if (parts.size() != 2) {
      std::fprintf(stderr, "grpc_loadgen: --target wants name=host:port, got %s\n", t.c_str());
      return 2;
    }
    targets.emplace_back(parts[0], parts[1]);
  }
  for (const std::string& name : absl::GetFlag(FLAGS_decisions_only)) {
    if (std::none_of(targets.begin(), targets.end(), [&](const auto& t) { return t.first == name; })) {
      std::fprintf(stderr, "grpc_loadgen: --decisions_only names %s, which is not a --target\n",
                   name.c_str());
      return 2;
    }
  }
  if (targets.empty()) {
    std::fprintf(stderr, "grpc_loadgen: give at least one --target=name=host:port\n");
    return 2;
  }
  std::vector<int> levels;
  for (const std::string& s : absl::GetFlag(FLAGS_inflight)) {
    int n = 0;
    if (!absl::SimpleAtoi(s, &n) || n <= 0) {
      std::fprintf(stderr, "grpc_loadgen: bad --inflight value %s\n", s.c_str());
      return 2;
    }
    levels.push_back(n);
  }

  std::vector<int> batches;
  for (const std::string& s : absl::GetFlag(FLAGS_batch)) {
    int n = 0;
    if (!absl::SimpleAtoi(s, &n) || n <= 0) {
      std::fprintf(stderr, "grpc_loadgen: bad --batch value %s\n", s.c_str());
      return 2;
    }
    batches.push_back(n);
  }
  return batches.empty() ? RunUnary(targets, levels) : RunBatches(targets, levels, batches);
}
