// The generative workloads through the trainer: the variational autoencoder and the latent
// diffusion UNet on its frozen latents, with and without DP-SGD, on tiny phantom images.
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "client/trainer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "models/model.h"

namespace fl {
namespace {

using ::testing::HasSubstr;

constexpr int kSide = 16;

// 16x16 noise; "left" puts a bright 4x4 square in the left half, "right" in the right half.
std::vector<float> Phantom(int index, bool left, bool right) {
  std::mt19937 rng(index * 7919 + 5);
  std::uniform_real_distribution<float> noise(0.0f, 0.2f);
  std::uniform_int_distribution<int> y0(1, kSide - 5), left_x0(1, 3), right_x0(9, 11);
  std::vector<float> image(kSide * kSide);
  for (float& v : image) v = noise(rng);
  auto square = [&](int x0, int y) {
    for (int dy = 0; dy < 4; ++dy) {
      for (int dx = 0; dx < 4; ++dx) image[(y + dy) * kSide + x0 + dx] = 0.9f;
    }
  };
  if (left) square(left_x0(rng), y0(rng));
  if (right) square(right_x0(rng), y0(rng));
  return image;
}

absl::StatusOr<std::vector<float>> LoadPhantom(const Sample& sample, int size) {
  int index, left, right;
  if (size != kSide) return absl::InvalidArgumentError("unexpected size");
  if (std::sscanf(sample.path.c_str(), "img/%d_%d_%d", &index, &left, &right) != 3) {
    return absl::DataLossError("not a phantom");
  }
  return Phantom(index, left != 0, right != 0);
}

// Labels "left" and "right"; "right" unknown (NaN) for every third sample.
Dataset PhantomData(int train, int test) {
  Dataset data;
  data.label_names = {"left", "right"};
  std::mt19937 rng(9);
  std::bernoulli_distribution coin(0.5);
  auto add = [&](std::vector<Sample>& split, int count, int first) {
    for (int i = first; i < first + count; ++i) {
      const bool left = coin(rng), right = coin(rng);
      Sample s;
      s.path =
          "img/" + std::to_string(i) + "_" + std::to_string(left) + "_" + std::to_string(right);
      s.patient_id = "p" + std::to_string(i);
      s.labels = {left ? 1.0f : 0.0f, i % 3 == 0 ? std::nanf("") : (right ? 1.0f : 0.0f)};
      split.push_back(s);
    }
  };
  add(data.train, train, 0);
  add(data.test, test, 1000);
  return data;
}

JobSpec VaeSpec(int steps) {
  JobSpec spec;
  spec.set_name("vae");
  AutoencoderWorkload* ae = spec.mutable_autoencoder();
  ae->set_variational(true);
  ae->add_widths(8);
  ae->add_widths(16);  // x2: 8 x 8 latents
  ae->set_latent_channels(4);
  spec.set_image_size(kSide);
  spec.set_local_steps(steps);
  spec.set_batch_size(8);
  spec.set_seed(5);
  spec.mutable_local_optimizer()->set_name("adam");
  spec.mutable_local_optimizer()->set_learning_rate(0.01);
  return spec;
}

JobSpec DiffusionSpec(int steps) {
  JobSpec spec;
  spec.set_name("ldm");
  spec.add_labels("left");
  spec.add_labels("right");
  DiffusionWorkload* d = spec.mutable_diffusion();
  d->set_autoencoder_job("vae-1");
  d->set_latent_channels(4);
  d->set_latent_size(8);
  d->add_widths(8);
  d->add_widths(16);
  d->set_embedding_width(16);
  spec.set_image_size(kSide);
  spec.set_local_steps(steps);
  spec.set_batch_size(8);
  spec.set_seed(6);
  spec.mutable_local_optimizer()->set_name("adam");
  spec.mutable_local_optimizer()->set_learning_rate(0.003);
  return spec;
}

TensorList InitialWeights(const JobSpec& spec) {
  auto model_spec = ModelSpecFor(spec);
  EXPECT_TRUE(model_spec.ok()) << model_spec.status();
  auto model = CreateModel(*model_spec, spec.seed());
  EXPECT_TRUE(model.ok()) << model.status();
  return ExtractWeights(**model);
}

TensorList Apply(TensorList global, const TensorList& update) {
  for (NamedTensor& t : global) {
    for (const NamedTensor& u : update) {
      if (u.name != t.name) continue;
      for (size_t i = 0; i < t.data.size(); ++i) t.data[i] += u.data[i];
    }
  }
  return global;
}

double MetricOf(const MetricsReport& report, const std::string& name) {
  for (const Metric& m : report.metrics()) {
    if (m.name() == name) return m.value();
  }
  ADD_FAILURE() << "no metric " << name;
  return std::nan("");
}

// `frozen_models`: the frozen autoencoder the coordinator would send (the VAE job's spec and
// weights under the id "vae-1").
std::unique_ptr<LocalTrainer> MakeTrainer(const Dataset& data, uint64_t dp_test_seed = 0,
                                          const TensorList* vae_weights = nullptr) {
  TrainerOptions options;
  options.device = "cpu";
  options.loader_threads = 1;
  options.dp_test_seed = dp_test_seed;
  options.loader = LoadPhantom;
  if (vae_weights != nullptr) {
    options.frozen_models =
        [weights = *vae_weights](const std::string& job_id) -> absl::StatusOr<FrozenModel> {
      if (job_id != "vae-1") return absl::NotFoundError(job_id);
      return FrozenModel{VaeSpec(1), weights};
    };
  }
  auto trainer = CreateLocalTrainer(data, options);
  EXPECT_TRUE(trainer.ok()) << trainer.status();
  return *std::move(trainer);
}

TEST(VaeTrainerTest, LearnsToReconstructAndReportsSsim) {
  const Dataset data = PhantomData(48, 16);
  const JobSpec spec = VaeSpec(40);
  const TensorList global = InitialWeights(spec);
  auto trainer = MakeTrainer(data);
  auto before = trainer->Evaluate("vae-1", spec, {}, global);
  ASSERT_TRUE(before.ok()) << before.status();
  auto result = trainer->Train("vae-1", spec, {}, global, 1);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->update.size(), global.size());
  auto after = trainer->Evaluate("vae-1", spec, {}, Apply(global, result->update));
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ(after->test_images(), 16u);
  RecordProperty("l1_before", std::to_string(MetricOf(*before, "l1")));
  RecordProperty("l1_after", std::to_string(MetricOf(*after, "l1")));
  EXPECT_LT(MetricOf(*after, "l1"), 0.7 * MetricOf(*before, "l1"));
  EXPECT_GT(MetricOf(*after, "psnr"), MetricOf(*before, "psnr"));
  EXPECT_GT(MetricOf(*after, "ssim"), MetricOf(*before, "ssim"));
}

TEST(VaeTrainerTest, TrainsWithDpSgdReproduciblyFromTheTestSeed) {
  const Dataset data = PhantomData(32, 8);
  JobSpec spec = VaeSpec(3);
  spec.mutable_dp()->set_enabled(true);
  spec.mutable_dp()->set_clip_norm(1.0);
  spec.mutable_dp()->set_noise_multiplier(1.0);
  const TensorList global = InitialWeights(spec);
  auto a = MakeTrainer(data, 13)->Train("vae-1", spec, {}, global, 1);
  auto b = MakeTrainer(data, 13)->Train("vae-1", spec, {}, global, 1);
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_GT(a->num_samples, 0u);
  EXPECT_TRUE(std::isfinite(a->loss));
  ASSERT_EQ(a->update.size(), b->update.size());
  bool moved = false;
  for (size_t i = 0; i < a->update.size(); ++i) {
    EXPECT_EQ(a->update[i].data, b->update[i].data) << a->update[i].name;
    for (float v : a->update[i].data) moved |= v != 0.0f;
  }
  EXPECT_TRUE(moved);
}

TEST(DiffusionTrainerTest, LearnsToPredictTheNoiseOnFrozenLatents) {
  const Dataset data = PhantomData(48, 16);
  const TensorList vae = InitialWeights(VaeSpec(1));  // any fixed autoencoder will do
  const JobSpec spec = DiffusionSpec(40);
  const TensorList global = InitialWeights(spec);
  auto trainer = MakeTrainer(data, 0, &vae);
  auto before = trainer->Evaluate("ldm-1", spec, {"left", "right"}, global);
  ASSERT_TRUE(before.ok()) << before.status();
  EXPECT_EQ(before->test_images(), 16u);
  for (const char* name : {"eps_l1_t100", "eps_l1_t500", "eps_l1_t900"}) {
    EXPECT_GT(MetricOf(*before, name), 0) << name;
  }
  // The same fixed noise in every evaluation: the same model scores the same.
  auto again = trainer->Evaluate("ldm-1", spec, {"left", "right"}, global);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_DOUBLE_EQ(MetricOf(*again, "eps_l1"), MetricOf(*before, "eps_l1"));
  auto result = trainer->Train("ldm-1", spec, {"left", "right"}, global, 1);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->update.size(), global.size());  // the UNet's tensors only, not the VAE's
  auto after = trainer->Evaluate("ldm-1", spec, {"left", "right"}, Apply(global, result->update));
  ASSERT_TRUE(after.ok()) << after.status();
  RecordProperty("eps_l1_before", std::to_string(MetricOf(*before, "eps_l1")));
  RecordProperty("eps_l1_after", std::to_string(MetricOf(*after, "eps_l1")));
  EXPECT_LT(MetricOf(*after, "eps_l1"), 0.8 * MetricOf(*before, "eps_l1"));
}

TEST(DiffusionTrainerTest, DpSgdTracesTheUNetOnlyAndASiteWithoutLabelsTrains) {
  const Dataset data = PhantomData(32, 8);
  const TensorList vae = InitialWeights(VaeSpec(1));
  JobSpec spec = DiffusionSpec(3);
  spec.mutable_dp()->set_enabled(true);
  spec.mutable_dp()->set_clip_norm(1.0);
  spec.mutable_dp()->set_noise_multiplier(1.0);
  const TensorList global = InitialWeights(spec);
  auto a = MakeTrainer(data, 17, &vae)->Train("ldm-1", spec, {"left"}, global, 1);
  auto b = MakeTrainer(data, 17, &vae)->Train("ldm-1", spec, {"left"}, global, 1);
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_GT(a->num_samples, 0u);
  ASSERT_EQ(a->update.size(), global.size());
  bool moved = false;
  for (size_t i = 0; i < a->update.size(); ++i) {
    EXPECT_EQ(a->update[i].data, b->update[i].data) << a->update[i].name;
    for (float v : a->update[i].data) moved |= v != 0.0f;
  }
  EXPECT_TRUE(moved);
  // No job label at this site: every condition is unknown, and the site still trains.
  auto unlabelled = MakeTrainer(data, 0, &vae)->Train("ldm-1", DiffusionSpec(2), {}, global, 1);
  EXPECT_TRUE(unlabelled.ok()) << unlabelled.status();
}

TEST(DiffusionTrainerTest, NeedsAMatchingFrozenAutoencoder) {
  const Dataset data = PhantomData(16, 4);
  const JobSpec spec = DiffusionSpec(1);
  const TensorList global = InitialWeights(spec);
  auto none = MakeTrainer(data)->Train("ldm-1", spec, {}, global, 1);
  EXPECT_EQ(none.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(none.status().message()), HasSubstr("frozen autoencoder of job vae-1"));
  const TensorList vae = InitialWeights(VaeSpec(1));
  JobSpec other = spec;
  other.mutable_diffusion()->set_autoencoder_job("vae-2");
  EXPECT_FALSE(MakeTrainer(data, 0, &vae)->Evaluate("ldm-1", other, {}, global).ok());
  JobSpec wider = spec;
  wider.mutable_diffusion()->set_latent_channels(8);  // not the autoencoder's latents
  auto mismatch = MakeTrainer(data, 0, &vae)->Train("ldm-1", wider, {}, InitialWeights(wider), 1);
  EXPECT_EQ(mismatch.status().code(), absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace fl
