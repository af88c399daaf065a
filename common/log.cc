#include "common/log.h"

#include <iostream>

#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace fl {

void LogLine(const char* program, const std::string& line) {
  const std::string now =
      absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::Now(), absl::UTCTimeZone());
  std::cerr << now << " " << program << ": " << line << std::endl;
}

}  // namespace fl
