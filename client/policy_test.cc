#include "client/policy.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "models/spec.h"

namespace fl {
namespace {

using ::testing::HasSubstr;
using ::testing::IsEmpty;

JobSpec Spec(double clip_norm) {
  JobSpec spec;
  spec.mutable_dp()->set_enabled(true);
  spec.mutable_dp()->set_clip_norm(clip_norm);
  return spec;
}

DpPlan Plan(double sigma) {
  DpPlan plan;
  plan.noise_multiplier = sigma;
  return plan;
}

TEST(SitePolicyTest, DpIsRequiredOnceACapIsSetUnlessTheSiteSaysOtherwise) {
  ClientConfig config;
  EXPECT_FALSE(RequiresDp(config));
  config.mutable_budget()->set_max_epsilon(8);
  EXPECT_TRUE(RequiresDp(config));
  EXPECT_THAT(PolicyRefusal(config, JobSpec(), nullptr, false),
              HasSubstr("only with differential"));
  config.mutable_policy()->set_require_dp(false);
  EXPECT_THAT(PolicyRefusal(config, JobSpec(), nullptr, false), IsEmpty());
  config.clear_budget();
  config.mutable_policy()->set_require_dp(true);
  EXPECT_THAT(PolicyRefusal(config, JobSpec(), nullptr, false),
              HasSubstr("only with differential"));
}

TEST(SitePolicyTest, NoiseAndClipBounds) {
  ClientConfig config;
  config.mutable_policy()->set_min_noise_multiplier(1.0);
  config.mutable_policy()->set_max_clip_norm(2.0);
  DpPlan low = Plan(0.9), enough = Plan(1.0);
  EXPECT_THAT(PolicyRefusal(config, Spec(1.0), &low, false), HasSubstr("below the least"));
  EXPECT_THAT(PolicyRefusal(config, Spec(1.0), &enough, false), IsEmpty());
  EXPECT_THAT(PolicyRefusal(config, Spec(2.5), &enough, false), HasSubstr("above the largest"));
  // A job that leaves clip_norm at 0 trains with the default C = 1.
  config.mutable_policy()->set_max_clip_norm(0.5);
  EXPECT_THAT(PolicyRefusal(config, Spec(0), &enough, false), HasSubstr("clip norm 1 is above"));
}

TEST(SitePolicyTest, WorkloadsAndEvaluationTasks) {
  ClientConfig config;
  config.mutable_budget()->set_max_epsilon(8);
  // An evaluation trains and sends no update: the DP rules do not apply to it.
  EXPECT_THAT(PolicyRefusal(config, JobSpec(), nullptr, true), IsEmpty());
  config.mutable_policy()->add_workloads("classification");
  EXPECT_EQ(WorkloadName(JobSpec()), "classification");
  EXPECT_THAT(PolicyRefusal(config, JobSpec(), nullptr, true), IsEmpty());
  // A site that takes only another workload declines classification, evaluations included.
  config.mutable_policy()->set_workloads(0, "autoencoder");
  EXPECT_THAT(PolicyRefusal(config, JobSpec(), nullptr, true),
              HasSubstr("does not train 'classification' jobs (it takes autoencoder)"));
  JobSpec autoencoder;
  autoencoder.mutable_autoencoder();
  EXPECT_EQ(WorkloadName(autoencoder), "autoencoder");
  EXPECT_THAT(PolicyRefusal(config, autoencoder, nullptr, true), IsEmpty());
}

}  // namespace
}  // namespace fl
