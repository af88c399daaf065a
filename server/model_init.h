// The one torch-including piece of the coordinator: a job's initial weights from the registry.
#pragma once

#include "server/coordinator.h"

namespace fl {

absl::StatusOr<ModelInit> InitModelFromRegistry(const JobSpec& spec);

}  // namespace fl
