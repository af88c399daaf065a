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
};

}  // namespace

Clock& SystemClock() {
  static RealClock* clock = new RealClock;
  return *clock;
}

}  // namespace fl
