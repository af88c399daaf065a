#include "models/spec.h"

#include <gtest/gtest.h>

namespace fl {
namespace {

TEST(WorkloadSpecTest, ClassificationIsTheDefaultAndTrainsTheLabelsASiteHas) {
  JobSpec spec;
  spec.set_model("resnet18");
  spec.add_labels("a");
  spec.add_labels("b");
  spec.set_image_size(64);
  spec.set_in_channels(3);
  EXPECT_EQ(KindOf(spec), WorkloadKind::kClassification);
  EXPECT_EQ(WorkloadName(spec), "classification");
  EXPECT_TRUE(HasLabelHead(spec));
  auto model = ModelSpecFor(spec);
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ(model->name, "resnet18");
  EXPECT_EQ(model->input.channels, 3);
  EXPECT_EQ(model->input.spatial, (std::vector<int>{64, 64}));
  EXPECT_EQ(model->input.square_side(), 64);
  EXPECT_EQ(model->num_outputs, 2);
  EXPECT_EQ(TrainLabelsFor(spec, {"b", "c"}), (std::vector<std::string>{"b"}));
  EXPECT_EQ(TrainLabelsFor(spec, {"c"}), std::nullopt);  // nothing to train: not eligible
}

TEST(WorkloadSpecTest, AutoencoderTrainsEverySiteWithoutLabels) {
  JobSpec spec;
  spec.mutable_autoencoder()->set_latent_channels(6);
  spec.set_image_size(32);
  EXPECT_EQ(KindOf(spec), WorkloadKind::kAutoencoder);
  EXPECT_EQ(WorkloadName(spec), "autoencoder");
  EXPECT_FALSE(HasLabelHead(spec));
  auto model = ModelSpecFor(spec);
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ(model->name, "autoencoder");
  EXPECT_EQ(model->widths, (std::vector<int>{16, 32}));  // the default stages
  EXPECT_EQ(model->latent_channels, 6);
  EXPECT_EQ(TrainLabelsFor(spec, {}), std::vector<std::string>{});
  EXPECT_EQ(TrainLabelsFor(spec, {"a"}), std::vector<std::string>{});
  EXPECT_EQ(SelectionFor(spec).metric, "l1");  // the best model reconstructs with least error
  EXPECT_FALSE(SelectionFor(spec).higher_is_better);
  spec.mutable_classification();
  EXPECT_EQ(SelectionFor(spec).metric, "mean_auroc");
  EXPECT_TRUE(SelectionFor(spec).higher_is_better);
}

TEST(WorkloadSpecTest, NoImageSizeIsAnError) {
  JobSpec spec;
  spec.set_model("smallcnn");
  EXPECT_FALSE(ModelSpecFor(spec).ok());
}

}  // namespace
}  // namespace fl
