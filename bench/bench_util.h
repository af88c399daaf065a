// Small helpers shared by the fl-bench benchmarks: best-of-N
// timing, process memory and the final key=value line.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace fl::bench {

// Runs `body` once untimed (warm-up), then `repetitions` times; returns the
// fastest run in seconds, or the first error `body` returned.
absl::StatusOr<double> BestOf(int repetitions, const std::function<absl::Status()>& body);

// A field of /proc/self/status in bytes ("VmRSS", "VmHWM"); Internal error if
// it is missing.
absl::StatusOr<uint64_t> ProcStatusBytes(const std::string& field);

// Throughput in MiB/s of `bytes` moved in `seconds`.
double MibPerSecond(uint64_t bytes, double seconds);

// Prints "key=value key=value ..." (values with 2 decimals) as one line on
// stdout.
void PrintKeyValues(const std::vector<std::pair<std::string, double>>& values);

constexpr uint64_t kMib = 1 << 20;

}  // namespace fl::bench
