// The KL-regularised VAE of latent diffusion, its SSIM and its per-sample loss
// (models/diffusion.h).
#include <cmath>
#include <vector>

#include "common/torch_pch.h"
#include "models/diffusion.h"
#include "models/diffusion_blocks.h"

namespace fl {
namespace models_internal {

namespace nn = torch::nn;

namespace {

constexpr int64_t kVaeGroups = 8;

DPConv2d Conv3x3(int64_t in, int64_t out) {
  return DPConv2d(DPConv2dOptions(in, out, 3).padding(1));
}

DPGroupNorm VaeNorm(int64_t channels) {
  return DPGroupNorm(nn::GroupNormOptions(GroupsFor(channels, kVaeGroups), channels));
}

}  // namespace

class VaeEncoderImpl : public nn::Module {
 public:
  VaeEncoderImpl(int64_t in, const std::vector<int>& w, int64_t latent) {
    stem_ = register_module("stem", Conv3x3(in, w[0]));
    stem_block_ = register_module("stem_block",
                                  std::make_shared<LatentResBlockImpl>(w[0], w[0], 0, kVaeGroups));
    nn::ModuleList down;
    for (size_t k = 1; k < w.size(); ++k) {
      down_.push_back(std::make_shared<LevelImpl>(w[k - 1], w[k], 2, w[k], 0, kVaeGroups));
      down->push_back(down_.back());
    }
    register_module("down", down);
    out_norm_ = register_module("out_norm", VaeNorm(w.back()));
    out_ = register_module("out", Conv3x3(w.back(), 2 * latent));
  }

  LatentMoments forward(const torch::Tensor& x) {
    torch::Tensor h = stem_block_->forward(stem_->forward(x));
    for (const auto& level : down_) h = level->block->forward(level->conv->forward(h));
    std::vector<torch::Tensor> parts =
        out_->forward(torch::silu(out_norm_->forward(h))).chunk(2, 1);
    return {parts[0], parts[1].clamp(-30.0, 20.0)};
  }

 private:
  DPConv2d stem_{nullptr};
  std::shared_ptr<LatentResBlockImpl> stem_block_;
  std::vector<std::shared_ptr<LevelImpl>> down_;
  DPGroupNorm out_norm_{nullptr};
  DPConv2d out_{nullptr};
};

class VaeDecoderImpl : public nn::Module {
 public:
  VaeDecoderImpl(int64_t out, const std::vector<int>& w, int64_t latent) {
    in_ = register_module("in", Conv3x3(latent, w.back()));
    in_block_ = register_module(
        "in_block", std::make_shared<LatentResBlockImpl>(w.back(), w.back(), 0, kVaeGroups));
    nn::ModuleList up;
    for (size_t k = w.size() - 1; k >= 1; --k) {
      up_.push_back(std::make_shared<LevelImpl>(w[k], w[k - 1], 1, w[k - 1], 0, kVaeGroups));
      up->push_back(up_.back());
    }
    register_module("up", up);
    out_norm_ = register_module("out_norm", VaeNorm(w[0]));
    out_ = register_module("out", Conv3x3(w[0], out));
  }

  torch::Tensor forward(const torch::Tensor& z) {
    torch::Tensor h = in_block_->forward(in_->forward(z));
    for (const auto& level : up_) {
      h = level->block->forward(level->conv->forward(UpsampleNearest2(h)));
    }
    return out_->forward(torch::silu(out_norm_->forward(h)));
  }

 private:
  DPConv2d in_{nullptr};
  std::shared_ptr<LatentResBlockImpl> in_block_;
  std::vector<std::shared_ptr<LevelImpl>> up_;
  DPGroupNorm out_norm_{nullptr};
  DPConv2d out_{nullptr};
};

}  // namespace models_internal

KlVaeImpl::KlVaeImpl(const ModelSpec& spec) {
  encoder_ =
      register_module("encoder", std::make_shared<models_internal::VaeEncoderImpl>(
                                     spec.input.channels, spec.widths, spec.latent_channels));
  decoder_ =
      register_module("decoder", std::make_shared<models_internal::VaeDecoderImpl>(
                                     spec.input.channels, spec.widths, spec.latent_channels));
}

torch::Tensor KlVaeImpl::forward(torch::Tensor x) { return Decode(Encode(x).mean); }

LatentMoments KlVaeImpl::Encode(const torch::Tensor& x) { return encoder_->forward(x); }

torch::Tensor KlVaeImpl::Decode(const torch::Tensor& z) { return decoder_->forward(z); }

torch::Tensor SampleLatent(const LatentMoments& moments, at::Generator generator) {
  torch::Tensor noise =
      at::normal(0.0, 1.0, moments.mean.sizes(), generator, moments.mean.options());
  return moments.mean + torch::exp(0.5 * moments.logvar) * noise;
}

namespace {

// The normalised 1D Gaussian window of `size` taps and standard deviation `sigma`.
torch::Tensor GaussianWindow(int64_t size, double sigma, const torch::TensorOptions& options) {
  torch::Tensor x = torch::arange(size, options) - static_cast<double>(size / 2);
  torch::Tensor g = torch::exp(-(x * x) / (2.0 * sigma * sigma));
  return g / g.sum();
}

}  // namespace

torch::Tensor Ssim(const torch::Tensor& a, const torch::Tensor& b) {
  TORCH_CHECK(a.dim() == 4 && a.sizes() == b.sizes(), "SSIM: two [N, C, H, W] of one shape, got ",
              a.sizes(), " and ", b.sizes());
  const int64_t channels = a.size(1);
  int64_t win = std::min<int64_t>(11, std::min(a.size(2), a.size(3)));
  if (win % 2 == 0) --win;
  const torch::Tensor g = GaussianWindow(win, 1.5, a.options());
  const torch::Tensor rows = g.view({1, 1, win, 1}).expand({channels, 1, win, 1}).contiguous();
  const torch::Tensor cols = g.view({1, 1, 1, win}).expand({channels, 1, 1, win}).contiguous();
  const std::vector<int64_t> one = {1, 1}, zero = {0, 0};
  auto filter = [&](const torch::Tensor& x) {
    const torch::Tensor h = at::conv2d(x, rows, torch::Tensor(), one, zero, one, channels);
    return at::conv2d(h, cols, torch::Tensor(), one, zero, one, channels);
  };
  constexpr double kC1 = 0.01 * 0.01, kC2 = 0.03 * 0.03;  // (K * data range)^2, range 1
  const torch::Tensor mu_a = filter(a), mu_b = filter(b);
  const torch::Tensor var_a = filter(a * a) - mu_a * mu_a;
  const torch::Tensor var_b = filter(b * b) - mu_b * mu_b;
  const torch::Tensor cov = filter(a * b) - mu_a * mu_b;
  const torch::Tensor map = ((2 * mu_a * mu_b + kC1) * (2 * cov + kC2)) /
                            ((mu_a * mu_a + mu_b * mu_b + kC1) * (var_a + var_b + kC2));
  return torch::relu(map.flatten(2).mean(2)).mean(1);
}

VaeLoss VaePerSampleLoss(const torch::Tensor& reconstruction, const torch::Tensor& images,
                         const LatentMoments& moments, double kl_weight) {
  TORCH_CHECK(reconstruction.sizes() == images.sizes(), "VAE loss: reconstruction ",
              reconstruction.sizes(), " for images ", images.sizes());
  VaeLoss loss;
  const double pixels = static_cast<double>(images[0].numel());
  loss.l1 = (reconstruction - images).abs().flatten(1).mean(1);
  loss.ssim = Ssim(reconstruction.clamp(0.0, 1.0), images);
  loss.kl =
      0.5 * (moments.mean.pow(2) + moments.logvar.exp() - 1.0 - moments.logvar).flatten(1).sum(1);
  loss.total = loss.l1 + (1.0 - loss.ssim) + kl_weight * loss.kl / pixels;
  return loss;
}

}  // namespace fl
