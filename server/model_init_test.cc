#include "server/model_init.h"

#include <cmath>
#include <limits>

#include <gtest/gtest.h>

#include "common/safetensors.h"
#include "common/test_dir.h"

namespace fl {
namespace {

JobSpec SmallJob(uint32_t seed) {
  JobSpec spec;
  spec.set_model("tinycnn");
  spec.set_image_size(16);
  spec.set_in_channels(1);
  spec.add_labels("cardiomegaly");
  spec.add_labels("effusion_left");
  spec.set_seed(seed);
  return spec;
}

bool SameWeights(const TensorList& a, const TensorList& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i].name != b[i].name || a[i].shape != b[i].shape || a[i].data != b[i].data) return false;
  }
  return true;
}

TEST(ModelInitTest, SeedDecidesTheRegistryInitialisation) {
  absl::StatusOr<ModelInit> one = InitModelFromRegistry(SmallJob(1));
  absl::StatusOr<ModelInit> again = InitModelFromRegistry(SmallJob(1));
  absl::StatusOr<ModelInit> other = InitModelFromRegistry(SmallJob(2));
  ASSERT_TRUE(one.ok() && again.ok() && other.ok()) << one.status();
  EXPECT_TRUE(SameWeights(one->weights, again->weights));
  EXPECT_FALSE(SameWeights(one->weights, other->weights));
}

TEST(ModelInitTest, InitialModelReplacesTheSeededWeights) {
  const std::string dir = FreshTestDir();
  absl::StatusOr<ModelInit> pretrained = InitModelFromRegistry(SmallJob(7));
  ASSERT_TRUE(pretrained.ok()) << pretrained.status();
  ASSERT_TRUE(WriteSafetensors(dir + "/pretrained.safetensors", pretrained->weights).ok());

  JobSpec spec = SmallJob(1);
  spec.set_initial_model(dir + "/pretrained.safetensors");
  absl::StatusOr<ModelInit> init = InitModelFromRegistry(spec);
  ASSERT_TRUE(init.ok()) << init.status();
  EXPECT_TRUE(SameWeights(init->weights, pretrained->weights));
  EXPECT_EQ(init->head_prefix, pretrained->head_prefix);
}

TEST(ModelInitTest, InitialModelThatDoesNotFitTheJobIsRefusedNamingTheFile) {
  const std::string dir = FreshTestDir();
  JobSpec three_labels = SmallJob(7);
  three_labels.add_labels("congestion");
  absl::StatusOr<ModelInit> other = InitModelFromRegistry(three_labels);
  ASSERT_TRUE(other.ok()) << other.status();
  const std::string path = dir + "/three-labels.safetensors";
  ASSERT_TRUE(WriteSafetensors(path, other->weights).ok());

  JobSpec spec = SmallJob(1);
  spec.set_initial_model(path);
  absl::StatusOr<ModelInit> init = InitModelFromRegistry(spec);
  ASSERT_FALSE(init.ok());
  EXPECT_EQ(init.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(init.status().message().find(path), std::string::npos) << init.status();
  EXPECT_NE(init.status().message().find("shape"), std::string::npos) << init.status();

  spec.set_initial_model(dir + "/missing.safetensors");
  init = InitModelFromRegistry(spec);
  ASSERT_FALSE(init.ok());
  EXPECT_NE(init.status().message().find("missing.safetensors"), std::string::npos)
      << init.status();
}

TEST(ModelInitTest, InitialModelWithNonFiniteWeightsIsRefused) {
  const std::string dir = FreshTestDir();
  absl::StatusOr<ModelInit> pretrained = InitModelFromRegistry(SmallJob(7));
  ASSERT_TRUE(pretrained.ok()) << pretrained.status();
  pretrained->weights.back().data[0] = std::numeric_limits<float>::quiet_NaN();
  ASSERT_TRUE(WriteSafetensors(dir + "/nan.safetensors", pretrained->weights).ok());

  JobSpec spec = SmallJob(1);
  spec.set_initial_model(dir + "/nan.safetensors");
  absl::StatusOr<ModelInit> init = InitModelFromRegistry(spec);
  ASSERT_FALSE(init.ok());
  EXPECT_NE(init.status().message().find("not finite"), std::string::npos) << init.status();
  EXPECT_NE(init.status().message().find(pretrained->weights.back().name), std::string::npos);
}

}  // namespace
}  // namespace fl
