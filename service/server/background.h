#ifndef QUOTAD_SERVICE_SERVER_BACKGROUND_H_
#define QUOTAD_SERVICE_SERVER_BACKGROUND_H_

// The server's work outside calls: the timer that serves the wait queues (WaitQueuePump), the
// sweeper with its named periodic jobs (Sweeper), the config-file watch (ConfigFileWatch), and
// the thread that runs handlers that may block (BlockingWorker). Time comes from the Clock: its
// timers drive the pump and the sweeper, so that a FakeClock drives them in tests.

#include <deque>
#include <cstdint>
#include <functional>
#include <memory>
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

// Runs Ledger::Pump() when the wait queues need it, on a timer of the clock: at the time the
// last Pump() returned, or earlier when the ledger parks a request that must be served sooner
// (LedgerOptions::wake). While requests wait it pumps at least every kMaxPumpWait, so that a
// step of the wall clock (the ledger's times are wall times) never holds a waiter up for the
// step. Pump() runs on the clock's timer thread (real clock) or inside FakeClock::Advance.
// Thread-safe. Does not own the ledger or clock; Stop() must run before the ledger is
// destroyed.
class WaitQueuePump {
 public:
  static constexpr absl::Duration kMaxPumpWait = absl::Seconds(1);

  explicit WaitQueuePump(Clock* clock) : clock_(clock) {}
  ~WaitQueuePump() { Stop(); }

  // LedgerOptions::wake: Pump() must run by wall time `t`.
  void WakeBy(absl::Time t) ABSL_LOCKS_EXCLUDED(mu_);

  void Start(Ledger* ledger) ABSL_LOCKS_EXCLUDED(mu_);
  // Disables the timer and waits for a Pump() running on another thread. Idempotent.
  void Stop() ABSL_LOCKS_EXCLUDED(mu_);

 private:
  void Fire() ABSL_LOCKS_EXCLUDED(mu_);
  // Arms the timer for monotonic `deadline` unless it is armed for earlier.
  void ArmLocked(absl::Duration deadline) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Wall time `t` as a monotonic deadline.
  absl::Duration DeadlineOf(absl::Time t) const;

  Clock* const clock_;
  Ledger* ledger_ = nullptr;  // set by Start
  std::unique_ptr<Timer> timer_;  // set by Start, reset by Stop (outside mu_)
  absl::Mutex mu_;
  Timer* armed_timer_ ABSL_GUARDED_BY(mu_) = nullptr;  // timer_ while running, else null
  absl::Duration armed_for_ ABSL_GUARDED_BY(mu_) = absl::InfiniteDuration();
  // A wake that came before Start.
  absl::Duration pending_ ABSL_GUARDED_BY(mu_) = absl::InfiniteDuration();
};

// One periodic job of the sweeper.
struct SweepJob {
  std::string name;  // for logs and tests: "expire_leases", "compaction", ...
  // How often it runs, on the sweeper's clock; zero: on every tick.
  absl::Duration every = absl::ZeroDuration();
  std::function<void()> run;
};

// Runs its jobs, in order, on its own thread (jobs may block: compaction writes the state
// file): every `tick` of a timer on `clock`, each job whose interval has passed (on the clock's
// monotonic time) since it last ran; every job runs on the first tick. With a FakeClock,
// Advance() fires the tick. Thread-safe. Owns its thread; does not own `clock`, which must
// outlive *this; what the jobs touch must outlive Stop().
class Sweeper {
 public:
  Sweeper(Clock* clock, absl::Duration tick, std::vector<SweepJob> jobs);
  ~Sweeper() { Stop(); }

  void Start() ABSL_LOCKS_EXCLUDED(mu_);
  // Waits for the job running (if any) and joins. Idempotent.
  void Stop() ABSL_LOCKS_EXCLUDED(mu_);

  // The names of the jobs, in the order they run.
  std::vector<std::string> JobNames() const;
  // Ticks whose jobs have all run.
  int64_t ticks_done() ABSL_LOCKS_EXCLUDED(mu_);
  // Blocks until at least `n` ticks are done (or Stop()); for tests, after advancing a clock.
  void AwaitTicks(int64_t n) ABSL_LOCKS_EXCLUDED(mu_);

 private:
  void Tick() ABSL_LOCKS_EXCLUDED(mu_);  // the timer's callback
  void Run() ABSL_LOCKS_EXCLUDED(mu_);
  void RunDue();  // sweeper thread only

  Clock* const clock_;
  const absl::Duration tick_;
  std::vector<SweepJob> jobs_;
  std::vector<absl::Duration> last_run_;  // by job, monotonic; sweeper thread only
  std::unique_ptr<Timer> timer_;          // set by Start, reset by Stop (outside mu_)
  absl::Mutex mu_;
  Timer* armed_timer_ ABSL_GUARDED_BY(mu_) = nullptr;
  int64_t ticks_due_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t ticks_done_ ABSL_GUARDED_BY(mu_) = 0;
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
