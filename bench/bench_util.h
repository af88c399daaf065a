// Small helpers shared by the fl-bench benchmarks: flag parsing, best-of-N
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

// Removes "--name value" or "--name=value" from `args` into `*value` (left unchanged when the
// flag is absent).
void TakeStringFlag(std::vector<std::string> &args, const std::string &name,
                    std::string *value);

// Parses "--name value" or "--name=value" integer flags. Every flag in `args`
// must be one of `defaults` (name without dashes, default value); returns the
// values in the order of `defaults`.
absl::StatusOr<std::vector<int64_t>> ParseIntFlags(
    const std::vector<std::string> &args,
    const std::vector<std::pair<std::string, int64_t>> &defaults);

// Runs `body` once untimed (warm-up), then `repetitions` times; returns the
// fastest run in seconds, or the first error `body` returned.
absl::StatusOr<double> BestOf(int repetitions, const std::function<absl::Status()> &body);

// A field of /proc/self/status in bytes ("VmRSS", "VmHWM"); Internal error if
// it is missing.
absl::StatusOr<uint64_t> ProcStatusBytes(const std::string &field);

// Throughput in MiB/s of `bytes` moved in `seconds`.
double MibPerSecond(uint64_t bytes, double seconds);

// Prints "key=value key=value ..." (values with 2 decimals) as one line on
// stdout.
void PrintKeyValues(const std::vector<std::pair<std::string, double>> &values);

constexpr uint64_t kMib = 1 << 20;

}  // namespace fl::bench
