// Asynchronous load generator for quotad.v1.Quota/Acquire, A/B against several targets.
//
//   grpc_loadgen --target=quotad=127.0.0.1:5001 --target=noop=127.0.0.1:5002
//                [--inflight=1,16,64] [--rounds=3] [--duration=3s] [--warmup=500ms]
//                [--credential=bench/key] [--feature=requests]
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

namespace {

using Clock = std::chrono::steady_clock;

struct Result {
  int64_t calls = 0;  // every completed call, warm-up included
  double rps = 0;
  double p50_us = 0;
  double p99_us = 0;
  int64_t errors = 0;
  int64_t denied = 0;
};

struct Call {
  grpc::ClientContext context;
  quotad::v1::AcquireResponse response;
  grpc::Status status;
  std::unique_ptr<grpc::ClientAsyncResponseReader<quotad::v1::AcquireResponse>> reader;
  Clock::time_point start;
};

// One client thread: `inflight` calls outstanding on its own queue until `end`. Appends the
// latencies of the calls that started and ended inside [measure_from, end).
Result RunThread(quotad::v1::Quota::Stub* stub, int inflight, Clock::time_point measure_from,
                 Clock::time_point end, std::vector<uint32_t>* latencies) {
  grpc::CompletionQueue cq;
  quotad::v1::AcquireRequest request;
  request.set_credential(absl::GetFlag(FLAGS_credential));
  request.set_feature(absl::GetFlag(FLAGS_feature));
  request.set_holder("loadgen");

  auto start_call = [&] {
    auto* call = new Call;
    call->start = Clock::now();
    call->reader = stub->PrepareAsyncAcquire(&call->context, request, &cq);
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
    auto* call = static_cast<Call*>(tag);
    const Clock::time_point now = Clock::now();
    --outstanding;
    ++result.calls;
    if (now >= measure_from && call->start >= measure_from && now < end) {
      if (!ok || !call->status.ok()) {
        ++result.errors;
      } else {
        if (!call->response.granted()) ++result.denied;
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
Result Run(const std::string& address, int inflight, absl::Duration warmup,
           absl::Duration duration) {
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
    workers.emplace_back(
        [&, t, n] { results[t] = RunThread(stubs[t].get(), n, measure_from, end, &latencies[t]); });
  }
  for (std::thread& w : workers) w.join();
  Result result;
  std::vector<uint32_t> all;
  for (int t = 0; t < threads; ++t) {
    result.calls += results[t].calls;
    result.errors += results[t].errors;
    result.denied += results[t].denied;
    all.insert(all.end(), latencies[t].begin(), latencies[t].end());
  }
  std::sort(all.begin(), all.end());
  result.rps = all.size() / absl::ToDoubleSeconds(duration);
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

  // results[level][target] -> per-round results
  std::map<int, std::vector<std::vector<Result>>> results;
  const int rounds = absl::GetFlag(FLAGS_rounds);
  for (int round = 0; round < rounds; ++round) {
    for (int level : levels) {
      auto& per_target = results[level];
      per_target.resize(targets.size());
      for (size_t k = 0; k < targets.size(); ++k) {
        const size_t i = round % 2 == 0 ? k : targets.size() - 1 - k;
        Result r = Run(targets[i].second, level, absl::GetFlag(FLAGS_warmup),
                       absl::GetFlag(FLAGS_duration));
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
