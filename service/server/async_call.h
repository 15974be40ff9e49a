#ifndef QUOTAD_SERVICE_SERVER_ASYNC_CALL_H_
#define QUOTAD_SERVICE_SERVER_ASYNC_CALL_H_

// The state machine of one unary call on gRPC's asynchronous CompletionQueue API.

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

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

// One method of a generated AsyncService, shared by every call of it and of one call kind
// (`Call`: UnaryCall or ParkableCall below); must outlive them. The one place that requests a
// call from gRPC and counts it at the gate.
template <typename Service, typename Request, typename Response, typename Call>
struct CallMethod {
  using Responder = grpc::ServerAsyncResponseWriter<Response>;
  using RequestFn = void (Service::*)(grpc::ServerContext*, Request*, Responder*,
                                      grpc::CompletionQueue*, grpc::ServerCompletionQueue*, void*);

  Service* service = nullptr;
  RequestFn request = nullptr;
  std::function<void(Call*)> handler;
  // Optional. While `gate->draining`, new calls are answered UNAVAILABLE without running the
  // handler; `gate->active` counts calls from arrival until their answer is sent.
  CallGate* gate = nullptr;

  // Asks gRPC for the next call of this method on `cq`.
  void Arm(grpc::ServerCompletionQueue* cq) const { new Call(this, cq); }

  // For the call's constructor: registers `tag` for the next call's arrival.
  void RequestNext(grpc::ServerContext* context, Request* request, Responder* responder,
                   grpc::ServerCompletionQueue* cq, void* tag) const {
    (service->*this->request)(context, request, responder, cq, cq, tag);
  }

  // For a call that arrived: counts it at the gate. False when the server is draining (the
  // call must then be answered Draining() without running the handler).
  bool Enter() const {
    if (gate == nullptr) return true;
    gate->active.fetch_add(1, std::memory_order_acq_rel);
    return !gate->draining.load(std::memory_order_acquire);
  }
  // For a call whose answer was sent (only after Enter()).
  void Leave() const {
    if (gate != nullptr) gate->active.fetch_sub(1, std::memory_order_acq_rel);
  }
  static grpc::Status Draining() {
    return grpc::Status(grpc::StatusCode::UNAVAILABLE, "quotad is shutting down");
  }
};

// One unary call of `Service` (a generated AsyncService): requested, handled, finished, deleted.
// The handler runs on the completion-queue thread that received the call; it must not block,
// and must call Finish() exactly once, at once or later from any thread (work that may block is
// handed to another thread, which then calls Finish()). A call owns itself and is deleted when
// its last event arrives.
template <typename Service, typename Request, typename Response>
class UnaryCall final : public CallTag {
 public:
  using Method = CallMethod<Service, Request, Response, UnaryCall>;

  // Same as method->Arm(cq), for code that names the call type (bench/grpc/noop_server.cc).
  static void Arm(const Method* method, grpc::ServerCompletionQueue* cq) { method->Arm(cq); }

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
      if (finishing_) method_->Leave();
      delete this;
      return;
    }
    method_->Arm(cq_);  // keep a call requested while this one is handled
    if (!method_->Enter()) return Finish(Method::Draining());
    method_->handler(this);
  }

 private:
  friend Method;
  UnaryCall(const Method* method, grpc::ServerCompletionQueue* cq)
      : method_(method), cq_(cq), responder_(&context_) {
    method->RequestNext(&context_, &request_, &responder_, cq, this);
  }

  const Method* const method_;
  grpc::ServerCompletionQueue* const cq_;
  grpc::ServerContext context_;
  Request request_;
  Response response_;
  typename Method::Responder responder_;
  bool finishing_ = false;
};

// A unary call that may be parked: answered later from any thread (a wait queue's callback),
// and told when its client is gone or its deadline passed (ServerContext::AsyncNotifyWhenDone),
// so that whoever holds it parked can drop it.
//
// Lifetime: reference-counted. The request/finish path holds one reference, the done
// notification one, the running handler one, and whoever parks the call takes one with Ref()
// (a CallRef that may live in a callback and is released when the callback is destroyed, called
// or not). The call is deleted when the last reference goes.
//
// Finishing: TryFinish() sends the answer exactly once, whichever thread gets there first; later
// calls return false. Thread-safe.
template <typename Service, typename Request, typename Response>
class ParkableCall final : public CallTag {
 public:
  using Method = CallMethod<Service, Request, Response, ParkableCall>;

  // A reference that keeps the call alive. Move-only.
  class CallRef {
   public:
    explicit CallRef(ParkableCall* call) : call_(call) {}
    CallRef(CallRef&& o) noexcept : call_(std::exchange(o.call_, nullptr)) {}
    CallRef& operator=(CallRef&& o) noexcept {
      if (this != &o) {
        Reset();
        call_ = std::exchange(o.call_, nullptr);
      }
      return *this;
    }
    CallRef(const CallRef&) = delete;
    CallRef& operator=(const CallRef&) = delete;
    ~CallRef() { Reset(); }
    void Reset() {
      if (call_ != nullptr) std::exchange(call_, nullptr)->Unref();
    }
    ParkableCall* get() const { return call_; }
    ParkableCall* operator->() const { return call_; }

   private:
    ParkableCall* call_;
  };

  const Request& request() const { return request_; }
  Response* response() { return &response_; }
  grpc::ServerContext* context() { return &context_; }

  CallRef Ref() {
    refs_.fetch_add(1, std::memory_order_relaxed);
    return CallRef(this);
  }

  // Sends `status` (and the response when OK) unless the call was already finished. The caller
  // must hold a reference, and must not touch the response once this returned true.
  bool TryFinish(const grpc::Status& status) ABSL_LOCKS_EXCLUDED(mu_) {
    {
      absl::MutexLock lock(&mu_);
      if (finished_) return false;
      finished_ = true;
      on_cancel_ = nullptr;
    }
    if (status.ok()) {
      responder_.Finish(response_, status, &finish_tag_);
    } else {
      responder_.FinishWithError(status, &finish_tag_);
    }
    return true;
  }

  // What to run when the client goes away (cancel, deadline) before the call is finished: it
  // takes the call out of wherever it is parked. Runs at once when that already happened. Runs
  // at most once, on a completion-queue thread or the caller's.
  void OnCancel(std::function<void()> fn) ABSL_LOCKS_EXCLUDED(mu_) {
    {
      absl::MutexLock lock(&mu_);
      if (finished_) return;
      if (!cancelled_) {
        on_cancel_ = std::move(fn);
        return;
      }
    }
    fn();
  }

  // The request arrived (first event).
  void Proceed(bool ok) override {
    if (!ok) {  // the server is shutting down; no done notification comes for an unstarted call
      Unref();
      return;
    }
    method_->Arm(cq_);
    refs_.fetch_add(1, std::memory_order_relaxed);  // for the done notification
    counted_ = true;
    if (!method_->Enter()) {
      TryFinish(Method::Draining());
      return;
    }
    CallRef self = Ref();
    method_->handler(this);
  }

 private:
  struct FinishTag final : CallTag {
    explicit FinishTag(ParkableCall* c) : call(c) {}
    void Proceed(bool) override {
      if (call->counted_) call->method_->Leave();
      call->Unref();
    }
    ParkableCall* call;
  };
  struct DoneTag final : CallTag {
    explicit DoneTag(ParkableCall* c) : call(c) {}
    void Proceed(bool) override { call->Done(); }
    ParkableCall* call;
  };

  friend Method;
  ParkableCall(const Method* method, grpc::ServerCompletionQueue* cq)
      : method_(method), cq_(cq), responder_(&context_), finish_tag_(this), done_tag_(this) {
    context_.AsyncNotifyWhenDone(&done_tag_);
    method->RequestNext(&context_, &request_, &responder_, cq, this);
  }

  void Done() ABSL_LOCKS_EXCLUDED(mu_) {
    std::function<void()> cancel;
    if (context_.IsCancelled()) {
      absl::MutexLock lock(&mu_);
      cancelled_ = true;
      if (!finished_) cancel = std::move(on_cancel_);
      on_cancel_ = nullptr;
    }
    if (cancel) cancel();
    Unref();
  }

  void Unref() {
    if (refs_.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
  }

  const Method* const method_;
  grpc::ServerCompletionQueue* const cq_;
  grpc::ServerContext context_;
  Request request_;
  Response response_;
  typename Method::Responder responder_;
  FinishTag finish_tag_;
  DoneTag done_tag_;
  std::atomic<int> refs_{1};
  bool counted_ = false;  // counted in gate->active

  absl::Mutex mu_;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  std::function<void()> on_cancel_ ABSL_GUARDED_BY(mu_);
};

}  // namespace quotad

#endif  // QUOTAD_SERVICE_SERVER_ASYNC_CALL_H_
