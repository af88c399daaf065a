#include "models/diffusion.h"

#include <cmath>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/torch_pch.h"
#include "gtest/gtest.h"
#include "models/dp_layers.h"
#include "models/model.h"

namespace fl {
namespace {

using torch::Tensor;

const torch::TensorOptions kF64 = torch::TensorOptions().dtype(torch::kFloat64);
const torch::TensorOptions kLong = torch::TensorOptions().dtype(torch::kLong);

// max |a - b| / max |b| (the absolute error when b is all zero).
double RelativeError(const Tensor& a, const Tensor& b) {
  EXPECT_EQ(a.sizes(), b.sizes());
  const double scale = b.abs().max().item<double>();
  const double diff = (a - b).abs().max().item<double>();
  return scale > 0 ? diff / scale : diff;
}

template <typename T>
std::shared_ptr<T> MustCreate(const ModelSpec& spec, uint64_t seed) {
  auto model = CreateModel(spec, seed);
  EXPECT_TRUE(model.ok()) << model.status();
  return model.ok() ? std::dynamic_pointer_cast<T>(*model) : nullptr;
}

// A tiny denoiser: 4 latent channels of 8 x 8, two levels, E = 16, three findings.
std::shared_ptr<LatentUNetImpl> TinyUNet(uint64_t seed = 1, int findings = 3) {
  return MustCreate<LatentUNetImpl>(LatentUNetSpec(4, 8, {8, 16}, 16, findings), seed);
}

// --------------------------------------------------------------------------------------------
// Schedule and DDIM against values computed by hand (in Python, independently: the cumulative
// product as exp(sum(log1p(-beta)))).

TEST(NoiseScheduleTest, ScaledLinearMatchesHandComputedValues) {
  const NoiseSchedule s = ScaledLinearSchedule();
  ASSERT_EQ(s.steps(), 1000);
  EXPECT_NEAR(s.betas[0], 0.002, 1e-15);
  EXPECT_NEAR(s.betas[999], 0.02, 1e-15);
  // (sqrt(0.002) + (sqrt(0.02) - sqrt(0.002)) / 999)^2
  EXPECT_NEAR(s.betas[1], 0.0020086671380283106, 1e-15);
  EXPECT_NEAR(s.betas[499], 0.008653270993564176, 1e-15);
  EXPECT_NEAR(s.alphas_cumprod[0], 0.998, 1e-15);
  EXPECT_NEAR(s.alphas_cumprod[1], 0.9959953501962477, 1e-13);
  EXPECT_NEAR(s.alphas_cumprod[499], 0.08404964620829451, 1e-12);
  EXPECT_NEAR(s.alphas_cumprod[999], 7.470230801206631e-05, 1e-15);
}

TEST(NoiseScheduleTest, QSampleMixesPerSampleStep) {
  const NoiseSchedule s = ScaledLinearSchedule();
  Tensor z0 = torch::ones({2, 1, 2, 2}, kF64);
  Tensor eps = torch::full({2, 1, 2, 2}, 2.0, kF64);
  Tensor zt = QSample(s, z0, torch::tensor({0, 999}, kLong), eps);
  EXPECT_NEAR(zt[0][0][0][0].item<double>(), std::sqrt(0.998) + 2 * std::sqrt(0.002), 1e-12);
  EXPECT_NEAR(zt[1][0][1][1].item<double>(),
              std::sqrt(7.470230801206631e-05) + 2 * std::sqrt(1 - 7.470230801206631e-05), 1e-9);
}

TEST(DdimTest, TimestepsAreTruncatedLinspace) {
  EXPECT_EQ(DdimTimesteps(1000, 4), (std::vector<int64_t>{0, 333, 666, 999}));
  std::vector<int64_t> k250 = DdimTimesteps(1000, 250);
  ASSERT_EQ(k250.size(), 250u);
  EXPECT_EQ(std::vector<int64_t>(k250.begin(), k250.begin() + 5),
            (std::vector<int64_t>{0, 4, 8, 12, 16}));  // int(999 i / 249)
  EXPECT_EQ(k250.back(), 999);
  EXPECT_EQ(DdimTimesteps(1000, 1), (std::vector<int64_t>{0}));
}

// abar = {0.9, 0.5, 0.2}; from t = 2 to t = 1 with x_t = 1, eps = 0.5, noise = -1:
//   x0_hat = (1 - sqrt(0.8) 0.5) / sqrt(0.2) = 1.2360679774997898
//   eta 0: sqrt(0.5) x0_hat + sqrt(0.5) 0.5 = 1.227585439490916
//   eta 1: sigma = sqrt(0.6 * 0.5 / 0.8) = 0.6123724356957945, c = sqrt(0.125);
//          sqrt(0.5) x0_hat + c 0.5 - sigma = 0.4384363084984848
TEST(DdimTest, StepMatchesWorkedExample) {
  NoiseSchedule s;
  s.betas = {0.1, 0.4444, 0.6};
  s.alphas_cumprod = {0.9, 0.5, 0.2};
  Tensor x = torch::ones({1, 1}, kF64), eps = torch::full({1, 1}, 0.5, kF64);
  Tensor noise = -torch::ones({1, 1}, kF64);
  EXPECT_NEAR(DdimStep(s, x, eps, 2, 1, 0.0, noise).item<double>(), 1.227585439490916, 1e-14);
  EXPECT_NEAR(DdimStep(s, x, eps, 2, 1, 1.0, noise).item<double>(), 0.4384363084984848, 1e-14);
  EXPECT_NEAR(DdimStep(s, x, eps, 2, -1, 1.0, noise).item<double>(), 1.2360679774997898, 1e-14);
}

TEST(DdimTest, SamplingIsDeterministicBySeed) {
  auto unet = TinyUNet();
  ASSERT_NE(unet, nullptr);
  const NoiseSchedule s = ScaledLinearSchedule();
  Tensor cond = torch::tensor({{1, 0, 2}, {2, 2, 2}}, kLong);
  DdimOptions options;
  options.steps = 3;
  options.guidance_scale = 2.0;
  options.seed = 7;
  auto a = DdimSample(*unet, s, cond, {2, 4, 8, 8}, options);
  auto b = DdimSample(*unet, s, cond, {2, 4, 8, 8}, options);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->sizes(), (std::vector<int64_t>{2, 4, 8, 8}));
  EXPECT_TRUE(torch::equal(*a, *b));
  EXPECT_TRUE(torch::isfinite(*a).all().item<bool>());
  options.seed = 8;
  auto c = DdimSample(*unet, s, cond, {2, 4, 8, 8}, options);
  ASSERT_TRUE(c.ok());
  EXPECT_FALSE(torch::equal(*a, *c));
  options.steps = 0;
  EXPECT_FALSE(DdimSample(*unet, s, cond, {2, 4, 8, 8}, options).ok());
  options.steps = 3;
  EXPECT_FALSE(DdimSample(*unet, s, cond, {3, 4, 8, 8}, options).ok());
}

// --------------------------------------------------------------------------------------------
// Conditions and classifier-free guidance

TEST(ConditionTest, UnknownIsItsOwnStateNeverANegative) {
  const double nan = std::nan("");
  Tensor targets = torch::tensor({1.0, 0.0, nan, 0.0, nan, 1.0}, kF64).view({2, 3});
  Tensor states = ConditionFromTargets(targets);
  EXPECT_TRUE(torch::equal(states, torch::tensor({{1, 0, 2}, {0, 2, 1}}, kLong)));
  auto unet = TinyUNet();
  Tensor t = torch::tensor({10, 10}, kLong);
  Tensor with_unknowns = unet->Embedding(t, states);
  Tensor as_negatives =
      unet->Embedding(t, torch::where(states == 2, torch::zeros_like(states), states));
  EXPECT_GT((with_unknowns - as_negatives).abs().min().item<double>(), 0.0);
}

TEST(ConditionTest, AllUnknownIsTheUnconditionalEmbedding) {
  auto unet = TinyUNet();
  Tensor t = torch::tensor({0, 500, 999}, kLong);
  EXPECT_TRUE(
      torch::equal(unet->Embedding(t, UnknownCondition(3, 3)), unet->Embedding(t, Tensor())));
  Tensor negatives = torch::zeros({3, 3}, kLong);
  EXPECT_FALSE(torch::allclose(unet->Embedding(t, negatives), unet->Embedding(t, Tensor())));
}

TEST(ConditionTest, DropoutReplacesWholeConditionsPerSample) {
  Tensor states = torch::tensor({0, 1}, kLong).repeat({400, 1});
  at::Generator gen = at::detail::createCPUGenerator(3);
  EXPECT_TRUE(torch::equal(DropConditions(states, 0.0, gen), states));
  EXPECT_TRUE(torch::equal(DropConditions(states, 1.0, gen), UnknownCondition(400, 2)));
  Tensor half = DropConditions(states, 0.5, gen);
  Tensor dropped = (half == kFindingUnknown).all(1);
  Tensor kept = (half == states).all(1);
  EXPECT_TRUE((dropped | kept).all().item<bool>());
  const int64_t n_dropped = dropped.sum().item<int64_t>();
  EXPECT_GT(n_dropped, 150);
  EXPECT_LT(n_dropped, 250);
}

TEST(GuidanceTest, ScaleZeroIsTheUnconditionalModelAndOneTheConditional) {
  auto unet = TinyUNet();
  torch::manual_seed(2);
  Tensor x = torch::randn({2, 4, 8, 8});
  Tensor t = torch::tensor({100, 900}, kLong);
  Tensor cond = torch::tensor({{1, 1, 0}, {0, 2, 1}}, kLong);
  torch::NoGradGuard no_grad;
  Tensor uncond = unet->Denoise(x, t, UnknownCondition(2, 3));
  Tensor conditional = unet->Denoise(x, t, cond);
  EXPECT_FALSE(torch::allclose(uncond, conditional));
  EXPECT_TRUE(torch::allclose(GuidedNoise(*unet, x, t, cond, 0.0), uncond));
  EXPECT_TRUE(torch::allclose(GuidedNoise(*unet, x, t, cond, 1.0), conditional));
  EXPECT_TRUE(torch::allclose(GuidedNoise(*unet, x, t, cond, 3.0),
                              uncond + 3.0 * (conditional - uncond), 1e-5, 1e-5));
  // A whole sampling run with guidance 0 is the unconditional model's.
  DdimOptions options;
  options.steps = 2;
  options.guidance_scale = 0.0;
  auto guided = DdimSample(*unet, ScaledLinearSchedule(), cond, {2, 4, 8, 8}, options);
  auto unconditional = DdimSample(*unet, ScaledLinearSchedule(), Tensor(), {2, 4, 8, 8}, options);
  ASSERT_TRUE(guided.ok() && unconditional.ok());
  EXPECT_TRUE(torch::allclose(*guided, *unconditional));
}

// --------------------------------------------------------------------------------------------
// The UNet and registry

TEST(LatentUNetTest, ShapesNamesDeterminismAndRefusals) {
  auto unet = TinyUNet(5);
  ASSERT_NE(unet, nullptr);
  Tensor x = torch::randn({3, 4, 8, 8});
  Tensor eps = unet->Denoise(x, torch::tensor({1, 2, 3}, kLong));
  EXPECT_EQ(eps.sizes(), x.sizes());
  EXPECT_THROW(unet->forward(x), c10::Error);
  TensorList weights = ExtractWeights(*unet);
  std::map<std::string, std::vector<int64_t>> shapes;
  for (const NamedTensor& w : weights) shapes[w.name] = w.shape;
  EXPECT_EQ(shapes["time_mlp.0.weight"], (std::vector<int64_t>{16, 4}));
  EXPECT_EQ(shapes["time_mlp.2.weight"], (std::vector<int64_t>{16, 16}));
  EXPECT_EQ(shapes["cond_embed.weight"], (std::vector<int64_t>{9, 16}));
  EXPECT_EQ(shapes["in_conv.weight"], (std::vector<int64_t>{8, 4, 3, 3}));
  EXPECT_EQ(shapes["down.0.conv.weight"], (std::vector<int64_t>{16, 8, 3, 3}));
  EXPECT_EQ(shapes["up.0.block.skip.weight"], (std::vector<int64_t>{8, 16, 1, 1}));
  EXPECT_EQ(shapes["up.0.block.emb_proj.weight"], (std::vector<int64_t>{8, 16}));
  EXPECT_EQ(shapes["out_conv.weight"], (std::vector<int64_t>{4, 8, 3, 3}));
  auto again = TinyUNet(5);
  auto other = TinyUNet(6);
  torch::NoGradGuard no_grad;
  Tensor t = torch::tensor({1, 2, 3}, kLong);
  EXPECT_TRUE(torch::equal(again->Denoise(x, t), unet->Denoise(x, t)));
  EXPECT_FALSE(torch::equal(other->Denoise(x, t), unet->Denoise(x, t)));
  EXPECT_EQ(TinyUNet(1, 0)->named_parameters().find("cond_embed.weight"), nullptr);
  EXPECT_FALSE(CreateModel(LatentUNetSpec(4, 8, {8, 16}, 12, 3), 1).ok());      // E % 8
  EXPECT_FALSE(CreateModel(LatentUNetSpec(4, 6, {8, 16, 16}, 16, 3), 1).ok());  // 6 % 4
  EXPECT_FALSE(CreateModel(LatentUNetSpec(4, 8, {}, 16, 3), 1).ok());
}

// --------------------------------------------------------------------------------------------
// Per-sample gradients of whole models: the tape's records against N single-sample backward
// passes, for every parameter.

// The per-sample losses [k] of samples `idx` ([k] int64) of a fixed batch.
using LossOf = std::function<Tensor(const Tensor& idx)>;

void ExpectTapeMatchesLoop(torch::nn::Module& model, int64_t n, const LossOf& loss_of,
                           GradSampleMode mode, double tol) {
  std::vector<Tensor> params = model.parameters();
  std::vector<std::vector<Tensor>> loop(params.size());
  for (int64_t i = 0; i < n; ++i) {
    for (Tensor& p : params) p.mutable_grad() = Tensor();
    loss_of(torch::tensor({i}, kLong)).sum().backward();
    for (size_t k = 0; k < params.size(); ++k) {
      loop[k].push_back(params[k].grad().defined() ? params[k].grad().clone()
                                                   : torch::zeros_like(params[k]));
    }
  }
  for (Tensor& p : params) p.mutable_grad() = Tensor();
  std::map<const void*, Tensor> taped;
  {
    GradSampleTape tape(mode);
    loss_of(torch::arange(n, kLong)).sum().backward();
    for (const auto& record : tape.TakeRecords()) {
      std::vector<Tensor> grads = record->PerSampleGrads();
      for (size_t k = 0; k < grads.size(); ++k) {
        Tensor& sum = taped[record->params()[k].unsafeGetTensorImpl()];
        sum = sum.defined() ? sum + grads[k] : grads[k];
      }
    }
  }
  Tensor loop_norms = torch::zeros({n}, kF64), tape_norms = torch::zeros({n}, kF64);
  const auto names = model.named_parameters();
  for (size_t k = 0; k < params.size(); ++k) {
    const std::string& name = names[k].key();
    EXPECT_FALSE(params[k].grad().defined()) << name << " got a batch gradient under the tape";
    auto it = taped.find(params[k].unsafeGetTensorImpl());
    if (it == taped.end()) {
      ADD_FAILURE() << name << " has no per-sample record";
      continue;
    }
    Tensor expected = torch::stack(loop[k]);
    EXPECT_LT(RelativeError(it->second, expected), tol) << name;
    loop_norms += expected.flatten(1).pow(2).sum(1);
    tape_norms += it->second.flatten(1).pow(2).sum(1);
  }
  EXPECT_LT(RelativeError(tape_norms.sqrt(), loop_norms.sqrt()), tol);
}

class PerSampleTest : public ::testing::TestWithParam<GradSampleMode> {};

TEST_P(PerSampleTest, EveryUNetLayerMatchesSingleSamplePasses) {
  auto unet = TinyUNet(9);
  unet->to(torch::kFloat64);
  torch::manual_seed(4);
  const int64_t n = 3;
  Tensor x = torch::randn({n, 4, 8, 8}, kF64);
  Tensor r = torch::randn({n, 4, 8, 8}, kF64);
  Tensor t = torch::tensor({3, 500, 999}, kLong);
  Tensor cond = torch::tensor({{0, 1, 2}, {2, 2, 2}, {1, 0, 2}}, kLong);
  ExpectTapeMatchesLoop(
      *unet, n,
      [&](const Tensor& idx) {
        Tensor out = unet->Denoise(x.index_select(0, idx), t.index_select(0, idx),
                                   cond.index_select(0, idx));
        return (out * r.index_select(0, idx)).flatten(1).sum(1);
      },
      GetParam(), 1e-9);
}

TEST_P(PerSampleTest, EveryVaeLayerMatchesSingleSamplePasses) {
  auto vae = MustCreate<KlVaeImpl>(KlVaeSpec(1, 16, {8, 16}, 4), 3);
  ASSERT_NE(vae, nullptr);
  vae->to(torch::kFloat64);
  torch::manual_seed(5);
  const int64_t n = 3;
  Tensor x = torch::rand({n, 1, 16, 16}, kF64);
  Tensor noise = torch::randn({n, 4, 8, 8}, kF64);
  ExpectTapeMatchesLoop(
      *vae, n,
      [&](const Tensor& idx) {
        Tensor images = x.index_select(0, idx);
        LatentMoments m = vae->Encode(images);
        Tensor z = m.mean + torch::exp(0.5 * m.logvar) * noise.index_select(0, idx);
        return VaePerSampleLoss(vae->Decode(z), images, m, /*kl_weight=*/1.0).total;
      },
      GetParam(), 1e-9);
}

INSTANTIATE_TEST_SUITE_P(Modes, PerSampleTest,
                         ::testing::Values(GradSampleMode::kMaterialise, GradSampleMode::kGhost),
                         [](const ::testing::TestParamInfo<GradSampleMode>& info) {
                           return info.param == GradSampleMode::kGhost ? "Ghost" : "Materialise";
                         });

TEST(DiffusionLossTest, PerSampleReproducibleFromTheGenerator) {
  auto unet = TinyUNet();
  const NoiseSchedule s = ScaledLinearSchedule();
  Tensor z0 = torch::randn({4, 4, 8, 8});
  Tensor cond = torch::tensor({{0, 1, 2}, {2, 2, 2}, {1, 0, 2}, {1, 1, 1}}, kLong);
  at::Generator g1 = at::detail::createCPUGenerator(11), g2 = at::detail::createCPUGenerator(11);
  Tensor a = DiffusionPerSampleLoss(*unet, s, z0, cond, g1);
  Tensor b = DiffusionPerSampleLoss(*unet, s, z0, cond, g2);
  EXPECT_EQ(a.sizes(), (std::vector<int64_t>{4}));
  EXPECT_TRUE(torch::equal(a, b));
  EXPECT_GT(a.min().item<double>(), 0.0);
}

}  // namespace
}  // namespace fl
