// A GradientReducer (privacy/dp_sgd.h) over LibTorch's c10d process groups: the processes of one
// site that train one model together, each on a shard of the site's data. Gloo on CPUs (NCCL on
// GPUs is the next step). The processes meet through a rendezvous file that all of them can
// reach (c10d's FileStore: a private folder of the site's state, never the network), and the
// group's own traffic stays on the address given (loopback for processes on one machine).
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "privacy/dp_sgd.h"

namespace fl {

struct ProcessGroupOptions {
  // The rendezvous file, the same for every rank of the group and new for each group (a file
  // left by an earlier group would pair new ranks with old keys).
  std::string store_path;
  int rank = 0;
  int world_size = 1;
  // The address the group's connections use (Gloo binds to it).
  std::string hostname = "127.0.0.1";
  // How long joining the group, and then each sum, may wait for the other ranks.
  absl::Duration timeout = absl::Seconds(60);
};

// Joins the group (returns once every rank has joined). INVALID_ARGUMENT for a rank outside
// [0, world_size) or an empty store path; DEADLINE_EXCEEDED or UNAVAILABLE when the other ranks
// do not come within the timeout, naming the file and the rank.
absl::StatusOr<std::unique_ptr<GradientReducer>> JoinGlooGroup(const ProcessGroupOptions& options);

}  // namespace fl
