#include "service/server/health.h"

#include <optional>

#include "absl/strings/str_cat.h"

namespace quotad {

using grpc::health::v1::HealthCheckRequest;
using grpc::health::v1::HealthCheckResponse;

// One Watch stream: writes the current status, then every change, one write at a time.
class HealthService::WatchReactor final : public grpc::ServerWriteReactor<HealthCheckResponse> {
 public:
  WatchReactor(HealthService* service, std::string name)
      : service_(service), name_(std::move(name)) {}

  // Queues `status` for writing; with `finish`, ends the stream once it is written.
  void Send(ServingStatus status, bool finish) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    if (finished_) return;
    pending_ = status;
    finish_after_write_ = finish_after_write_ || finish;
    MaybeWriteLocked();
  }

  void OnWriteDone(bool ok) override ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    writing_ = false;
    if (!ok) {
      FinishLocked(grpc::Status::CANCELLED);
      return;
    }
    MaybeWriteLocked();
  }

  void OnCancel() override ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    FinishLocked(grpc::Status::CANCELLED);
  }

  void OnDone() override {
    service_->Unregister(this);
    delete this;
  }

 private:
  void MaybeWriteLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (writing_ || finished_) return;
    if (pending_.has_value() && (!last_sent_.has_value() || *pending_ != *last_sent_)) {
      response_.set_status(*pending_);
      last_sent_ = pending_;
      pending_.reset();
      writing_ = true;
      StartWrite(&response_);
      return;
    }
    pending_.reset();
    if (finish_after_write_) FinishLocked(grpc::Status::OK);
  }

  void FinishLocked(const grpc::Status& status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finished_) return;
    finished_ = true;
    Finish(status);
  }

  HealthService* const service_;
  const std::string name_;
  absl::Mutex mu_;
  HealthCheckResponse response_ ABSL_GUARDED_BY(mu_);
  std::optional<ServingStatus> pending_ ABSL_GUARDED_BY(mu_);
  std::optional<ServingStatus> last_sent_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool finish_after_write_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;

 public:
  const std::string& name() const { return name_; }
};

HealthService::HealthService(const std::vector<std::string>& services) {
  absl::MutexLock lock(&mu_);
  statuses_[""] = HealthCheckResponse::NOT_SERVING;
  for (const std::string& s : services) statuses_[s] = HealthCheckResponse::NOT_SERVING;
}

HealthService::~HealthService() = default;

void HealthService::SetAll(ServingStatus status) {
  absl::MutexLock lock(&mu_);
  if (shut_down_) return;
  for (auto& [name, s] : statuses_) s = status;
  for (WatchReactor* w : watchers_) w->Send(status, /*finish=*/false);
}

void HealthService::Shutdown() {
  absl::MutexLock lock(&mu_);
  if (shut_down_) return;
  shut_down_ = true;
  for (auto& [name, s] : statuses_) s = HealthCheckResponse::NOT_SERVING;
  for (WatchReactor* w : watchers_) {
    const bool known = statuses_.contains(w->name());
    w->Send(known ? HealthCheckResponse::NOT_SERVING : HealthCheckResponse::SERVICE_UNKNOWN,
            /*finish=*/true);
  }
}

void HealthService::Unregister(WatchReactor* reactor) {
  absl::MutexLock lock(&mu_);
  watchers_.erase(reactor);
}

grpc::ServerUnaryReactor* HealthService::Check(grpc::CallbackServerContext* context,
                                               const HealthCheckRequest* request,
                                               HealthCheckResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  absl::MutexLock lock(&mu_);
  auto it = statuses_.find(request->service());
  if (it == statuses_.end()) {
    reactor->Finish(grpc::Status(grpc::StatusCode::NOT_FOUND,
                                 absl::StrCat("unknown service \"", request->service(), "\"")));
    return reactor;
  }
  response->set_status(it->second);
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerWriteReactor<HealthCheckResponse>* HealthService::Watch(
    grpc::CallbackServerContext* context, const HealthCheckRequest* request) {
  auto* reactor = new WatchReactor(this, request->service());
  absl::MutexLock lock(&mu_);
  auto it = statuses_.find(request->service());
  const ServingStatus status =
      it == statuses_.end() ? HealthCheckResponse::SERVICE_UNKNOWN : it->second;
  if (shut_down_) {
    reactor->Send(HealthCheckResponse::NOT_SERVING, /*finish=*/true);
  } else {
    watchers_.insert(reactor);
    reactor->Send(status, /*finish=*/false);
  }
  return reactor;
}

}  // namespace quotad
