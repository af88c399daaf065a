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

TEST(WorkloadSpecTest, VariationalAutoencoderIsMedfusionsKlVae) {
  JobSpec spec;
  spec.mutable_autoencoder()->set_variational(true);
  spec.set_image_size(64);
  spec.set_in_channels(3);
  auto model = ModelSpecFor(spec);
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ(model->name, "kl_vae");
  EXPECT_EQ(model->input.channels, 3);
  EXPECT_EQ(model->widths, (std::vector<int>{64, 128, 256, 512}));  // Medfusion's, x8
  EXPECT_EQ(model->latent_channels, 8);
  EXPECT_EQ(WorkloadName(spec), "autoencoder");
  EXPECT_DOUBLE_EQ(KlWeightFor(spec), 1e-6);
  spec.mutable_autoencoder()->set_kl_weight(0);  // set: no KL term
  EXPECT_DOUBLE_EQ(KlWeightFor(spec), 0);
  spec.mutable_autoencoder()->add_widths(8);
  spec.mutable_autoencoder()->add_widths(16);
  spec.mutable_autoencoder()->set_latent_channels(2);
  model = ModelSpecFor(spec);
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ(model->widths, (std::vector<int>{8, 16}));
  EXPECT_EQ(model->latent_channels, 2);
}

// A diffusion job for `labels`: 64 px images, latents 4 x 16^2.
JobSpec DiffusionJob(std::vector<std::string> labels) {
  JobSpec spec;
  spec.set_image_size(64);
  for (const std::string& label : labels) spec.add_labels(label);
  DiffusionWorkload* d = spec.mutable_diffusion();
  d->set_autoencoder_job("vae-1");
  d->set_latent_channels(4);
  d->set_latent_size(16);
  return spec;
}

TEST(WorkloadSpecTest, DiffusionTrainsEverySiteOnTheLabelsItHas) {
  JobSpec spec = DiffusionJob({"a", "b"});
  EXPECT_EQ(KindOf(spec), WorkloadKind::kDiffusion);
  EXPECT_EQ(WorkloadName(spec), "diffusion");
  EXPECT_FALSE(HasLabelHead(spec));
  auto model = ModelSpecFor(spec);
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ(model->name, "latent_unet");
  EXPECT_EQ(model->input.channels, 4);
  EXPECT_EQ(model->input.spatial, (std::vector<int>{16, 16}));
  EXPECT_EQ(model->widths, (std::vector<int>{32, 64}));
  EXPECT_EQ(model->embedding_width, 128);
  EXPECT_EQ(model->num_findings, 2);
  EXPECT_EQ(TrainLabelsFor(spec, {"b", "c"}), (std::vector<std::string>{"b"}));
  // A site without any of the findings still trains: all of its conditions are unknown.
  EXPECT_EQ(TrainLabelsFor(spec, {"c"}), std::vector<std::string>{});
  EXPECT_EQ(SelectionFor(spec).metric, "eps_l1");
  EXPECT_FALSE(SelectionFor(spec).higher_is_better);
  spec.mutable_diffusion()->set_latent_size(0);
  EXPECT_FALSE(ModelSpecFor(spec).ok());
  EXPECT_EQ(WorkloadNames(),
            (std::vector<std::string>{"classification", "autoencoder", "diffusion"}));
}

TEST(WorkloadSpecTest, DiffusionProcessDefaultsAreMedfusions) {
  JobSpec spec = DiffusionJob({});
  DiffusionProcess p = DiffusionProcessFor(spec);
  EXPECT_EQ(p.timesteps, 1000);
  EXPECT_DOUBLE_EQ(p.beta_start, 0.002);
  EXPECT_DOUBLE_EQ(p.beta_end, 0.02);
  EXPECT_DOUBLE_EQ(p.condition_dropout, 0.5);
  EXPECT_EQ(p.sample_steps, 250);
  EXPECT_DOUBLE_EQ(p.eta, 1.0);
  EXPECT_DOUBLE_EQ(p.guidance_scale, 1.0);
  DiffusionWorkload* d = spec.mutable_diffusion();
  d->set_timesteps(100);
  d->set_eta(0);  // deterministic DDIM: zero is a value, not "unset"
  d->set_guidance_scale(0);
  d->set_condition_dropout(0);
  p = DiffusionProcessFor(spec);
  EXPECT_EQ(p.sample_steps, 100);  // the default, capped at T
  EXPECT_DOUBLE_EQ(p.eta, 0);
  EXPECT_DOUBLE_EQ(p.guidance_scale, 0);
  EXPECT_DOUBLE_EQ(p.condition_dropout, 0);
}

TEST(WorkloadSpecTest, FrozenAutoencoderMustGiveTheStatedLatents) {
  const JobSpec diffusion = DiffusionJob({"a"});
  JobSpec vae;
  vae.set_name("vae");
  vae.set_image_size(64);
  vae.mutable_autoencoder()->set_variational(true);
  vae.mutable_autoencoder()->set_latent_channels(4);
  for (uint32_t w : {8, 16, 16}) vae.mutable_autoencoder()->add_widths(w);  // x4: 16 px
  auto frozen = FrozenAutoencoderSpec(diffusion, vae);
  ASSERT_TRUE(frozen.ok()) << frozen.status();
  EXPECT_EQ(frozen->name, "kl_vae");
  EXPECT_EQ(frozen->widths, (std::vector<int>{8, 16, 16}));
  JobSpec bad = vae;
  bad.mutable_autoencoder()->add_widths(32);  // x8: 8 px latents
  EXPECT_EQ(FrozenAutoencoderSpec(diffusion, bad).status().code(),
            absl::StatusCode::kFailedPrecondition);
  bad = vae;
  bad.mutable_autoencoder()->set_latent_channels(8);
  EXPECT_FALSE(FrozenAutoencoderSpec(diffusion, bad).ok());
  bad = vae;
  bad.mutable_autoencoder()->set_variational(false);  // no latent distribution to sample
  EXPECT_FALSE(FrozenAutoencoderSpec(diffusion, bad).ok());
  bad = vae;
  bad.set_in_channels(3);
  EXPECT_FALSE(FrozenAutoencoderSpec(diffusion, bad).ok());
  EXPECT_FALSE(FrozenAutoencoderSpec(diffusion, diffusion).ok());
}

TEST(WorkloadSpecTest, NoImageSizeIsAnError) {
  JobSpec spec;
  spec.set_model("smallcnn");
  EXPECT_FALSE(ModelSpecFor(spec).ok());
}

}  // namespace
}  // namespace fl
