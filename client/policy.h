// The site's privacy policy: what hospital IT requires of a task before this site downloads or
// trains anything (ClientConfig.policy and ClientConfig.budget). Torch- and gRPC-free.
#pragma once

#include <string>

#include "fl/config.pb.h"
#include "privacy/dp_plan.h"

namespace fl {

// Whether the site trains only with DP: policy.require_dp when set, else whenever the site has a
// privacy cap (budget.max_epsilon > 0).
bool RequiresDp(const ClientConfig& config);

// Why this site must decline a task of `spec` (empty: the policy allows it). `plan` is the DP
// plan of a training task that asks for DP (null otherwise); `evaluate_only` tasks train nothing
// and send only evaluation metrics, so only the workload rule applies to them. The reason names
// the rule and both values, and never holds patient data.
std::string PolicyRefusal(const ClientConfig& config, const JobSpec& spec, const DpPlan* plan,
                          bool evaluate_only);

}  // namespace fl
