#include "bench/bench_util.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

namespace fl::bench {

void TakeStringFlag(std::vector<std::string> &args, const std::string &name,
                    std::string *value) {
  for (size_t i = 0; i < args.size(); ++i) {
    if (args[i] == "--" + name && i + 1 < args.size()) {
      *value = args[i + 1];
      args.erase(args.begin() + i, args.begin() + i + 2);
      return;
    }
    if (absl::StartsWith(args[i], "--" + name + "=")) {
      *value = args[i].substr(name.size() + 3);
      args.erase(args.begin() + i);
      return;
    }
  }
}

absl::StatusOr<std::vector<int64_t>> ParseIntFlags(
    const std::vector<std::string> &args,
    const std::vector<std::pair<std::string, int64_t>> &defaults) {
  std::vector<int64_t> values;
  for (const auto &d : defaults) values.push_back(d.second);
  for (size_t i = 0; i < args.size(); ++i) {
    if (!absl::StartsWith(args[i], "--")) {
      return absl::InvalidArgumentError(absl::StrCat("unexpected argument '", args[i], "'"));
    }
    std::string name = args[i].substr(2);
    std::string text;
    if (const size_t eq = name.find('='); eq != std::string::npos) {
      text = name.substr(eq + 1);
      name.resize(eq);
    } else if (i + 1 < args.size()) {
      text = args[++i];
    } else {
      return absl::InvalidArgumentError(absl::StrCat("--", name, " needs a value"));
    }
    size_t k = 0;
    while (k < defaults.size() && defaults[k].first != name) ++k;
    if (k == defaults.size())
      return absl::InvalidArgumentError(absl::StrCat("unknown flag --", name));
    if (!absl::SimpleAtoi(text, &values[k]) || values[k] <= 0) {
      return absl::InvalidArgumentError(absl::StrCat("--", name, " wants a positive integer"));
    }
  }
  return values;
}

absl::StatusOr<double> BestOf(int repetitions, const std::function<absl::Status()> &body) {
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

absl::StatusOr<uint64_t> ProcStatusBytes(const std::string &field) {
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

void PrintKeyValues(const std::vector<std::pair<std::string, double>> &values) {
  std::vector<std::string> parts;
  for (const auto &[key, value] : values) parts.push_back(absl::StrFormat("%s=%.2f", key, value));
  std::printf("%s\n", absl::StrJoin(parts, " ").c_str());
  std::fflush(stdout);
}

}  // namespace fl::bench
