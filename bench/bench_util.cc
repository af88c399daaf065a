#include "bench/bench_util.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

namespace fl::bench {

absl::StatusOr<double> BestOf(int repetitions, const std::function<absl::Status()>& body) {
  if (absl::Status s = body(); !s.ok()) return s;
  double best = 1e300;
  for (int r = 0; r < repetitions; ++r) {
    const auto start = std::chrono::steady_clock::now();
    if (absl::Status s = body(); !s.ok()) return s;
    const std::chrono::duration<double> took = std::chrono::steady_clock::now() - start;
    best = std::min(best, took.count());
  }
  return best;
}

absl::StatusOr<uint64_t> ProcStatusBytes(const std::string& field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  const std::string prefix = field + ":";
  while (std::getline(in, line)) {
    if (!absl::StartsWith(line, prefix)) continue;
    std::istringstream fields(line.substr(prefix.size()));
    uint64_t kib = 0;
    if (fields >> kib) return kib * 1024;
  }
  return absl::InternalError(absl::StrCat("no ", field, " in /proc/self/status"));
}

double MibPerSecond(uint64_t bytes, double seconds) {
  return seconds > 0 ? static_cast<double>(bytes) / kMib / seconds : 0.0;
}

void PrintKeyValues(const std::vector<std::pair<std::string, double>>& values) {
  std::vector<std::string> parts;
  for (const auto& [key, value] : values) parts.push_back(absl::StrFormat("%s=%.2f", key, value));
  std::printf("%s\n", absl::StrJoin(parts, " ").c_str());
  std::fflush(stdout);
}

}  // namespace fl::bench
