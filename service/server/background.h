#ifndef QUOTAD_SERVICE_SERVER_BACKGROUND_H_
#define QUOTAD_SERVICE_SERVER_BACKGROUND_H_

// The server's work outside calls: the timer that serves the wait queues (WaitQueuePump), the
// sweeper with its named periodic jobs (Sweeper), the config-file watch (ConfigFileWatch), and
// the thread that runs handlers that may block (BlockingWorker).

#include <deque>
#include <functional>
#include <optional>
#include <string>
#include <sys/types.h>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "service/core/clock.h"
#include "service/core/ledger.h"

namespace quotad {

// Runs work that may block (file I/O) off the completion-queue threads, one job at a time.
// A job has two halves: `run`, and `cancel`, which runs instead when Stop() finds the job still
// queued (it answers the job's call without doing the work). Thread-safe. Owns its thread.
class BlockingWorker {
 public:
  BlockingWorker();
  ~BlockingWorker() { Stop(); }

  // Runs `run` later on the worker thread, or `cancel` on the Stop() caller's thread when the
  // worker is stopped first. After Stop(), runs `cancel` at once.
  void Schedule(std::function<void()> run, std::function<void()> cancel) ABSL_LOCKS_EXCLUDED(mu_);

  // Cancels every queued job, waits for the one running (if any) and joins. Idempotent. Once it
  // returned, no job runs any more, so what the jobs touch (completion queues) may be shut down.
  void Stop() ABSL_LOCKS_EXCLUDED(mu_);

 private:
  struct Job {
    std::function<void()> run;
    std::function<void()> cancel;
  };
  void Run() ABSL_LOCKS_EXCLUDED(mu_);

  absl::Mutex mu_;
  std::deque<Job> queue_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

// Runs Ledger::Pump() when the wait queues need it: at the time the last Pump() returned, or
// earlier when the ledger parks a request that must be served sooner (LedgerOptions::wake).
// Sleeps on a condition otherwise (no polling). Thread-safe. Does not own the ledger or clock;
// Stop() must run before the ledger is destroyed.
class WaitQueuePump {
 public:
  // The longest the pump sleeps while requests wait (see Run).
  static constexpr absl::Duration kMaxPumpWait = absl::Seconds(1);

  explicit WaitQueuePump(Clock* clock) : clock_(clock) {}
  ~WaitQueuePump() { Stop(); }

  // LedgerOptions::wake.
  void WakeBy(absl::Time t) ABSL_LOCKS_EXCLUDED(mu_);

  void Start(Ledger* ledger);
  void Stop() ABSL_LOCKS_EXCLUDED(mu_);

 private:
  void Run() ABSL_LOCKS_EXCLUDED(mu_);

  Clock* const clock_;
  Ledger* ledger_ = nullptr;
  absl::Mutex mu_;
  absl::Time next_ ABSL_GUARDED_BY(mu_) = absl::InfiniteFuture();
  bool changed_ ABSL_GUARDED_BY(mu_) = false;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

// One periodic job of the sweeper.
struct SweepJob {
  std::string name;  // for logs and tests: "expire_leases", "compaction", ...
  // How often it runs, on the sweeper's clock; zero: on every tick.
  absl::Duration every = absl::ZeroDuration();
  std::function<void()> run;
};

// Runs its jobs, in order, on one thread: every `tick`, each job whose interval has passed
// since it last ran (a job runs on the first tick). Thread-safe. Owns its thread; does not own
// `clock`, which must outlive *this; what the jobs touch must outlive Stop().
class Sweeper {
 public:
  Sweeper(Clock* clock, absl::Duration tick, std::vector<SweepJob> jobs);
  ~Sweeper() { Stop(); }

  void Start();
  // Waits for the job running (if any) and joins. Idempotent.
  void Stop() ABSL_LOCKS_EXCLUDED(mu_);

  // The names of the jobs, in the order they run.
  std::vector<std::string> JobNames() const;

 private:
  void Run() ABSL_LOCKS_EXCLUDED(mu_);
  // One tick: every job that is due. Sweeper thread only.
  void RunDue();

  Clock* const clock_;
  const absl::Duration tick_;
  std::vector<SweepJob> jobs_;
  std::vector<absl::Time> last_run_;  // by job; sweeper thread only
  absl::Mutex mu_;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

// Tells whether a config file changed since it was last looked at: a new inode, size or mtime
// (following symlinks: a Kubernetes ConfigMap update swaps one). A file gone for a moment is
// no change. Not thread-safe (one sweeper job uses it).
class ConfigFileWatch {
 public:
  // Takes the file as it is now as the version loaded.
  explicit ConfigFileWatch(std::string path);
  // True once per new version.
  bool Changed();

 private:
  struct FileVersion {
    dev_t dev = 0;
    ino_t ino = 0;
    off_t size = -1;
    int64_t mtime_ns = 0;
    bool operator==(const FileVersion& o) const {
      return dev == o.dev && ino == o.ino && size == o.size && mtime_ns == o.mtime_ns;
    }
  };
  static std::optional<FileVersion> Stat(const std::string& path);

  const std::string path_;
  std::optional<FileVersion> version_;
};

}  // namespace quotad

#endif  // QUOTAD_SERVICE_SERVER_BACKGROUND_H_
