#include "service/server/background.h"

#include <sys/stat.h>

#include <algorithm>
#include <utility>

namespace quotad {

BlockingWorker::BlockingWorker() : thread_([this] { Run(); }) {}

void BlockingWorker::Schedule(std::function<void()> run, std::function<void()> cancel) {
  {
    absl::MutexLock lock(&mu_);
    if (!stop_) {
      queue_.push_back(Job{std::move(run), std::move(cancel)});
      return;
    }
  }
  cancel();
}

void BlockingWorker::Stop() {
  std::deque<Job> cancelled;
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
    cancelled.swap(queue_);
  }
  for (Job& job : cancelled) job.cancel();
  if (thread_.joinable()) thread_.join();
}

void BlockingWorker::Run() {
  for (;;) {
    Job job;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(
          +[](BlockingWorker* w)
               ABSL_EXCLUSIVE_LOCKS_REQUIRED(w->mu_) { return w->stop_ || !w->queue_.empty(); },
          this));
      if (stop_ || queue_.empty()) return;
      job = std::move(queue_.front());
      queue_.pop_front();
    }
    job.run();
  }
}

void WaitQueuePump::WakeBy(absl::Time t) {
  absl::MutexLock lock(&mu_);
  if (t < next_) {
    next_ = t;
    changed_ = true;
  }
}

void WaitQueuePump::Start(Ledger* ledger) {
  ledger_ = ledger;
  thread_ = std::thread([this] { Run(); });
}

void WaitQueuePump::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

void WaitQueuePump::Run() {
  for (;;) {
    {
      absl::MutexLock lock(&mu_);
      for (;;) {
        if (stop_) return;
        const absl::Time now = clock_->Now();
        if (next_ <= now) break;
        changed_ = false;
        const absl::Duration left =
            next_ == absl::InfiniteFuture() ? absl::InfiniteDuration() : next_ - now;
        // The times are the wall clock's, which may step: while requests wait, pump at least
        // every kMaxPumpWait, so that a step back never holds a waiter up for the step.
        const bool woken = mu_.AwaitWithTimeout(
            absl::Condition(
                +[](WaitQueuePump* p) ABSL_EXCLUSIVE_LOCKS_REQUIRED(p->mu_) {
                  return p->stop_ || p->changed_;
                },
                this),
            std::min(left, kMaxPumpWait));
        if (!woken && left > kMaxPumpWait && ledger_->waiting() > 0) break;
      }
      next_ = absl::InfiniteFuture();
    }
    const absl::Time next = ledger_->Pump();
    absl::MutexLock lock(&mu_);
    if (next < next_) next_ = next;
  }
}

Sweeper::Sweeper(Clock* clock, absl::Duration tick, std::vector<SweepJob> jobs)
    : clock_(clock),
      tick_(tick),
      jobs_(std::move(jobs)),
      last_run_(jobs_.size(), absl::InfinitePast()) {}

void Sweeper::Start() { thread_ = std::thread([this] { Run(); }); }

void Sweeper::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

std::vector<std::string> Sweeper::JobNames() const {
  std::vector<std::string> names;
  for (const SweepJob& job : jobs_) names.push_back(job.name);
  return names;
}

void Sweeper::Run() {
  for (;;) {
    {
      absl::MutexLock lock(&mu_);
      if (mu_.AwaitWithTimeout(absl::Condition(&stop_), tick_)) return;
    }
    RunDue();
  }
}

void Sweeper::RunDue() {
  for (size_t i = 0; i < jobs_.size(); ++i) {
    const absl::Time now = clock_->Now();
    if (now - last_run_[i] < jobs_[i].every) continue;
    last_run_[i] = now;
    jobs_[i].run();
  }
}

ConfigFileWatch::ConfigFileWatch(std::string path)
    : path_(std::move(path)), version_(Stat(path_)) {}

std::optional<ConfigFileWatch::FileVersion> ConfigFileWatch::Stat(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return std::nullopt;
  return FileVersion{st.st_dev, st.st_ino, st.st_size,
                     int64_t{st.st_mtim.tv_sec} * 1'000'000'000 + st.st_mtim.tv_nsec};
}

bool ConfigFileWatch::Changed() {
  const std::optional<FileVersion> version = Stat(path_);
  if (!version.has_value() || version == version_) {
    return false;  // unchanged, or gone for a moment while a ConfigMap update swaps it
  }
  version_ = version;
  return true;
}

}  // namespace quotad
