// For tests only: a worker process of a test (common/test_workers.h) joining its Gloo group.
#pragma once

#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "privacy/process_group.h"

namespace fl {

// The value of `variable` for one rank: "RANK,WORLD,STORE" then the test's own fields.
inline std::string WorkerValue(int rank, int world, const std::string& store,
                               const std::string& rest) {
  return absl::StrCat(rank, ",", world, ",", store, ",", rest);
}

// Joins the group `variable` names (WorkerValue) within `timeout`; `rest` gets the test's own
// fields.
inline absl::StatusOr<std::unique_ptr<GradientReducer>> JoinWorkerGroup(
    const char* variable, std::vector<std::string>* rest,
    absl::Duration timeout = absl::Seconds(60)) {
  const char* value = std::getenv(variable);
  if (value == nullptr) return absl::FailedPreconditionError(absl::StrCat(variable, " unset"));
  std::vector<std::string> fields = absl::StrSplit(value, ',');
  if (fields.size() < 3) return absl::InvalidArgumentError(absl::StrCat(variable, "=", value));
  ProcessGroupOptions options;
  options.rank = std::stoi(fields[0]);
  options.world_size = std::stoi(fields[1]);
  options.store_path = fields[2];
  options.timeout = timeout;
  rest->assign(fields.begin() + 3, fields.end());
  return JoinGlooGroup(options);
}

}  // namespace fl
