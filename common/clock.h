// Time as the daemons see it, injected (as LevelDB's Env injects files and time) so that tests
// advance a clock instead of sleeping through real back-off pauses.
#pragma once

#include <atomic>
#include <vector>

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
  // Waits until `condition` holds or `timeout` has passed on this clock; returns whether the
  // condition holds. REQUIRES: `mu` held (as absl::Mutex::AwaitWithTimeout, which the real
  // clock calls: `mu` is released while waiting).
  virtual bool AwaitWithTimeout(absl::Mutex& mu, const absl::Condition& condition,
                                absl::Duration timeout) = 0;
};

// The real clock: absl::Now, and sleeps in slices of at most 100 ms to notice `stop`.
Clock& SystemClock();

// A clock that tests advance. Sleep adds to Now at once and returns. AwaitWithTimeout passes its
// timeout at once too, unless the clock is `blocking`: then it waits (releasing `mu`) until the
// condition holds or a test has advanced Now past the timeout, so a test can look at a daemon
// in the middle of a pause and then end it. Thread-safe.
class ManualClock : public Clock {
 public:
  explicit ManualClock(absl::Time start = absl::FromUnixSeconds(1'700'000'000),
                       bool blocking = false)
      : blocking_(blocking), now_(start) {}
  absl::Time Now() override {
    absl::MutexLock lock(&mu_);
    return now_;
  }
  void Sleep(absl::Duration duration, const std::atomic<bool>*) override {
    absl::MutexLock lock(&mu_);
    now_ += duration;
    slept_ += duration;
  }
  bool AwaitWithTimeout(absl::Mutex& mu, const absl::Condition& condition,
                        absl::Duration timeout) override;
  void Advance(absl::Duration duration) {
    absl::MutexLock lock(&mu_);
    now_ += duration;
  }
  // Everything Sleep and AwaitWithTimeout were asked to wait, in total.
  absl::Duration slept() {
    absl::MutexLock lock(&mu_);
    return slept_;
  }
  // The timeout of each AwaitWithTimeout call so far, in order.
  std::vector<absl::Duration> waits() {
    absl::MutexLock lock(&mu_);
    return waits_;
  }
  // Calls of AwaitWithTimeout waiting now (a blocking clock only).
  int waiting() {
    absl::MutexLock lock(&mu_);
    return waiting_;
  }

 private:
  const bool blocking_;
  absl::Mutex mu_;
  absl::Time now_ ABSL_GUARDED_BY(mu_);
  absl::Duration slept_ ABSL_GUARDED_BY(mu_);
  std::vector<absl::Duration> waits_ ABSL_GUARDED_BY(mu_);
  int waiting_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace fl
