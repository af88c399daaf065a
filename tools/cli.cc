#include "tools/cli.h"

#include <algorithm>

#include <cstdlib>
#include <iostream>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace fl::cli {

std::map<std::string, Command>& Registry() {
  static auto* registry = new std::map<std::string, Command>();
  return *registry;
}

absl::StatusOr<Args> Args::Parse(const std::vector<std::string>& argv,
                                 const std::vector<std::string>& flags) {
  Args args;
  for (size_t i = 0; i < argv.size(); ++i) {
    const std::string& word = argv[i];
    if (!absl::StartsWith(word, "--")) {
      args.positional_.push_back(word);
      continue;
    }
    std::string key = word.substr(2);
    size_t eq = key.find('=');
    if (eq != std::string::npos) {
      args.values_[key.substr(0, eq)] = key.substr(eq + 1);
    } else if (std::find(flags.begin(), flags.end(), key) != flags.end()) {
      args.values_[key] = "true";
    } else if (i + 1 < argv.size()) {
      args.values_[key] = argv[++i];
    } else {
      return absl::InvalidArgumentError(absl::StrCat("option --", key, " needs a value"));
    }
  }
  return args;
}

std::string Args::Get(const std::string& key, const std::string& fallback) const {
  auto it = values_.find(key);
  return it == values_.end() ? fallback : it->second;
}

absl::StatusOr<std::string> Args::Require(const std::string& key) const {
  auto it = values_.find(key);
  if (it == values_.end() || it->second.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("missing required option --", key));
  }
  return it->second;
}

absl::StatusOr<double> Args::GetDouble(const std::string& key,
                                       std::optional<double> fallback) const {
  auto it = values_.find(key);
  if (it == values_.end()) {
    if (fallback) return *fallback;
    return absl::InvalidArgumentError(absl::StrCat("missing required option --", key));
  }
  double v;
  if (!absl::SimpleAtod(it->second, &v)) {
    return absl::InvalidArgumentError(absl::StrCat("--", key, " must be a number, got '",
                                                   it->second, "'"));
  }
  return v;
}

absl::StatusOr<int64_t> Args::GetInt(const std::string& key,
                                     std::optional<int64_t> fallback) const {
  auto it = values_.find(key);
  if (it == values_.end()) {
    if (fallback) return *fallback;
    return absl::InvalidArgumentError(absl::StrCat("missing required option --", key));
  }
  int64_t v;
  if (!absl::SimpleAtoi(it->second, &v)) {
    return absl::InvalidArgumentError(absl::StrCat("--", key, " must be an integer, got '",
                                                   it->second, "'"));
  }
  return v;
}

absl::Status Args::CheckKnown(const std::vector<std::string>& known) const {
  for (const auto& [key, value] : values_) {
    if (std::find(known.begin(), known.end(), key) == known.end()) {
      return absl::InvalidArgumentError(absl::StrCat("unknown option --", key));
    }
  }
  return absl::OkStatus();
}

int Fail(const absl::Status& status, int code) {
  std::cerr << "flctl: " << status.message() << "\n";
  return code;
}

}  // namespace fl::cli

