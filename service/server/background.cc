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

absl::Duration WaitQueuePump::DeadlineOf(absl::Time t) const {
  if (t == absl::InfiniteFuture()) return absl::InfiniteDuration();
  return clock_->Monotonic() + std::max(absl::ZeroDuration(), t - clock_->Now());
}

void WaitQueuePump::ArmLocked(absl::Duration deadline) {
  if (deadline >= armed_for_ || deadline == absl::InfiniteDuration()) return;
  armed_for_ = deadline;
  armed_timer_->EnableAt(deadline);
}

void WaitQueuePump::WakeBy(absl::Time t) {
  const absl::Duration deadline = DeadlineOf(t);
  absl::MutexLock lock(&mu_);
  if (armed_timer_ == nullptr) {
    pending_ = std::min(pending_, deadline);
    return;
  }
  ArmLocked(deadline);
}

void WaitQueuePump::Start(Ledger* ledger) {
  ledger_ = ledger;
  timer_ = clock_->CreateTimer([this] { Fire(); });
  absl::MutexLock lock(&mu_);
  armed_timer_ = timer_.get();
  ArmLocked(pending_);
}

void WaitQueuePump::Stop() {
  {
    absl::MutexLock lock(&mu_);
    armed_timer_ = nullptr;
  }
  timer_.reset();  // disables it, and waits for a Fire() running on the timer thread
}

void WaitQueuePump::Fire() {
  {
    absl::MutexLock lock(&mu_);
    if (armed_timer_ == nullptr) return;
    armed_for_ = absl::InfiniteDuration();
  }
  absl::Duration next = DeadlineOf(ledger_->Pump());
  if (ledger_->waiting() > 0) next = std::min(next, clock_->Monotonic() + kMaxPumpWait);
  absl::MutexLock lock(&mu_);
  if (armed_timer_ != nullptr) ArmLocked(next);
}

Sweeper::Sweeper(Clock* clock, absl::Duration tick, std::vector<SweepJob> jobs)
    : clock_(clock),
      tick_(tick),
      jobs_(std::move(jobs)),
      last_run_(jobs_.size(), -absl::InfiniteDuration()) {}

void Sweeper::Start() {
  timer_ = clock_->CreateTimer([this] { Tick(); });
  thread_ = std::thread([this] { Run(); });
  absl::MutexLock lock(&mu_);
  armed_timer_ = timer_.get();
  armed_timer_->Enable(tick_);
}

void Sweeper::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
    armed_timer_ = nullptr;
  }
  timer_.reset();  // disables it, and waits for a Tick() running on the timer thread
  if (thread_.joinable()) thread_.join();
}

std::vector<std::string> Sweeper::JobNames() const {
  std::vector<std::string> names;
  for (const SweepJob& job : jobs_) names.push_back(job.name);
  return names;
}

int64_t Sweeper::ticks_done() {
  absl::MutexLock lock(&mu_);
  return ticks_done_;
}

void Sweeper::AwaitTicks(int64_t n) {
  absl::MutexLock lock(&mu_);
  auto done = [this, n]() {
    mu_.AssertReaderHeld();
    return stop_ || ticks_done_ >= n;
  };
  mu_.Await(absl::Condition(&done));
}

void Sweeper::Tick() {
  absl::MutexLock lock(&mu_);
  if (armed_timer_ == nullptr) return;
  ++ticks_due_;
  armed_timer_->Enable(tick_);
}

void Sweeper::Run() {
  for (;;) {
    {
      absl::MutexLock lock(&mu_);
      auto due = [this]() {
        mu_.AssertReaderHeld();
        return stop_ || ticks_due_ > ticks_done_;
      };
      mu_.Await(absl::Condition(&due));
      if (stop_) return;
      // Ticks that came while the jobs ran are served by one run.
      ticks_done_ = ticks_due_ - 1;
    }
    RunDue();
    absl::MutexLock lock(&mu_);
    ++ticks_done_;
  }
}

void Sweeper::RunDue() {
  for (size_t i = 0; i < jobs_.size(); ++i) {
    const absl::Duration now = clock_->Monotonic();
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
