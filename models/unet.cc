// The latent denoiser UNet and the residual blocks it shares with the VAE (models/diffusion.h).
#include <cmath>
#include <numeric>
#include <string>

#include "common/torch_pch.h"
#include "models/diffusion.h"
#include "models/diffusion_blocks.h"

namespace fl {
namespace models_internal {

namespace nn = torch::nn;

int64_t GroupsFor(int64_t channels, int64_t max_groups) {
  return std::gcd<int64_t>(channels, max_groups);
}

torch::Tensor UpsampleNearest2(const torch::Tensor& x) {
  return nn::functional::interpolate(x, nn::functional::InterpolateFuncOptions()
                                            .scale_factor(std::vector<double>{2.0, 2.0})
                                            .mode(torch::kNearest));
}

namespace {

DPConv2d Conv(int64_t in, int64_t out, int64_t kernel, int64_t stride) {
  return DPConv2d(DPConv2dOptions(in, out, kernel).stride(stride).padding(kernel / 2));
}

DPGroupNorm Norm(int64_t channels, int64_t max_groups) {
  return DPGroupNorm(nn::GroupNormOptions(GroupsFor(channels, max_groups), channels));
}

}  // namespace

LatentResBlockImpl::LatentResBlockImpl(int64_t in, int64_t out, int64_t emb_width,
                                       int64_t max_groups) {
  norm1_ = register_module("norm1", Norm(in, max_groups));
  conv1_ = register_module("conv1", Conv(in, out, 3, 1));
  if (emb_width > 0) emb_proj_ = register_module("emb_proj", DPLinear(emb_width, out));
  norm2_ = register_module("norm2", Norm(out, max_groups));
  conv2_ = register_module("conv2", Conv(out, out, 3, 1));
  if (in != out) skip_ = register_module("skip", Conv(in, out, 1, 1));
}

torch::Tensor LatentResBlockImpl::forward(const torch::Tensor& x, const torch::Tensor& emb) {
  torch::Tensor h = conv1_->forward(torch::silu(norm1_->forward(x)));
  if (emb_proj_) {
    TORCH_CHECK(emb.defined(), "residual block: an embedding is required");
    h = h + emb_proj_->forward(torch::silu(emb)).unsqueeze(-1).unsqueeze(-1);
  }
  h = conv2_->forward(torch::silu(norm2_->forward(h)));
  return (skip_ ? skip_->forward(x) : x) + h;
}

LevelImpl::LevelImpl(int64_t in, int64_t out, int64_t stride, int64_t block_in, int64_t emb_width,
                     int64_t max_groups) {
  conv = register_module("conv", Conv(in, out, 3, stride));
  block = register_module(
      "block", std::make_shared<LatentResBlockImpl>(block_in, out, emb_width, max_groups));
}

}  // namespace models_internal

namespace {

namespace nn = torch::nn;
using models_internal::LatentResBlockImpl;
using models_internal::LevelImpl;

constexpr int64_t kUNetGroups = 32;

// [N, dim]: sin then cos of t * 10000^(-i / (dim/2 - 1)), i = 0..dim/2-1 (Medfusion's
// SinusoidalPosEmb). REQUIRES: dim even, >= 4.
// Computed in `dtype`, the model's.
torch::Tensor SinusoidalEmbedding(const torch::Tensor& t, int64_t dim, torch::ScalarType dtype) {
  const int64_t half = dim / 2;
  const double scale = std::log(10000.0) / static_cast<double>(half - 1);
  torch::Tensor freqs = torch::exp(
      torch::arange(half, torch::TensorOptions().dtype(dtype).device(t.device())) * -scale);
  torch::Tensor args = t.to(dtype).unsqueeze(1) * freqs.unsqueeze(0);
  return torch::cat({args.sin(), args.cos()}, 1);
}

}  // namespace

LatentUNetImpl::LatentUNetImpl(const ModelSpec& spec)
    : num_findings_(spec.num_findings), embedding_width_(spec.embedding_width) {
  const int64_t e = embedding_width_;
  const std::vector<int>& w = spec.widths;
  time_mlp_ =
      register_module("time_mlp", nn::Sequential(DPLinear(e / 4, e), nn::SiLU(), DPLinear(e, e)));
  if (num_findings_ > 0) {
    cond_embed_ = register_module("cond_embed", DPEmbedding(3 * num_findings_, e));
  }
  in_conv_ = register_module("in_conv",
                             DPConv2d(DPConv2dOptions(spec.input.channels, w[0], 3).padding(1)));
  in_block_ =
      register_module("in_block", std::make_shared<LatentResBlockImpl>(w[0], w[0], e, kUNetGroups));
  nn::ModuleList down, up;
  for (size_t k = 1; k < w.size(); ++k) {
    down_.push_back(std::make_shared<LevelImpl>(w[k - 1], w[k], 2, w[k], e, kUNetGroups));
    down->push_back(down_.back());
    up_.push_back(std::make_shared<LevelImpl>(w[k], w[k - 1], 1, 2 * w[k - 1], e, kUNetGroups));
    up->push_back(up_.back());
  }
  register_module("down", down);
  register_module("up", up);
  out_norm_ = register_module(
      "out_norm",
      DPGroupNorm(nn::GroupNormOptions(models_internal::GroupsFor(w[0], kUNetGroups), w[0])));
  out_conv_ = register_module("out_conv",
                              DPConv2d(DPConv2dOptions(w[0], spec.input.channels, 3).padding(1)));
}

torch::Tensor LatentUNetImpl::forward(torch::Tensor) {
  TORCH_CHECK(false, "latent_unet needs a timestep and a condition: call Denoise(x, t, condition)");
}

torch::Tensor LatentUNetImpl::Embedding(const torch::Tensor& t, const torch::Tensor& condition) {
  TORCH_CHECK(t.dim() == 1, "latent_unet: t must be [N], got ", t.sizes());
  torch::Tensor emb = time_mlp_->forward(
      SinusoidalEmbedding(t, embedding_width_ / 4, in_conv_->weight.scalar_type()));
  if (num_findings_ == 0) {
    TORCH_CHECK(!condition.defined() || condition.size(1) == 0,
                "latent_unet: an unconditional model takes no condition");
    return emb;
  }
  torch::Tensor states =
      condition.defined() ? condition : UnknownCondition(t.size(0), num_findings_, t.device());
  TORCH_CHECK(states.dim() == 2 && states.size(0) == t.size(0) && states.size(1) == num_findings_,
              "latent_unet: condition must be [", t.size(0), ", ", num_findings_, "], got ",
              states.sizes());
  torch::Tensor offsets =
      torch::arange(num_findings_, torch::TensorOptions().dtype(torch::kLong).device(t.device())) *
      3;
  torch::Tensor rows = states.to(torch::kLong) + offsets.unsqueeze(0);
  return emb + cond_embed_->forward(rows).sum(1);
}

torch::Tensor LatentUNetImpl::Denoise(const torch::Tensor& x_t, const torch::Tensor& t,
                                      const torch::Tensor& condition) {
  const torch::Tensor emb = Embedding(t, condition);
  std::vector<torch::Tensor> skips;
  torch::Tensor h = in_block_->forward(in_conv_->forward(x_t), emb);
  for (const auto& level : down_) {
    skips.push_back(h);
    h = level->block->forward(level->conv->forward(h), emb);
  }
  for (size_t k = up_.size(); k-- > 0;) {
    const auto& level = up_[k];
    h = level->conv->forward(models_internal::UpsampleNearest2(h));
    h = level->block->forward(torch::cat({h, skips[k]}, 1), emb);
  }
  return out_conv_->forward(torch::silu(out_norm_->forward(h)));
}

}  // namespace fl
