// The baseline for bench/grpc: a server of the same quotad.v1.Quota proto on the same async
// CompletionQueue API and thread layout as quotad, whose Acquire does nothing but answer
// `granted: true`, and whose AcquireBatch and ReleaseBatch answer one trivial result per item
// (`granted: true`, an empty release) without a ledger.
//
//   grpc_noop_server [--listen=127.0.0.1:0] [--cq_threads=0]
// Logs `listening address=HOST:PORT` on stderr; exits on SIGTERM/SIGINT.

#include <grpcpp/grpcpp.h>
#include <signal.h>

#include <cstdio>
#include <memory>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "quotad/v1/quotad.grpc.pb.h"
#include "service/server/async_call.h"
#include "service/server/server.h"

ABSL_FLAG(std::string, listen, "127.0.0.1:0", "host:port; port 0 picks a free port.");
ABSL_FLAG(int, cq_threads, 0, "Completion-queue threads; 0: one per hardware thread.");

namespace {
using Service = quotad::v1::Quota::AsyncService;
using AcquireCall =
    quotad::UnaryCall<Service, quotad::v1::AcquireRequest, quotad::v1::AcquireResponse>;
using AcquireBatchCall =
    quotad::UnaryCall<Service, quotad::v1::AcquireBatchRequest, quotad::v1::AcquireBatchResponse>;
using ReleaseBatchCall =
    quotad::UnaryCall<Service, quotad::v1::ReleaseBatchRequest, quotad::v1::ReleaseBatchResponse>;
constexpr int kArmedCalls = 16;      // as in quotad
constexpr int kArmedBatchCalls = 4;  // as in quotad
}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  Service service;
  grpc::ServerBuilder builder;
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  int port = 0;
  builder.AddListeningPort(absl::GetFlag(FLAGS_listen), grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&service);
  int n = absl::GetFlag(FLAGS_cq_threads);
  if (n <= 0) n = std::max(1u, std::thread::hardware_concurrency());
  std::vector<std::unique_ptr<grpc::ServerCompletionQueue>> cqs;
  for (int i = 0; i < n; ++i) cqs.push_back(builder.AddCompletionQueue());
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    std::fprintf(stderr, "grpc_noop_server: cannot listen on %s\n",
                 absl::GetFlag(FLAGS_listen).c_str());
    return 1;
  }
  AcquireCall::Method acquire{&service, &Service::RequestAcquire, [](AcquireCall* call) {
                                call->response()->set_granted(true);
                                call->Finish(grpc::Status::OK);
                              }};
  AcquireBatchCall::Method acquire_batch{&service, &Service::RequestAcquireBatch,
                                         [](AcquireBatchCall* call) {
                                           const int n = call->request().items_size();
                                           auto* results = call->response()->mutable_results();
                                           results->Reserve(n);
                                           for (int i = 0; i < n; ++i)
                                             results->Add()->mutable_response()->set_granted(true);
                                           call->Finish(grpc::Status::OK);
                                         }};
  ReleaseBatchCall::Method release_batch{&service, &Service::RequestReleaseBatch,
                                         [](ReleaseBatchCall* call) {
                                           const int n = call->request().items_size();
                                           auto* results = call->response()->mutable_results();
                                           results->Reserve(n);
                                           for (int i = 0; i < n; ++i)
                                             results->Add()->mutable_response();
                                           call->Finish(grpc::Status::OK);
                                         }};
  std::vector<std::thread> threads;
  for (auto& cq : cqs) {
    for (int i = 0; i < kArmedCalls; ++i) AcquireCall::Arm(&acquire, cq.get());
    for (int i = 0; i < kArmedBatchCalls; ++i) {
      AcquireBatchCall::Arm(&acquire_batch, cq.get());
      ReleaseBatchCall::Arm(&release_batch, cq.get());
    }
    grpc::ServerCompletionQueue* q = cq.get();
    threads.emplace_back([q] {
      void* tag;
      bool ok;
      while (q->Next(&tag, &ok)) static_cast<quotad::CallTag*>(tag)->Proceed(ok);
    });
  }
  std::fprintf(stderr, "level=info logger=noop listening address=%s\n",
               quotad::BoundAddress(absl::GetFlag(FLAGS_listen), port).c_str());
  int sig = 0;
  sigwait(&signals, &sig);
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  for (auto& cq : cqs) cq->Shutdown();
  for (auto& t : threads) t.join();
  return 0;
}
