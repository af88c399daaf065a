// The one torch-including piece of the coordinator: a job's initial weights, from the registry
// (seeded) or from the job's `initial_model` file.
#pragma once

#include "server/coordinator.h"

namespace fl {

absl::StatusOr<ModelInit> InitModelFromRegistry(const JobSpec& spec);

}  // namespace fl
