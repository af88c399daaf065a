#include "privacy/dp_plan.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "privacy/rdp_accountant.h"

namespace fl {

absl::StatusOr<DpPlan> PlanDp(const JobSpec& spec, uint64_t train_images) {
  if (train_images == 0) return absl::FailedPreconditionError("no training images for DP-SGD");
  DpPlan plan;
  plan.sample_rate = std::min(1.0, static_cast<double>(spec.batch_size()) / train_images);
  plan.steps_per_round = spec.local_steps();
  plan.delta = spec.dp().delta();
  if (spec.dp().noise_multiplier() > 0) {
    plan.noise_multiplier = spec.dp().noise_multiplier();
    return plan;
  }
  const uint64_t job_steps = uint64_t{spec.rounds()} * spec.local_steps();
  ASSIGN_OR_RETURN(
      plan.noise_multiplier,
      CalibrateNoise(plan.sample_rate, job_steps, spec.dp().target_epsilon(), spec.dp().delta()));
  return plan;
}

}  // namespace fl
