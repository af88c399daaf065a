#include "privacy/dp_sgd.h"

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "common/torch_pch.h"
#include "gtest/gtest.h"
#include "models/model.h"

namespace fl {
namespace {

using torch::Tensor;
namespace nn = torch::nn;

// A layer with a concrete forward for nn::Sequential.
class FlattenImpl : public nn::Cloneable<FlattenImpl> {
 public:
  void reset() override {}
  Tensor forward(const Tensor& x) { return x.flatten(1); }
};
TORCH_MODULE(Flatten);

// conv (stride, padding, bias) - GroupNorm - ReLU - conv (no bias) - flatten - linear.
nn::Sequential SmallNet() {
  return nn::Sequential(DPConv2d(DPConv2dOptions(2, 4, 3).stride(2).padding(1)),
                        DPGroupNorm(nn::GroupNormOptions(2, 4)), nn::ReLU(),
                        DPConv2d(DPConv2dOptions(4, 4, 3).bias(false)), Flatten(),
                        DPLinear(4 * 2 * 2, 3));
}

// conv3d (stride, padding, groups) - InstanceNorm3d - ReLU - flatten - linear.
nn::Sequential VolumeNet() {
  return nn::Sequential(DPConv3d(DPConv3dOptions(2, 4, 3).stride(2).padding(1).groups(2)),
                        DPInstanceNorm3d(nn::InstanceNormOptions(4).affine(true)), nn::ReLU(),
                        Flatten(), DPLinear(4 * 3 * 3 * 3, 3));
}

constexpr int64_t kVocabulary = 9, kTokens = 5;

// embedding - LayerNorm - linear per token - ReLU - flatten - linear.
nn::Sequential TokenNet() {
  return nn::Sequential(DPEmbedding(kVocabulary, 6), DPLayerNorm(nn::LayerNormOptions({6})),
                        DPLinear(6, 4), nn::ReLU(), Flatten(), DPLinear(kTokens * 4, 3));
}

nn::Sequential Copy(const nn::Sequential& net) {
  auto copy = std::dynamic_pointer_cast<nn::SequentialImpl>(net->clone());
  return nn::Sequential(copy);
}

Tensor PerSampleLoss(nn::Sequential& net, const Tensor& x, const Tensor& y) {
  return torch::nn::functional::binary_cross_entropy_with_logits(
             net->forward(x), y,
             torch::nn::functional::BinaryCrossEntropyWithLogitsFuncOptions().reduction(
                 torch::kNone))
      .sum(1);
}

DpSgdOptions TestOptions(double clip, double sigma, double batch) {
  DpSgdOptions o;
  o.clip_norm = clip;
  o.noise_multiplier = sigma;
  o.expected_batch_size = batch;
  o.secure_noise = false;
  o.test_seed = 1234;
  return o;
}

double MaxRelativeDiff(nn::Module& a, nn::Module& b) {
  auto pb = b.named_parameters();
  double worst = 0;
  for (auto& item : a.named_parameters()) {
    const Tensor& want = pb[item.key()];
    worst = std::max(
        worst,
        ((item.value() - want).abs().max() / want.abs().max().clamp_min(1e-12)).item<double>());
  }
  return worst;
}

struct Batch {
  Tensor x, y;
};

Batch RandomBatch(int64_t n) {
  return {torch::randn({n, 2, 8, 8}, torch::kFloat64),
          torch::randint(0, 2, {n, 3}, torch::kFloat64)};
}

// A network (fp64) and random inputs of n samples for it.
struct NetCase {
  std::string name;
  std::function<nn::Sequential()> make;
  std::function<Tensor(int64_t)> inputs;
};

std::vector<NetCase> NetCases() {
  return {
      {"conv2d_groupnorm_linear", SmallNet, [](int64_t n) { return RandomBatch(n).x; }},
      {"conv3d_instancenorm3d_linear", VolumeNet,
       [](int64_t n) {
         return torch::randn({n, 2, 6, 6, 6}, torch::kFloat64);
       }},
      {"embedding_layernorm_linear", TokenNet,
       [](int64_t n) {
         return torch::randint(0, kVocabulary, {n, kTokens}, torch::kLong);
       }},
  };
}

TEST(DpSgdTest, NoNoiseHugeClipEqualsPlainSgdOnSummedLoss) {
  torch::manual_seed(0);
  nn::Sequential dp_net = SmallNet(), plain_net;
  dp_net->to(torch::kFloat64);
  plain_net = Copy(dp_net);
  Batch b = RandomBatch(5);
  torch::optim::SGD dp_opt(dp_net->parameters(), 0.5), plain_opt(plain_net->parameters(), 0.5);
  ASSERT_TRUE(DpSgdStep(
                  *dp_net, dp_opt, [&] { return PerSampleLoss(dp_net, b.x, b.y); },
                  TestOptions(1e9, 0.0, 4.0))
                  .ok());
  plain_opt.zero_grad();
  (PerSampleLoss(plain_net, b.x, b.y).sum() / 4.0).backward();
  plain_opt.step();
  EXPECT_LT(MaxRelativeDiff(*dp_net, *plain_net), 1e-10);
}

// Reference: per-sample whole-model gradients from single-sample passes, clipped, summed, / B.
void ReferenceClippedStep(nn::Sequential& net, const Batch& b, double clip, double batch) {
  std::vector<Tensor> params = net->parameters();
  std::vector<Tensor> total;
  for (const Tensor& p : params) total.push_back(torch::zeros_like(p));
  for (int64_t i = 0; i < b.x.size(0); ++i) {
    for (Tensor& p : params) p.mutable_grad() = Tensor();
    PerSampleLoss(net, b.x.narrow(0, i, 1), b.y.narrow(0, i, 1)).sum().backward();
    double sq = 0;
    for (const Tensor& p : params) sq += p.grad().pow(2).sum().item<double>();
    const double c = std::min(1.0, clip / (std::sqrt(sq) + 1e-6));
    for (size_t k = 0; k < params.size(); ++k) total[k] += c * params[k].grad();
  }
  torch::NoGradGuard no_grad;
  for (size_t k = 0; k < params.size(); ++k) params[k] -= total[k] / batch;  // SGD, lr 1
}

// One DP step (no noise, SGD lr 1) on n samples equals the reference loop; the fp64 result checks
// per-sample norms, clipping and the clipped sum of every layer in the network.
void CheckClippedStep(const NetCase& net_case, int64_t n, GradSampleMode mode) {
  SCOPED_TRACE("n=" + std::to_string(n));
  torch::manual_seed(n);
  nn::Sequential dp_net = net_case.make();
  dp_net->to(torch::kFloat64);
  nn::Sequential ref_net = Copy(dp_net);
  Batch b{net_case.inputs(n), torch::randint(0, 2, {n, 3}, torch::kFloat64)};
  DpSgdOptions options = TestOptions(0.05, 0.0, 3.0);
  options.norm_mode = mode;
  torch::optim::SGD opt(dp_net->parameters(), 1.0);
  absl::Status status = DpSgdStep(
      *dp_net, opt, [&] { return PerSampleLoss(dp_net, b.x, b.y); }, options);
  ASSERT_TRUE(status.ok()) << status;
  ReferenceClippedStep(ref_net, b, 0.05, 3.0);
  EXPECT_LT(MaxRelativeDiff(*dp_net, *ref_net), 1e-9);
}

class DpSgdClipTest : public ::testing::TestWithParam<GradSampleMode> {};

TEST_P(DpSgdClipTest, ClippedSumEqualsLoopOfSingleSamplePasses) {
  for (const NetCase& net_case : NetCases()) {
    SCOPED_TRACE(net_case.name);
    for (int64_t n : {0, 1, 6}) CheckClippedStep(net_case, n, GetParam());
  }
}

INSTANTIATE_TEST_SUITE_P(Modes, DpSgdClipTest,
                         ::testing::Values(GradSampleMode::kAuto, GradSampleMode::kMaterialise,
                                           GradSampleMode::kGhost));

TEST(DpSgdTest, MicroBatchesAccumulateToTheLogicalBatch) {
  torch::manual_seed(3);
  nn::Sequential a = SmallNet();
  a->to(torch::kFloat64);
  nn::Sequential whole = Copy(a);
  Batch b = RandomBatch(6);
  torch::optim::SGD opt_a(a->parameters(), 1.0), opt_whole(whole->parameters(), 1.0);
  auto engine = DpSgdEngine::Create(*a, TestOptions(0.1, 0.0, 6.0));
  ASSERT_TRUE(engine.ok());
  for (int64_t start : {0, 2, 5}) {
    const int64_t len = start == 0 ? 2 : (start == 2 ? 3 : 1);
    Tensor x = b.x.narrow(0, start, len), y = b.y.narrow(0, start, len);
    ASSERT_TRUE((*engine)->AccumulateMicroBatch([&] { return PerSampleLoss(a, x, y); }).ok());
  }
  EXPECT_EQ((*engine)->samples(), 6);
  ASSERT_TRUE((*engine)->Step(opt_a).ok());
  ASSERT_TRUE(DpSgdStep(
                  *whole, opt_whole, [&] { return PerSampleLoss(whole, b.x, b.y); },
                  TestOptions(0.1, 0.0, 6.0))
                  .ok());
  EXPECT_LT(MaxRelativeDiff(*a, *whole), 1e-10);
}

// Parameter change of one noise-only step (zero loss, SGD lr 1) = -noise / B.
Tensor NoiseOnlyDelta(uint64_t seed, bool empty_batch) {
  torch::manual_seed(0);
  nn::Sequential net = SmallNet();
  std::vector<Tensor> before;
  for (const Tensor& p : net->parameters()) before.push_back(p.detach().clone());
  DpSgdOptions options = TestOptions(2.0, 1.5, 4.0);
  options.test_seed = seed;
  torch::optim::SGD opt(net->parameters(), 1.0);
  Tensor x = torch::randn({empty_batch ? 0 : 3, 2, 8, 8});
  absl::Status status = DpSgdStep(
      *net, opt, [&] { return net->forward(x).sum(1) * 0.0; }, options);
  EXPECT_TRUE(status.ok()) << status;
  std::vector<Tensor> deltas;
  std::vector<Tensor> after = net->parameters();
  for (size_t k = 0; k < after.size(); ++k) deltas.push_back((after[k] - before[k]).flatten());
  return torch::cat(deltas);
}

TEST(DpSgdTest, NoiseIsReproducibleWithTestSeedAndHasStdSigmaCOverB) {
  Tensor a = NoiseOnlyDelta(7, false), b = NoiseOnlyDelta(7, false), c = NoiseOnlyDelta(8, false);
  EXPECT_TRUE(torch::equal(a, b));
  EXPECT_FALSE(torch::equal(a, c));
  ASSERT_GT(a.numel(), 250);
  const double expected = 1.5 * 2.0 / 4.0;
  EXPECT_NEAR(a.std().item<double>(), expected, 0.15 * expected);
  EXPECT_NEAR(a.mean().item<double>(), 0.0, 0.1 * expected);
}

TEST(DpSgdTest, EmptyBatchStillAddsNoiseAndSteps) {
  Tensor delta = NoiseOnlyDelta(9, true);
  EXPECT_GT(delta.abs().sum().item<double>(), 0.0);
  EXPECT_TRUE(torch::isfinite(delta).all().item<bool>());
}

TEST(DpSgdTest, SecureNoiseDiffersBetweenEngines) {
  nn::Sequential net = SmallNet();
  DpSgdOptions options = TestOptions(1.0, 1.0, 1.0);
  options.secure_noise = true;
  torch::optim::SGD opt(net->parameters(), 1.0);
  Tensor w0 = net->parameters()[0].detach().clone();
  ASSERT_TRUE(DpSgdStep(
                  *net, opt, [] { return torch::zeros({0}); }, options)
                  .ok());
  Tensor w1 = net->parameters()[0].detach().clone();
  ASSERT_TRUE(DpSgdStep(
                  *net, opt, [] { return torch::zeros({0}); }, options)
                  .ok());
  Tensor w2 = net->parameters()[0].detach().clone();
  EXPECT_FALSE(torch::allclose(w1 - w0, w2 - w1));
}

TEST(DpSgdTest, BatchNormModelIsRefused) {
  nn::Sequential net(DPConv2d(DPConv2dOptions(1, 4, 3)), nn::BatchNorm2d(4));
  absl::Status status = CheckDpCompatible(*net);
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(status.message().find("BatchNorm"), std::string::npos) << status;
  EXPECT_FALSE(DpSgdEngine::Create(*net, TestOptions(1, 1, 1)).ok());
}

TEST(DpSgdTest, InstanceNormWithRunningStatsIsRefused) {
  nn::Sequential net(DPConv2d(DPConv2dOptions(1, 4, 3)),
                     nn::InstanceNorm2d(nn::InstanceNormOptions(4).track_running_stats(true)));
  absl::Status status = CheckDpCompatible(*net);
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(status.message().find("track_running_stats"), std::string::npos) << status;
  nn::Sequential fine(DPConv2d(DPConv2dOptions(1, 4, 3)), nn::InstanceNorm2d(4));
  EXPECT_TRUE(CheckDpCompatible(*fine).ok());
  EXPECT_TRUE(CheckDpCompatible(*VolumeNet()).ok());
  EXPECT_TRUE(CheckDpCompatible(*TokenNet()).ok());
}

TEST(DpSgdTest, ParameterOutsideDpLayersIsNamed) {
  nn::Sequential net(DPConv2d(DPConv2dOptions(1, 4, 3)), Flatten(), nn::Linear(4, 2));
  absl::Status status = CheckDpCompatible(*net);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("'2.weight'"), std::string::npos) << status;
}

TEST(DpSgdTest, OptionsAreValidated) {
  nn::Sequential net = SmallNet();
  EXPECT_FALSE(DpSgdEngine::Create(*net, TestOptions(0.0, 1, 1)).ok());
  EXPECT_FALSE(DpSgdEngine::Create(*net, TestOptions(1, -1, 1)).ok());
  EXPECT_FALSE(DpSgdEngine::Create(*net, TestOptions(1, 1, 0)).ok());
}

TEST(DpSgdTest, PoissonSampleDrawsEachIndexIndependently) {
  at::Generator gen = at::detail::createCPUGenerator(5);
  auto sample = PoissonSample(20000, 0.1, gen);
  ASSERT_TRUE(sample.ok());
  EXPECT_NEAR(static_cast<double>(sample->size()), 2000.0, 200.0);
  EXPECT_TRUE(std::is_sorted(sample->begin(), sample->end()));
  EXPECT_TRUE(PoissonSample(100, 0.0, gen)->empty());
  EXPECT_EQ(PoissonSample(100, 1.0, gen)->size(), 100u);
  EXPECT_TRUE(PoissonSample(0, 0.5, gen)->empty());
  EXPECT_FALSE(PoissonSample(10, 1.5, gen).ok());
}

void ExpectDpStepWorks(const std::string& name, int image_size) {
  SCOPED_TRACE(name);
  auto model = CreateModel(ClassifierSpec(name, 1, image_size, 3), 11);
  ASSERT_TRUE(model.ok()) << model.status();
  ModelImpl& net = **model;
  Tensor x = torch::randn({3, 1, image_size, image_size});
  Tensor y = torch::randint(0, 2, {3, 3}).to(torch::kFloat32);
  std::vector<Tensor> before;
  for (const Tensor& p : net.parameters()) before.push_back(p.detach().clone());
  torch::optim::SGD opt(net.parameters(), 0.1);
  DpSgdOptions options = TestOptions(1.0, 1.0, 3.0);
  auto loss = [&] {
    return torch::nn::functional::binary_cross_entropy_with_logits(
               net.forward(x), y,
               torch::nn::functional::BinaryCrossEntropyWithLogitsFuncOptions().reduction(
                   torch::kNone))
        .sum(1);
  };
  auto engine = DpSgdEngine::Create(net, options);
  ASSERT_TRUE(engine.ok()) << engine.status();
  ASSERT_TRUE((*engine)->AccumulateMicroBatch(loss).ok());
  EXPECT_EQ((*engine)->last_norms().numel(), 3);
  ASSERT_TRUE((*engine)->Step(opt).ok());
  std::vector<Tensor> after = net.parameters();
  for (size_t k = 0; k < after.size(); ++k) {
    EXPECT_TRUE(torch::isfinite(after[k]).all().item<bool>());
    EXPECT_FALSE(torch::equal(after[k], before[k])) << "parameter " << k << " unchanged";
  }
}

TEST(DpSgdTest, WholeModelsTakeADpStep) {
  ExpectDpStepWorks("smallcnn", 32);
  ExpectDpStepWorks("resnet18", 32);
}

}  // namespace
}  // namespace fl
