#include "service/server/health.h"

#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"

namespace quotad {

using grpc::health::v1::HealthCheckRequest;
using grpc::health::v1::HealthCheckResponse;

// One Watch stream on the async API: writes the current status, then every change, one write at
// a time; ends with OK when the service shuts down. Owns itself: deleted on its completion-queue
// thread once the call is done and no operation is outstanding. Send() may come from any thread.
class HealthService::WatchCall {
 public:
  WatchCall(HealthService* health, grpc::ServerCompletionQueue* cq)
      : health_(health),
        cq_(cq),
        writer_(&context_),
        request_tag_(this, Event::kRequest),
        write_tag_(this, Event::kWrite),
        finish_tag_(this, Event::kFinish),
        done_tag_(this, Event::kDone) {
    context_.AsyncNotifyWhenDone(&done_tag_);
    health_->service_.RequestWatch(&context_, &request_, &writer_, cq_, cq_, &request_tag_);
  }

  const std::string& name() const { return request_.service(); }

  // Ends the stream with `status` before anything was written.
  void Reject(const grpc::Status& status) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    if (done_ || finishing_) return;
    finishing_ = true;
    finish_outstanding_ = true;
    writer_.Finish(status, &finish_tag_);
  }

  // Queues `status` for writing; with `finish`, ends the stream once it is written.
  void Send(ServingStatus status, bool finish) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    if (done_ || finishing_) return;
    pending_ = status;
    finish_after_write_ = finish_after_write_ || finish;
    MaybeWriteLocked();
  }

 private:
  enum class Event { kRequest, kWrite, kFinish, kDone };

  struct Tag final : CallTag {
    Tag(WatchCall* c, Event e) : call(c), event(e) {}
    void Proceed(bool ok) override { call->OnEvent(event, ok); }
    WatchCall* const call;
    const Event event;
  };

  void OnEvent(Event event, bool ok) ABSL_LOCKS_EXCLUDED(mu_) {
    switch (event) {
      case Event::kRequest:
        if (!ok) {
          // Never started (the server is shutting down). Whether the done tag still comes is
          // up to gRPC, so the call is left for it; at most one per queue, at exit.
          absl::MutexLock lock(&mu_);
          never_started_ = true;
          return;
        }
        new WatchCall(health_, cq_);  // keep a Watch requested
        started_ = true;
        health_->StartWatch(this);
        return;
      case Event::kWrite: {
        absl::MutexLock lock(&mu_);
        writing_ = false;
        if (ok) MaybeWriteLocked();
        break;
      }
      case Event::kFinish: {
        absl::MutexLock lock(&mu_);
        finish_outstanding_ = false;
        break;
      }
      case Event::kDone: {
        {
          absl::MutexLock lock(&mu_);
          done_ = true;
          if (never_started_) {
            delete_now_ = true;
          }
        }
        if (started_) health_->Unregister(this);
        break;
      }
    }
    bool remove = false;
    {
      absl::MutexLock lock(&mu_);
      remove = delete_now_ || (done_ && !writing_ && !finish_outstanding_);
    }
    if (remove) delete this;
  }

  void MaybeWriteLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (writing_ || finishing_ || done_) return;
    if (pending_.has_value() && (!last_sent_.has_value() || *pending_ != *last_sent_)) {
      response_.set_status(*pending_);
      last_sent_ = pending_;
      pending_.reset();
      writing_ = true;
      writer_.Write(response_, &write_tag_);
      return;
    }
    pending_.reset();
    if (finish_after_write_) {
      finishing_ = true;
      finish_outstanding_ = true;
      writer_.Finish(grpc::Status::OK, &finish_tag_);
    }
  }

  HealthService* const health_;
  grpc::ServerCompletionQueue* const cq_;
  grpc::ServerContext context_;
  HealthCheckRequest request_;
  grpc::ServerAsyncWriter<HealthCheckResponse> writer_;
  Tag request_tag_, write_tag_, finish_tag_, done_tag_;
  bool started_ = false;  // touched only on the completion-queue thread

  absl::Mutex mu_;
  HealthCheckResponse response_ ABSL_GUARDED_BY(mu_);
  std::optional<ServingStatus> pending_ ABSL_GUARDED_BY(mu_);
  std::optional<ServingStatus> last_sent_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool finish_after_write_ ABSL_GUARDED_BY(mu_) = false;
  bool finishing_ ABSL_GUARDED_BY(mu_) = false;
  bool finish_outstanding_ ABSL_GUARDED_BY(mu_) = false;
  bool done_ ABSL_GUARDED_BY(mu_) = false;
  bool never_started_ ABSL_GUARDED_BY(mu_) = false;
  bool delete_now_ ABSL_GUARDED_BY(mu_) = false;
};

HealthService::HealthService(const std::vector<std::string>& services, int64_t max_watchers,
                             std::function<void()> on_rejected)
    : max_watchers_(max_watchers), on_rejected_(std::move(on_rejected)) {
  absl::MutexLock lock(&mu_);
  statuses_[""] = HealthCheckResponse::NOT_SERVING;
  for (const std::string& s : services) statuses_[s] = HealthCheckResponse::NOT_SERVING;
}

HealthService::~HealthService() = default;

void HealthService::Arm(grpc::ServerCompletionQueue* cq, CallGate* gate) {
  if (check_.service == nullptr) {
    check_ = {&service_, &AsyncService::RequestCheck,
              [this](CheckCall* call) { HandleCheck(call); }, gate};
  }
  check_.Arm(cq);
  new WatchCall(this, cq);  // long-lived: not counted by `gate`; ended by Shutdown()
}

void HealthService::HandleCheck(CheckCall* call) {
  grpc::Status status;
  {
    absl::MutexLock lock(&mu_);
    auto it = statuses_.find(call->request().service());
    if (it == statuses_.end()) {
      status = grpc::Status(grpc::StatusCode::NOT_FOUND,
                            absl::StrCat("unknown service \"", call->request().service(), "\""));
    } else {
      call->response()->set_status(it->second);
    }
  }
  call->Finish(status);
}

void HealthService::SetAll(ServingStatus status) {
  absl::MutexLock lock(&mu_);
  if (shut_down_) return;
  for (auto& [name, s] : statuses_) s = status;
  for (WatchCall* w : watchers_) {
    w->Send(statuses_.contains(w->name()) ? status : HealthCheckResponse::SERVICE_UNKNOWN,
            /*finish=*/false);
  }
}

void HealthService::Shutdown() {
  absl::MutexLock lock(&mu_);
  if (shut_down_) return;
  shut_down_ = true;
  for (auto& [name, s] : statuses_) s = HealthCheckResponse::NOT_SERVING;
  for (WatchCall* w : watchers_) {
    const bool known = statuses_.contains(w->name());
    w->Send(known ? HealthCheckResponse::NOT_SERVING : HealthCheckResponse::SERVICE_UNKNOWN,
            /*finish=*/true);
  }
}

bool HealthService::AwaitWatchersGone(absl::Time deadline) {
  absl::MutexLock lock(&mu_);
  return mu_.AwaitWithDeadline(
      absl::Condition(
          +[](absl::flat_hash_set<WatchCall*>* w) { return w->empty(); }, &watchers_),
      deadline);
}

int64_t HealthService::watchers() {
  absl::MutexLock lock(&mu_);
  return static_cast<int64_t>(watchers_.size());
}

void HealthService::StartWatch(WatchCall* call) {
  absl::MutexLock lock(&mu_);
  if (static_cast<int64_t>(watchers_.size()) >= max_watchers_) {
    if (on_rejected_) on_rejected_();
    call->Reject(grpc::Status(
        grpc::StatusCode::RESOURCE_EXHAUSTED,
        absl::StrCat("quotad has ", max_watchers_,
                     " Health.Watch streams open already (--max_health_watchers); use "
                     "Health.Check, or retry later")));
    return;
  }
  auto it = statuses_.find(call->name());
  const ServingStatus status =
      it == statuses_.end() ? HealthCheckResponse::SERVICE_UNKNOWN : it->second;
  watchers_.insert(call);
  call->Send(shut_down_ ? HealthCheckResponse::NOT_SERVING : status, /*finish=*/shut_down_);
}

void HealthService::Unregister(WatchCall* call) {
  absl::MutexLock lock(&mu_);
  watchers_.erase(call);
}

}  // namespace quotad
