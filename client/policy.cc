#include "client/policy.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "models/spec.h"

namespace fl {

bool RequiresDp(const ClientConfig& config) {
  if (config.policy().has_require_dp()) return config.policy().require_dp();
  return config.budget().max_epsilon() > 0;
}

std::string PolicyRefusal(const ClientConfig& config, const JobSpec& spec, const DpPlan* plan,
                          bool evaluate_only) {
  const SitePolicy& policy = config.policy();
  const std::string workload = WorkloadName(spec);
  if (!policy.workloads().empty() && std::find(policy.workloads().begin(), policy.workloads().end(),
                                               workload) == policy.workloads().end()) {
    return absl::StrCat("site policy: this site does not train '", workload, "' jobs (it takes ",
                        absl::StrJoin(policy.workloads(), ", "), ")");
  }
  if (evaluate_only) return "";
  if (plan == nullptr) {
    if (!RequiresDp(config)) return "";
    return "site policy: this site trains only with differential privacy (the job has no dp; "
           "require_dp, or a privacy cap, is set in the site's config)";
  }
  if (policy.min_noise_multiplier() > 0 && plan->noise_multiplier < policy.min_noise_multiplier()) {
    return absl::StrFormat(
        "site policy: the job's noise multiplier %.4g is below the least this site accepts (%.4g)",
        plan->noise_multiplier, policy.min_noise_multiplier());
  }
  const double clip = spec.dp().clip_norm() > 0 ? spec.dp().clip_norm() : 1.0;
  if (policy.max_clip_norm() > 0 && clip > policy.max_clip_norm()) {
    return absl::StrFormat(
        "site policy: the job's clip norm %.4g is above the largest this site accepts (%.4g)", clip,
        policy.max_clip_norm());
  }
  return "";
}

}  // namespace fl
