// The privacy parameters of a DP job on one site, computed the same way by the daemon (to check
// the budget before accepting a round, and to record it) and the trainer (to train with them).
#pragma once

#include <cstdint>

#include "absl/status/statusor.h"
#include "fl/config.pb.h"

namespace fl {

struct DpPlan {
  double sample_rate = 0;       // q = batch_size / train images (Poisson sampling)
  double noise_multiplier = 0;  // σ, given by the job or calibrated for the whole job
  uint64_t steps_per_round = 0;
  double delta = 0;
};

// REQUIRES: spec.dp().enabled() and a validated spec. With target_epsilon, σ is calibrated so
// that all rounds of the job together reach it at spec.dp().delta().
absl::StatusOr<DpPlan> PlanDp(const JobSpec& spec, uint64_t train_images);

}  // namespace fl
