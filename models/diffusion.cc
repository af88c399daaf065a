// The diffusion process of latent diffusion: schedule, conditions, training loss, DDIM sampling
// with classifier-free guidance (models/diffusion.h).
#include "models/diffusion.h"

#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/torch_pch.h"
#include "models/classifiers.h"

namespace fl {
namespace models_internal {
namespace {

absl::Status CheckLevels(const ModelSpec& spec) {
  if (spec.widths.empty() || spec.widths.size() > 6) {
    return absl::InvalidArgumentError(
        absl::StrCat("model ", spec.name, ": needs 1 to 6 widths, got ", spec.widths.size()));
  }
  for (int w : spec.widths) {
    if (w < 1) return absl::InvalidArgumentError(absl::StrCat("model ", spec.name, ": width ", w));
  }
  const int factor = 1 << (spec.widths.size() - 1);
  if (spec.input.square_side() % factor != 0) {
    return absl::InvalidArgumentError(absl::StrCat("model ", spec.name, ": the input side ",
                                                   spec.input.square_side(), " does not divide by ",
                                                   factor));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status CheckKlVaeSpec(const ModelSpec& spec) {
  if (spec.latent_channels < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("model ", spec.name, ": latent_channels must be >= 1"));
  }
  return CheckLevels(spec);
}

absl::Status CheckLatentUNetSpec(const ModelSpec& spec) {
  if (spec.embedding_width < 16 || spec.embedding_width % 8 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("model ", spec.name, ": embedding_width must be >= 16 and divide by 8, got ",
                     spec.embedding_width));
  }
  if (spec.num_findings < 0) {
    return absl::InvalidArgumentError(absl::StrCat("model ", spec.name, ": num_findings < 0"));
  }
  return CheckLevels(spec);
}

}  // namespace models_internal

NoiseSchedule ScaledLinearSchedule(int64_t T, double beta_start, double beta_end) {
  NoiseSchedule schedule;
  const double lo = std::sqrt(beta_start), hi = std::sqrt(beta_end);
  double cumprod = 1.0;
  for (int64_t t = 0; t < T; ++t) {
    const double root = lo + (hi - lo) * static_cast<double>(t) / static_cast<double>(T - 1);
    const double beta = root * root;
    cumprod *= 1.0 - beta;
    schedule.betas.push_back(beta);
    schedule.alphas_cumprod.push_back(cumprod);
  }
  return schedule;
}

namespace {

// [N, 1, ..., 1] (as many ones as x has dimensions after the first): f(abar_t) per sample.
template <typename F>
torch::Tensor PerSample(const NoiseSchedule& schedule, const torch::Tensor& t,
                        const torch::Tensor& x, F f) {
  std::vector<double> values;
  for (double abar : schedule.alphas_cumprod) values.push_back(f(abar));
  torch::Tensor table = torch::tensor(values, torch::TensorOptions().dtype(torch::kFloat64));
  std::vector<int64_t> shape(static_cast<size_t>(x.dim()), 1);
  shape[0] = -1;
  return table.index_select(0, t.to(torch::kCPU, torch::kLong))
      .to(x.device(), x.scalar_type())
      .view(shape);
}

}  // namespace

torch::Tensor QSample(const NoiseSchedule& schedule, const torch::Tensor& z0,
                      const torch::Tensor& t, const torch::Tensor& eps) {
  TORCH_CHECK(t.dim() == 1 && t.size(0) == z0.size(0), "q_sample: t must be [N]");
  const torch::Tensor a = PerSample(schedule, t, z0, [](double ab) { return std::sqrt(ab); });
  const torch::Tensor s = PerSample(schedule, t, z0, [](double ab) { return std::sqrt(1 - ab); });
  return a * z0 + s * eps;
}

torch::Tensor ConditionFromTargets(const torch::Tensor& targets) {
  TORCH_CHECK(targets.dim() == 2, "condition: targets must be [N, F], got ", targets.sizes());
  torch::Tensor states = (targets > 0.5).to(torch::kLong);
  return torch::where(torch::isnan(targets), torch::full_like(states, kFindingUnknown), states);
}

torch::Tensor UnknownCondition(int64_t n, int64_t findings, torch::Device device) {
  return torch::full({n, findings}, static_cast<int64_t>(kFindingUnknown),
                     torch::TensorOptions().dtype(torch::kLong).device(device));
}

torch::Tensor DropConditions(const torch::Tensor& states, double p, at::Generator generator) {
  const int64_t n = states.size(0);
  torch::Tensor drop = at::rand({n}, generator, torch::TensorOptions().dtype(torch::kFloat64)) < p;
  drop = drop.to(states.device()).unsqueeze(1);
  return torch::where(drop, torch::full_like(states, kFindingUnknown), states);
}

torch::Tensor DiffusionPerSampleLoss(LatentUNetImpl& unet, const NoiseSchedule& schedule,
                                     const torch::Tensor& z0, const torch::Tensor& condition,
                                     at::Generator generator, double condition_dropout) {
  const int64_t n = z0.size(0);
  const torch::Tensor t =
      at::randint(schedule.steps(), {n}, generator, torch::TensorOptions().dtype(torch::kLong));
  const torch::Tensor eps =
      at::normal(0.0, 1.0, z0.sizes(), generator, torch::TensorOptions().dtype(torch::kFloat32))
          .to(z0.device(), z0.scalar_type());
  torch::Tensor cond =
      condition.defined() ? condition : UnknownCondition(n, unet.num_findings(), z0.device());
  if (unet.num_findings() > 0 && condition_dropout > 0) {
    cond = DropConditions(cond, condition_dropout, generator);
  }
  const torch::Tensor z_t = QSample(schedule, z0, t, eps);
  const torch::Tensor pred = unet.Denoise(z_t, t.to(z0.device()), cond);
  return (pred - eps).abs().flatten(1).mean(1);
}

torch::Tensor GuidedNoise(LatentUNetImpl& unet, const torch::Tensor& x_t, const torch::Tensor& t,
                          const torch::Tensor& condition, double guidance_scale) {
  if (guidance_scale == 1.0) return unet.Denoise(x_t, t, condition);
  const torch::Tensor uncond = unet.Denoise(x_t, t, torch::Tensor());
  if (guidance_scale == 0.0) return uncond;
  const torch::Tensor cond = unet.Denoise(x_t, t, condition);
  return uncond + guidance_scale * (cond - uncond);
}

std::vector<int64_t> DdimTimesteps(int64_t T, int64_t K) {
  std::vector<int64_t> out;
  for (int64_t i = 0; i < K; ++i) {
    const double v =
        K == 1 ? 0.0
               : static_cast<double>(T - 1) * static_cast<double>(i) / static_cast<double>(K - 1);
    out.push_back(static_cast<int64_t>(v));
  }
  return out;
}

torch::Tensor DdimStep(const NoiseSchedule& schedule, const torch::Tensor& x_t,
                       const torch::Tensor& eps, int64_t t, int64_t t_next, double eta,
                       const torch::Tensor& noise) {
  const double a = schedule.alphas_cumprod.at(static_cast<size_t>(t));
  const torch::Tensor x0 = (x_t - std::sqrt(1.0 - a) * eps) / std::sqrt(a);
  if (t_next < 0) return x0;
  const double an = schedule.alphas_cumprod.at(static_cast<size_t>(t_next));
  const double sigma = eta * std::sqrt((1.0 - a / an) * (1.0 - an) / (1.0 - a));
  const double c = std::sqrt(std::max(0.0, 1.0 - an - sigma * sigma));
  torch::Tensor x = std::sqrt(an) * x0 + c * eps;
  if (sigma > 0) x = x + sigma * noise;
  return x;
}

absl::StatusOr<torch::Tensor> DdimSample(LatentUNetImpl& unet, const NoiseSchedule& schedule,
                                         const torch::Tensor& condition,
                                         std::vector<int64_t> latent_shape,
                                         const DdimOptions& options) {
  if (options.steps < 1 || options.steps > schedule.steps()) {
    return absl::InvalidArgumentError(
        absl::StrCat("DDIM: steps must be in 1..", schedule.steps(), ", got ", options.steps));
  }
  if (latent_shape.size() != 4 || (condition.defined() && condition.size(0) != latent_shape[0])) {
    return absl::InvalidArgumentError("DDIM: latent shape must be [N, C, h, w], N conditions");
  }
  try {
    torch::NoGradGuard no_grad;
    const torch::Device device = unet.parameters().front().device();
    at::Generator gen = at::detail::createCPUGenerator(options.seed);
    auto normal = [&] {
      return at::normal(0.0, 1.0, latent_shape, gen, torch::TensorOptions().dtype(torch::kFloat32))
          .to(device);
    };
    torch::Tensor x = normal();
    const torch::Tensor cond = condition.defined() ? condition.to(device) : torch::Tensor();
    const std::vector<int64_t> steps = DdimTimesteps(schedule.steps(), options.steps);
    for (size_t i = steps.size(); i-- > 0;) {
      const torch::Tensor t = torch::full(
          {latent_shape[0]}, steps[i], torch::TensorOptions().dtype(torch::kLong).device(device));
      const torch::Tensor eps = GuidedNoise(unet, x, t, cond, options.guidance_scale);
      const int64_t next = i > 0 ? steps[i - 1] : -1;
      x = DdimStep(schedule, x, eps, steps[i], next, options.eta,
                   next >= 0 && options.eta > 0 ? normal() : torch::Tensor());
    }
    return x;
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("DDIM sampling: ", e.what_without_backtrace()));
  }
}

}  // namespace fl
