#ifndef QUOTAD_SERVICE_SERVER_ASYNC_CALL_H_
#define QUOTAD_SERVICE_SERVER_ASYNC_CALL_H_

// The state machine of one unary call on gRPC's asynchronous CompletionQueue API.

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <cstdint>
#include <functional>

namespace quotad {

// What the completion queue hands back. Proceed() runs on a completion-queue thread.
class CallTag {
 public:
  virtual ~CallTag() = default;
  virtual void Proceed(bool ok) = 0;
};

// Calls being handled, and whether new ones are still taken. Shared by every method of a
// server. Thread-safe.
struct CallGate {
  std::atomic<int64_t> active{0};
  std::atomic<bool> draining{false};
};

// One unary call of `Service` (a generated AsyncService): requested, handled, finished, deleted.
// The handler runs on the completion-queue thread that received the call; it must not block,
// and must call Finish() exactly once, at once or later from any thread (work that may block is
// handed to another thread, which then calls Finish()). A call owns itself and is deleted when
// its last event arrives.
template <typename Service, typename Request, typename Response>
class UnaryCall final : public CallTag {
 public:
  using Responder = grpc::ServerAsyncResponseWriter<Response>;
  using RequestFn = void (Service::*)(grpc::ServerContext*, Request*, Responder*,
                                      grpc::CompletionQueue*, grpc::ServerCompletionQueue*, void*);
  using Handler = std::function<void(UnaryCall*)>;

  // Shared by every call of one method; must outlive them.
  struct Method {
    Service* service = nullptr;
    RequestFn request = nullptr;
    Handler handler;
    // Optional. While `gate->draining`, new calls are answered UNAVAILABLE without running the
    // handler; `gate->active` counts calls from arrival until their answer is sent.
    CallGate* gate = nullptr;
  };

  // Asks gRPC for the next call of `method` on `cq`.
  static void Arm(const Method* method, grpc::ServerCompletionQueue* cq) {
    new UnaryCall(method, cq);
  }

  const Request& request() const { return request_; }
  Response* response() { return &response_; }
  grpc::ServerContext* context() { return &context_; }

  void Finish(const grpc::Status& status) {
    finishing_ = true;
    if (status.ok()) {
      responder_.Finish(response_, status, this);
    } else {
      responder_.FinishWithError(status, this);
    }
  }

  void Proceed(bool ok) override {
    if (finishing_ || !ok) {  // sent, or the server is shutting down
      if (finishing_ && method_->gate != nullptr) {
        method_->gate->active.fetch_sub(1, std::memory_order_acq_rel);
      }
      delete this;
      return;
    }
    Arm(method_, cq_);  // keep a call requested while this one is handled
    if (method_->gate != nullptr) {
      method_->gate->active.fetch_add(1, std::memory_order_acq_rel);
      if (method_->gate->draining.load(std::memory_order_acquire)) {
        Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "quotad is shutting down"));
        return;
      }
    }
    method_->handler(this);
  }

 private:
  UnaryCall(const Method* method, grpc::ServerCompletionQueue* cq)
      : method_(method), cq_(cq), responder_(&context_) {
    (method->service->*method->request)(&context_, &request_, &responder_, cq, cq, this);
  }

  const Method* const method_;
  grpc::ServerCompletionQueue* const cq_;
  grpc::ServerContext context_;
  Request request_;
  Response response_;
  Responder responder_;
  bool finishing_ = false;
};

}  // namespace quotad

#endif  // QUOTAD_SERVICE_SERVER_ASYNC_CALL_H_
