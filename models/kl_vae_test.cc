#include <algorithm>
#include <cmath>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/torch_pch.h"
#include "gtest/gtest.h"
#include "models/diffusion.h"
#include "models/model.h"

namespace fl {
namespace {

using torch::Tensor;

const torch::TensorOptions kF64 = torch::TensorOptions().dtype(torch::kFloat64);

std::shared_ptr<KlVaeImpl> MustCreateVae(const ModelSpec& spec, uint64_t seed) {
  auto model = CreateModel(spec, seed);
  EXPECT_TRUE(model.ok()) << model.status();
  return model.ok() ? std::dynamic_pointer_cast<KlVaeImpl>(*model) : nullptr;
}

// --------------------------------------------------------------------------------------------
// SSIM

// The SSIM of one channel by its definition: a loop over every valid window position, double.
double LoopSsim(const Tensor& a, const Tensor& b, int64_t win) {
  std::vector<double> g(static_cast<size_t>(win));
  double total = 0;
  for (int64_t i = 0; i < win; ++i) {
    const double d = static_cast<double>(i - win / 2);
    g[i] = std::exp(-d * d / (2 * 1.5 * 1.5));
    total += g[i];
  }
  for (double& v : g) v /= total;
  auto A = a.accessor<double, 2>();
  auto B = b.accessor<double, 2>();
  double sum = 0;
  int64_t count = 0;
  for (int64_t i = 0; i + win <= a.size(0); ++i) {
    for (int64_t j = 0; j + win <= a.size(1); ++j) {
      double ma = 0, mb = 0, saa = 0, sbb = 0, sab = 0;
      for (int64_t u = 0; u < win; ++u) {
        for (int64_t v = 0; v < win; ++v) {
          const double w = g[u] * g[v], x = A[i + u][j + v], y = B[i + u][j + v];
          ma += w * x;
          mb += w * y;
          saa += w * x * x;
          sbb += w * y * y;
          sab += w * x * y;
        }
      }
      const double c1 = 1e-4, c2 = 9e-4;
      sum += ((2 * ma * mb + c1) * (2 * (sab - ma * mb) + c2)) /
             ((ma * ma + mb * mb + c1) * (saa - ma * ma + sbb - mb * mb + c2));
      ++count;
    }
  }
  return std::max(0.0, sum / static_cast<double>(count));
}

// The fixed 13 x 13 patterns of the hand-computed reference (values from a pure-Python loop).
Tensor Pattern(int kind) {
  Tensor out = torch::zeros({1, 1, 13, 13}, kF64);
  auto o = out.accessor<double, 4>();
  for (int i = 0; i < 13; ++i) {
    for (int j = 0; j < 13; ++j) {
      const double a = ((i * 7 + j * 3) % 11) / 10.0;
      if (kind == 0) o[0][0][i][j] = a;
      if (kind == 1) o[0][0][i][j] = ((i * 5 + j * 2 + 3) % 13) / 12.0;
      if (kind == 2) o[0][0][i][j] = std::min(1.0, a * 0.8 + 0.1);
      if (kind == 3) o[0][0][i][j] = std::clamp(a + (((i * 3 + j * 5) % 7) - 3) / 20.0, 0.0, 1.0);
    }
  }
  return out;
}

TEST(SsimTest, MatchesHandComputedValues) {
  EXPECT_NEAR(Ssim(Pattern(0), Pattern(2)).item<double>(), 0.9757260382479969, 1e-12);
  EXPECT_NEAR(Ssim(Pattern(0), Pattern(3)).item<double>(), 0.9580766762536107, 1e-12);
  EXPECT_EQ(Ssim(Pattern(0), Pattern(1)).item<double>(), 0.0);  // negative, clamped
}

TEST(SsimTest, IdenticalImagesGiveOneAndRandomPairsMatchTheLoop) {
  torch::manual_seed(1);
  Tensor a = torch::rand({2, 3, 16, 18}, kF64);
  Tensor b = (a + 0.2 * torch::randn({2, 3, 16, 18}, kF64)).clamp(0, 1);
  Tensor same = Ssim(a, a);
  EXPECT_LT((same - 1.0).abs().max().item<double>(), 1e-12);
  Tensor got = Ssim(a, b);
  ASSERT_EQ(got.sizes(), (std::vector<int64_t>{2}));
  for (int64_t n = 0; n < 2; ++n) {
    double want = 0;
    for (int64_t c = 0; c < 3; ++c) want += LoopSsim(a[n][c], b[n][c], 11) / 3.0;
    EXPECT_NEAR(got[n].item<double>(), want, 1e-12) << "sample " << n;
  }
  // Images smaller than the window: the largest odd window that fits (7 for 8 x 8).
  Tensor small_a = torch::rand({1, 1, 8, 8}, kF64), small_b = torch::rand({1, 1, 8, 8}, kF64);
  EXPECT_NEAR(Ssim(small_a, small_b).item<double>(), LoopSsim(small_a[0][0], small_b[0][0], 7),
              1e-12);
  EXPECT_NEAR(Ssim(small_a, small_a).item<double>(), 1.0, 1e-12);
}

// --------------------------------------------------------------------------------------------
// The VAE

TEST(KlVaeTest, ShapesNamesAndRefusals) {
  // Medfusion's layout at small widths: four widths, downsampling x8, 8 latent channels.
  auto vae = MustCreateVae(KlVaeSpec(1, 32, {8, 16, 16, 32}, 8), 2);
  ASSERT_NE(vae, nullptr);
  EXPECT_EQ(vae->head_prefix(), "");
  Tensor x = torch::rand({2, 1, 32, 32});
  LatentMoments m = vae->Encode(x);
  EXPECT_EQ(m.mean.sizes(), (std::vector<int64_t>{2, 8, 4, 4}));
  EXPECT_EQ(m.logvar.sizes(), m.mean.sizes());
  EXPECT_EQ(vae->Decode(m.mean).sizes(), x.sizes());
  EXPECT_TRUE(torch::equal(vae->forward(x), vae->Decode(m.mean)));
  std::map<std::string, std::vector<int64_t>> shapes;
  for (const NamedTensor& w : ExtractWeights(*vae)) shapes[w.name] = w.shape;
  EXPECT_EQ(shapes["encoder.stem.weight"], (std::vector<int64_t>{8, 1, 3, 3}));
  EXPECT_EQ(shapes["encoder.down.2.conv.weight"], (std::vector<int64_t>{32, 16, 3, 3}));
  EXPECT_EQ(shapes["encoder.out.weight"], (std::vector<int64_t>{16, 32, 3, 3}));
  EXPECT_EQ(shapes["decoder.in.weight"], (std::vector<int64_t>{32, 8, 3, 3}));
  EXPECT_EQ(shapes["decoder.up.2.conv.weight"], (std::vector<int64_t>{8, 16, 3, 3}));
  EXPECT_EQ(shapes["decoder.out.weight"], (std::vector<int64_t>{1, 8, 3, 3}));
  EXPECT_EQ(shapes["encoder.stem_block.norm1.weight"], (std::vector<int64_t>{8}));
  EXPECT_FALSE(CreateModel(KlVaeSpec(1, 30, {8, 16, 16, 32}, 8), 1).ok());  // 30 % 8
  EXPECT_FALSE(CreateModel(KlVaeSpec(1, 32, {8, 16}, 0), 1).ok());
  EXPECT_FALSE(CreateModel(KlVaeSpec(1, 32, {}, 4), 1).ok());
  auto again = MustCreateVae(KlVaeSpec(1, 32, {8, 16, 16, 32}, 8), 2);
  EXPECT_TRUE(torch::equal(again->forward(x), vae->forward(x)));
}

TEST(KlVaeTest, ReparameterisationDrawsFromTheCallersGenerator) {
  LatentMoments m{torch::zeros({2, 3, 4, 4}), torch::full({2, 3, 4, 4}, 2 * std::log(0.5))};
  at::Generator g1 = at::detail::createCPUGenerator(5), g2 = at::detail::createCPUGenerator(5);
  Tensor a = SampleLatent(m, g1), b = SampleLatent(m, g2);
  EXPECT_TRUE(torch::equal(a, b));
  EXPECT_FALSE(torch::equal(a, SampleLatent(m, g1)));
  EXPECT_NEAR(a.std().item<double>(), 0.5, 0.15);  // exp(logvar / 2) = 0.5
  LatentMoments sure{torch::ones({1, 2, 2, 2}), torch::full({1, 2, 2, 2}, -30.0)};
  EXPECT_TRUE(torch::allclose(SampleLatent(sure, g1), sure.mean, 1e-5, 1e-5));
}

TEST(KlVaeTest, LossTermsMatchTheirDefinitions) {
  Tensor images = torch::rand({2, 1, 12, 12}, kF64);
  Tensor recon = images.clone();
  recon[1] += 0.1;
  LatentMoments m{torch::zeros({2, 4, 3, 3}, kF64), torch::zeros({2, 4, 3, 3}, kF64)};
  m.mean[1].fill_(1.0);  // KL of N(1, 1) from N(0, 1): 0.5 per element
  VaeLoss loss = VaePerSampleLoss(recon, images, m, 1e-6);
  EXPECT_NEAR(loss.l1[0].item<double>(), 0.0, 1e-12);
  EXPECT_NEAR(loss.l1[1].item<double>(), 0.1, 1e-12);
  EXPECT_NEAR(loss.ssim[0].item<double>(), 1.0, 1e-12);
  EXPECT_NEAR(loss.kl[0].item<double>(), 0.0, 1e-12);
  EXPECT_NEAR(loss.kl[1].item<double>(), 0.5 * 36, 1e-12);
  EXPECT_NEAR(loss.total[1].item<double>(),
              0.1 + (1 - loss.ssim[1].item<double>()) + 1e-6 * 18 / 144, 1e-12);
}

// A few fixed phantom images (discs and bars at different places), trained on for a short while:
// the reconstruction error must fall well below its start.
TEST(KlVaeTest, ShortTrainingReconstructsFixedImages) {
  torch::manual_seed(0);
  Tensor yy = torch::arange(16, torch::kFloat32).view({16, 1}).expand({16, 16});
  Tensor xx = torch::arange(16, torch::kFloat32).view({1, 16}).expand({16, 16});
  std::vector<Tensor> images;
  for (int k = 0; k < 4; ++k) {
    Tensor disc = ((yy - 4 - 2 * k).pow(2) + (xx - 11 + k).pow(2) < 9).to(torch::kFloat32);
    Tensor bar = ((xx - 3 * k).abs() < 1.5).to(torch::kFloat32) * 0.5;
    images.push_back((0.1 + 0.8 * disc + bar).clamp(0, 1).unsqueeze(0));
  }
  Tensor x = torch::stack(images);
  auto vae = MustCreateVae(KlVaeSpec(1, 16, {8, 16}, 4), 1);
  ASSERT_NE(vae, nullptr);
  torch::optim::Adam opt(vae->parameters(), torch::optim::AdamOptions(1e-2));
  at::Generator gen = at::detail::createCPUGenerator(1);
  double first = 0, last = 0;
  for (int step = 0; step < 160; ++step) {
    opt.zero_grad();
    LatentMoments m = vae->Encode(x);
    VaeLoss loss = VaePerSampleLoss(vae->Decode(SampleLatent(m, gen)), x, m);
    loss.total.mean().backward();
    opt.step();
    if (step == 0) first = loss.l1.mean().item<double>();
  }
  {
    torch::NoGradGuard no_grad;
    last = (vae->forward(x) - x).abs().mean().item<double>();
  }
  // Predicting each image's mean would leave an error of 0.23.
  EXPECT_LT(last, 0.07) << "from " << first;
  EXPECT_LT(last, first / 10);
}

}  // namespace
}  // namespace fl
