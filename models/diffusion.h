// Latent diffusion as in Medfusion (Müller-Franzes et al., 2023; github.com/mueller-franzes/
// medfusion): a KL-regularised VAE maps images to latents, and a class-conditional UNet learns to
// denoise those latents. Every parameterised layer is DP-aware (models/dp_layers.h), so both
// models train with DP-SGD; every loss here is per sample ([N], sample i's value depends on
// sample i alone) so that DP-SGD can clip each sample's gradient.
//
// Conventions taken from Medfusion's code (scripts/train_diffusion.py, diffusion_pipeline.py):
//   - T = 1000, scaled-linear betas from 0.002 to 0.02, epsilon prediction with an L1 loss;
//   - classifier-free guidance: eps = eps_uncond + s * (eps_cond - eps_uncond), so s = 1 is the
//     plain conditional model and s = 0 the unconditional one (Medfusion samples with s = 8);
//   - DDIM: timesteps linspace(0, T-1, K) truncated to integers, eta = 1 by default, x0 not
//     clipped (latents are not confined to [-1, 1]);
//   - latents are used as the encoder gives them (no scale factor, no centring).
// Where we differ: images are in [0, 1] (Medfusion: [-1, 1]); there is no perceptual (LPIPS)
// term in the VAE loss (its ImageNet weights cannot ship); the condition is a multi-label vector
// over the job's findings with an "unknown" state (Medfusion: one class index), and the
// guidance dropout draws per sample (Medfusion: once per batch).
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "common/torch_pch.h"
#include "models/dp_layers.h"
#include "models/model.h"

namespace fl {
namespace models_internal {
class LatentResBlockImpl;
class LevelImpl;
class VaeEncoderImpl;
class VaeDecoderImpl;
}  // namespace models_internal

// ------------------------------------------------------------------------------------------------
// The noise schedule

struct NoiseSchedule {
  std::vector<double> betas;           // beta_t, t = 0..T-1
  std::vector<double> alphas_cumprod;  // prod_{s <= t} (1 - beta_s)
  int64_t steps() const { return static_cast<int64_t>(betas.size()); }
};

// Scaled-linear ("quadratic") betas: sqrt(beta) evenly spaced from sqrt(beta_start) to
// sqrt(beta_end) over T steps, squared; in double precision. REQUIRES: T >= 2,
// 0 < beta_start <= beta_end < 1.
NoiseSchedule ScaledLinearSchedule(int64_t T = 1000, double beta_start = 0.002,
                                   double beta_end = 0.02);

// z_t = sqrt(abar_t) z0 + sqrt(1 - abar_t) eps, per sample. z0, eps: [N, ...]; t: [N] integer
// steps in [0, T).
torch::Tensor QSample(const NoiseSchedule& schedule, const torch::Tensor& z0,
                      const torch::Tensor& t, const torch::Tensor& eps);

// ------------------------------------------------------------------------------------------------
// Conditions over the job's findings: [N, F] int64 states.

enum FindingState : int64_t { kFindingNegative = 0, kFindingPositive = 1, kFindingUnknown = 2 };

// States from targets [N, F] (float): NaN -> unknown (a finding the site does not label, or a
// missing label), > 0.5 -> positive, else negative.
torch::Tensor ConditionFromTargets(const torch::Tensor& targets);
// All-unknown: the unconditional model's condition.
torch::Tensor UnknownCondition(int64_t n, int64_t findings, torch::Device device = torch::kCPU);
// Classifier-free guidance's training dropout: each sample's whole condition becomes all-unknown
// with probability p, independently, drawn from `generator` (a CPU generator).
torch::Tensor DropConditions(const torch::Tensor& states, double p, at::Generator generator);

// ------------------------------------------------------------------------------------------------
// KL-regularised VAE (registry name "kl_vae")

struct LatentMoments {
  torch::Tensor mean;    // [N, latent_channels, H/f, W/f]
  torch::Tensor logvar;  // same shape, clamped to [-30, 20]
};

// Encoder: conv3x3 to widths[0] and a residual block, then per further width a stride-2 conv3x3
// and a residual block (downsampling f = 2^(widths-1): x8 for Medfusion's 64/128/256/512), then
// GroupNorm-SiLU-conv3x3 to 2 x latent_channels, split into mean and log-variance. Decoder
// mirrored with nearest-neighbour upsampling; its output is unbounded (trained towards images in
// [0, 1]; clamp for display). Residual blocks: GroupNorm-SiLU-conv3x3 twice, a 1x1 conv on the
// skip path when the width changes. GroupNorm has gcd(channels, 8) groups.
class KlVaeImpl : public ModelImpl {
 public:
  explicit KlVaeImpl(const ModelSpec& spec);
  // The deterministic reconstruction, Decode(Encode(x).mean).
  torch::Tensor forward(torch::Tensor x) override;
  LatentMoments Encode(const torch::Tensor& x);
  torch::Tensor Decode(const torch::Tensor& z);

 private:
  // Names: encoder.{stem, stem_block, down.K.{conv, block}, out_norm, out},
  // decoder.{in, in_block, up.K.{conv, block}, out_norm, out}.
  std::shared_ptr<models_internal::VaeEncoderImpl> encoder_;
  std::shared_ptr<models_internal::VaeDecoderImpl> decoder_;
};

// The reparameterisation trick: mean + exp(logvar / 2) * noise, noise ~ N(0, 1) from `generator`
// (the caller's, so that a run is reproducible; on the moments' device).
torch::Tensor SampleLatent(const LatentMoments& moments, at::Generator generator);

// Per-sample SSIM of images in [0, 1] ([N, C, H, W] each): Gaussian window 11 (the largest odd
// size up to min(H, W) when smaller), sigma 1.5, K1 0.01, K2 0.03, data range 1, over the valid
// window positions; each channel's mean clamped at 0 (Medfusion's nonnegative_ssim), then
// averaged over channels. [N].
torch::Tensor Ssim(const torch::Tensor& a, const torch::Tensor& b);

struct VaeLoss {
  torch::Tensor total;  // [N]: l1 + (1 - ssim) + kl_weight * kl / (C * H * W)
  torch::Tensor l1;     // [N] mean absolute error
  torch::Tensor ssim;   // [N] SSIM of the reconstruction clamped to [0, 1]
  torch::Tensor kl;     // [N] KL(q(z|x) || N(0, I)) summed over the latent's elements
};
// Medfusion's VAE loss per sample. Medfusion sums L1 and (1 - SSIM) over pixels and adds
// 1e-6 * KL; we divide all of it by the pixel count C*H*W (so the terms keep Medfusion's weights
// relative to each other, and the loss its scale across image sizes).
VaeLoss VaePerSampleLoss(const torch::Tensor& reconstruction, const torch::Tensor& images,
                         const LatentMoments& moments, double kl_weight = 1e-6);

// ------------------------------------------------------------------------------------------------
// Denoiser UNet on the latents (registry name "latent_unet")

// spec.input is the latent (channels, side); spec.widths one level each (the first at the
// latent's resolution, each further one after a stride-2 conv3x3); spec.embedding_width the
// time and condition embedding width; spec.num_findings the condition's findings (0: an
// unconditional model). Per level one residual block (as the VAE's, plus the embedding:
// SiLU-Linear added after the first conv); nearest-neighbour upsampling, a conv3x3, the skip
// concatenated and a residual block on the way up. The time t goes through a sinusoidal embedding
// of width E/4 and Linear-SiLU-Linear to E; the condition through one embedding per finding of its
// three states, summed, and added to it. GroupNorm has gcd(channels, 32) groups.
class LatentUNetImpl : public ModelImpl {
 public:
  explicit LatentUNetImpl(const ModelSpec& spec);
  // The UNet needs t and a condition: always throws c10::Error. Call Denoise.
  torch::Tensor forward(torch::Tensor x) override;
  // The predicted noise, shaped as x_t [N, C, h, w]. t: [N] steps (integer or float);
  // condition: [N, F] states, or undefined for all-unknown (the unconditional model).
  torch::Tensor Denoise(const torch::Tensor& x_t, const torch::Tensor& t,
                        const torch::Tensor& condition = {});
  // The embedding added to every residual block, [N, E] (time plus condition).
  torch::Tensor Embedding(const torch::Tensor& t, const torch::Tensor& condition);
  int64_t num_findings() const { return num_findings_; }

 private:
  // Names: time_mlp.{0,2}, cond_embed (absent when F = 0), in_conv, in_block,
  // down.K.{conv, block}, up.K.{conv, block}, out_norm, out_conv.
  int64_t num_findings_;
  int64_t embedding_width_;
  torch::nn::Sequential time_mlp_{nullptr};
  DPEmbedding cond_embed_{nullptr};  // [3 F, E]: row 3 f + state
  DPConv2d in_conv_{nullptr};
  std::shared_ptr<models_internal::LatentResBlockImpl> in_block_;
  std::vector<std::shared_ptr<models_internal::LevelImpl>> down_, up_;
  DPGroupNorm out_norm_{nullptr};
  DPConv2d out_conv_{nullptr};
};

// The diffusion training loss per sample: t uniform in [0, T), eps ~ N(0, I), each condition
// dropped to all-unknown with probability `condition_dropout`, all drawn from `generator` (CPU);
// the mean absolute error between the UNet's prediction for z_t and eps. z0: [N, C, h, w]
// latents of the frozen VAE; condition [N, F] states (undefined: all-unknown).
torch::Tensor DiffusionPerSampleLoss(LatentUNetImpl& unet, const NoiseSchedule& schedule,
                                     const torch::Tensor& z0, const torch::Tensor& condition,
                                     at::Generator generator, double condition_dropout = 0.5);

// Classifier-free guidance: eps_u + s (eps_c - eps_u) with eps_u the all-unknown prediction;
// s = 1 runs the conditional model only, s = 0 the unconditional model only.
torch::Tensor GuidedNoise(LatentUNetImpl& unet, const torch::Tensor& x_t, const torch::Tensor& t,
                          const torch::Tensor& condition, double guidance_scale);

struct DdimOptions {
  int64_t steps = 250;          // K: the number of denoising steps, 1..T
  double eta = 1.0;             // 0: deterministic DDIM; 1: Medfusion's default
  double guidance_scale = 1.0;  // s of GuidedNoise
  uint64_t seed = 0;            // the initial noise and eta's noise are drawn from it
};

// The K timesteps DDIM visits, ascending: linspace(0, T-1, K) truncated (as torch.linspace with
// dtype long). REQUIRES: 1 <= K <= T.
std::vector<int64_t> DdimTimesteps(int64_t T, int64_t K);

// One DDIM update from step t to t_next (t_next < 0: the final step, which returns x0_hat):
//   x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)
//   sigma = eta sqrt((1 - abar_t / abar_n)(1 - abar_n) / (1 - abar_t))
//   x_next = sqrt(abar_n) x0_hat + sqrt(1 - abar_n - sigma^2) eps + sigma noise.
torch::Tensor DdimStep(const NoiseSchedule& schedule, const torch::Tensor& x_t,
                       const torch::Tensor& eps, int64_t t, int64_t t_next, double eta,
                       const torch::Tensor& noise);

// Samples latents [N, C, h, w] for conditions [N, F] (undefined: unconditional N = shape[0]),
// without gradients; the same seed and inputs give the same latents. `latent_shape`: [N, C, h, w].
absl::StatusOr<torch::Tensor> DdimSample(LatentUNetImpl& unet, const NoiseSchedule& schedule,
                                         const torch::Tensor& condition,
                                         std::vector<int64_t> latent_shape,
                                         const DdimOptions& options);

}  // namespace fl
