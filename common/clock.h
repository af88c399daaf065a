// Time as the daemons see it, injected (as LevelDB's Env injects files and time) so that tests
// advance a clock instead of sleeping through real back-off pauses.
#pragma once

#include <atomic>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace fl {

class Clock {
 public:
  virtual ~Clock() = default;
  virtual absl::Time Now() = 0;
  // Waits `duration`, or returns early once `*stop` is true (when `stop` is not null).
  virtual void Sleep(absl::Duration duration, const std::atomic<bool>* stop) = 0;
};

// The real clock: absl::Now, and sleeps in slices of at most 100 ms to notice `stop`.
Clock& SystemClock();

// A clock that tests advance: Sleep adds to Now at once and returns. Thread-safe.
class ManualClock : public Clock {
 public:
  explicit ManualClock(absl::Time start = absl::FromUnixSeconds(1'700'000'000)) : now_(start) {}
  absl::Time Now() override {
    absl::MutexLock lock(&mu_);
    return now_;
  }
  void Sleep(absl::Duration duration, const std::atomic<bool>*) override {
    absl::MutexLock lock(&mu_);
    now_ += duration;
    slept_ += duration;
  }
  void Advance(absl::Duration duration) {
    absl::MutexLock lock(&mu_);
    now_ += duration;
  }
  // Everything Sleep was asked to wait, in total.
  absl::Duration slept() {
    absl::MutexLock lock(&mu_);
    return slept_;
  }

 private:
  absl::Mutex mu_;
  absl::Time now_ ABSL_GUARDED_BY(mu_);
  absl::Duration slept_ ABSL_GUARDED_BY(mu_);
};

}  // namespace fl
