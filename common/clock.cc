#include "common/clock.h"

#include <algorithm>

#include "absl/time/clock.h"

namespace fl {
namespace {

class RealClock : public Clock {
 public:
  absl::Time Now() override { return absl::Now(); }
  void Sleep(absl::Duration duration, const std::atomic<bool>* stop) override {
    const absl::Time end = absl::Now() + duration;
    for (absl::Time now = absl::Now(); now < end && !(stop && *stop); now = absl::Now()) {
      absl::SleepFor(std::min(end - now, absl::Milliseconds(100)));
    }
  }
  bool AwaitWithTimeout(absl::Mutex& mu, const absl::Condition& condition,
                        absl::Duration timeout) override {
    return mu.AwaitWithTimeout(condition, timeout);
  }
};

}  // namespace

bool ManualClock::AwaitWithTimeout(absl::Mutex& mu, const absl::Condition& condition,
                                   absl::Duration timeout) {
  absl::Time deadline;
  {
    absl::MutexLock lock(&mu_);
    waits_.push_back(timeout);
    slept_ += timeout;
    if (!blocking_) {
      if (!condition.Eval()) now_ += timeout;
      return condition.Eval();
    }
    deadline = now_ + timeout;
    ++waiting_;
  }
  // Polls Now in real time (tests only): `mu` is released while waiting, as the real clock does.
  while (!condition.Eval() && Now() < deadline) {
    mu.AwaitWithTimeout(condition, absl::Milliseconds(5));
  }
  absl::MutexLock lock(&mu_);
  --waiting_;
  return condition.Eval();
}

Clock& SystemClock() {
  static RealClock* clock = new RealClock;
  return *clock;
}

}  // namespace fl
