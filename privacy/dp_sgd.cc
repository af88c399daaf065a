#include "privacy/dp_sgd.h"

#include <sys/random.h>

#include <cerrno>
#include <cstring>
#include <exception>
#include <mutex>
#include <unordered_map>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "common/torch_pch.h"

namespace fl {
namespace {

using torch::Tensor;

bool IsBatchNorm(const torch::nn::Module& module) {
  return module.as<torch::nn::BatchNorm1d>() != nullptr ||
         module.as<torch::nn::BatchNorm2d>() != nullptr ||
         module.as<torch::nn::BatchNorm3d>() != nullptr ||
         absl::StrContains(module.name(), "BatchNorm");
}

template <typename Holder>
bool TracksRunningStatsAs(const torch::nn::Module& module) {
  const auto* m = module.as<Holder>();
  return m != nullptr && m->options.track_running_stats();
}

// Running statistics are un-noised aggregates of the private data that would leave the site with
// the model (InstanceNorm with track_running_stats; the DP-aware InstanceNorm refuses the option).
bool TracksRunningStats(const torch::nn::Module& module) {
  return TracksRunningStatsAs<torch::nn::InstanceNorm1d>(module) ||
         TracksRunningStatsAs<torch::nn::InstanceNorm2d>(module) ||
         TracksRunningStatsAs<torch::nn::InstanceNorm3d>(module);
}

std::string Join(const std::string& prefix, const std::string& name) {
  return prefix.empty() ? name : absl::StrCat(prefix, ".", name);
}

absl::Status CheckOptions(const DpSgdOptions& o) {
  if (!(o.clip_norm > 0)) return absl::InvalidArgumentError("DP-SGD: clip_norm must be > 0");
  if (!(o.noise_multiplier >= 0)) {
    return absl::InvalidArgumentError("DP-SGD: noise_multiplier must be >= 0");
  }
  if (!(o.expected_batch_size > 0)) {
    return absl::InvalidArgumentError("DP-SGD: expected_batch_size must be > 0");
  }
  return absl::OkStatus();
}

absl::Status TorchError(const std::string& what, const std::exception& e) {
  return absl::InternalError(absl::StrCat("DP-SGD: ", what, ": ", e.what()));
}

}  // namespace

absl::Status CheckDpCompatible(torch::nn::Module& model) {
  for (const auto& item : model.named_modules("", /*include_self=*/true)) {
    const torch::nn::Module& module = *item.value();
    if (IsBatchNorm(module)) {
      return absl::FailedPreconditionError(absl::StrCat(
          "DP-SGD refuses module '", item.key(), "' (", module.name(),
          "): BatchNorm mixes samples, so per-sample gradients do not exist; use GroupNorm"));
    }
    if (TracksRunningStats(module)) {
      return absl::FailedPreconditionError(absl::StrCat(
          "DP-SGD refuses module '", item.key(), "' (", module.name(),
          "): track_running_stats=true keeps un-noised statistics of the private data; set it to "
          "false"));
    }
    if (IsDpAwareModule(module)) continue;
    for (const auto& param : module.named_parameters(/*recurse=*/false)) {
      if (param.value().defined() && param.value().requires_grad()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "DP-SGD: parameter '", Join(item.key(), param.key()), "' belongs to ", module.name(),
            ", which is not a DP-aware layer (models/dp_layers.h): it would not be clipped"));
      }
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> SecureSeed() {
  uint64_t seed = 0;
  size_t got = 0;
  while (got < sizeof(seed)) {
    const ssize_t n = getrandom(reinterpret_cast<char*>(&seed) + got, sizeof(seed) - got, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      return absl::UnavailableError(absl::StrCat("getrandom failed: ", std::strerror(errno)));
    }
    got += static_cast<size_t>(n);
  }
  return seed;
}

absl::StatusOr<std::vector<int64_t>> PoissonSample(int64_t n, double q, at::Generator generator) {
  if (n < 0 || !(q >= 0 && q <= 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("PoissonSample: need n >= 0 and 0 <= q <= 1, got n=", n, " q=", q));
  }
  try {
    Tensor u = torch::rand({n}, generator, torch::TensorOptions().dtype(torch::kFloat64));
    Tensor picked = torch::nonzero(u < q).flatten().contiguous();
    const int64_t* data = picked.data_ptr<int64_t>();
    return std::vector<int64_t>(data, data + picked.numel());
  } catch (const std::exception& e) {
    return TorchError("Poisson sampling", e);
  }
}

DpSgdEngine::DpSgdEngine(std::vector<std::pair<std::string, Tensor>> params,
                         const DpSgdOptions& options, uint64_t seed)
    : params_(std::move(params)),
      options_(options),
      seed_(seed),
      generator_(at::detail::createCPUGenerator(seed)),
      sums_(params_.size()) {}

at::Generator DpSgdEngine::NoiseGenerator(const torch::Device& device) {
  if (device.is_cpu()) return generator_;
  if (!device_generator_.defined()) {
    // The device's own generator, seeded from the same (secure) seed: drawing on the CPU and
    // copying costs more than the rest of a GPU step.
    device_generator_ = at::globalContext().defaultGenerator(device);
    std::lock_guard<std::mutex> lock(device_generator_.mutex());
    device_generator_.set_current_seed(seed_);
  }
  return device_generator_;
}

absl::StatusOr<std::unique_ptr<DpSgdEngine>> DpSgdEngine::Create(torch::nn::Module& model,
                                                                 const DpSgdOptions& options) {
  RETURN_IF_ERROR(CheckOptions(options));
  RETURN_IF_ERROR(CheckDpCompatible(model));
  uint64_t seed = options.test_seed;
  if (options.secure_noise) {
    ASSIGN_OR_RETURN(seed, SecureSeed());
  }
  std::vector<std::pair<std::string, Tensor>> params;
  for (const auto& item : model.named_parameters(/*recurse=*/true)) {
    if (item.value().requires_grad()) params.emplace_back(item.key(), item.value());
  }
  return std::unique_ptr<DpSgdEngine>(new DpSgdEngine(std::move(params), options, seed));
}

absl::Status DpSgdEngine::AccumulateMicroBatch(const std::function<Tensor()>& per_sample_loss) {
  try {
    for (auto& param : params_) param.second.mutable_grad() = Tensor();
    std::vector<std::unique_ptr<GradSampleRecord>> records;
    {
      GradSampleTape tape(options_.norm_mode);
      Tensor losses = per_sample_loss();
      if (losses.dim() != 1) {
        return absl::InvalidArgumentError(
            absl::StrCat("DP-SGD: per-sample loss must be [N], got ", losses.dim(), " dims"));
      }
      if (losses.requires_grad()) losses.sum().backward();
      records = tape.TakeRecords();
    }
    for (auto& param : params_) {
      if (param.second.grad().defined()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "DP-SGD: parameter '", param.first, "' got a gradient outside a DP-aware layer"));
      }
    }
    return ClipAndAccumulate(records);
  } catch (const std::exception& e) {
    return TorchError("micro-batch forward/backward", e);
  }
}

absl::StatusOr<std::vector<std::vector<const GradSampleRecord*>>> DpSgdEngine::GroupByLayer(
    const std::vector<std::unique_ptr<GradSampleRecord>>& records) const {
  // A layer called several times in one forward pass (shared weights) yields several records;
  // its per-sample gradient is their sum, so they are clipped together.
  std::unordered_map<const void*, size_t> group_of;
  std::vector<std::vector<const GradSampleRecord*>> groups;
  for (const auto& record : records) {
    if (record->params().empty()) continue;
    const void* key = record->params()[0].unsafeGetTensorImpl();
    auto [it, inserted] = group_of.emplace(key, groups.size());
    if (inserted) groups.emplace_back();
    groups[it->second].push_back(record.get());
    if (record->batch_size() != records[0]->batch_size()) {
      return absl::InvalidArgumentError("DP-SGD: layers saw different batch sizes");
    }
  }
  return groups;
}

absl::Status DpSgdEngine::ClipAndAccumulate(
    const std::vector<std::unique_ptr<GradSampleRecord>>& records) {
  ASSIGN_OR_RETURN(auto groups, GroupByLayer(records));
  if (groups.empty()) return absl::OkStatus();  // nothing trainable was used
  const int64_t n = groups.front().front()->batch_size();
  // Shared layers: their per-sample gradients, summed over calls.
  std::vector<std::vector<Tensor>> shared(groups.size());
  Tensor squared = torch::zeros({n}, torch::TensorOptions().dtype(torch::kFloat64));
  for (size_t g = 0; g < groups.size(); ++g) {
    const auto& group = groups[g];
    if (group.size() == 1) {
      squared += group[0]->SquaredNorms().to(torch::kCPU, torch::kFloat64);
      continue;
    }
    shared[g] = group[0]->PerSampleGrads();
    for (size_t r = 1; r < group.size(); ++r) {
      std::vector<Tensor> more = group[r]->PerSampleGrads();
      for (size_t k = 0; k < more.size(); ++k) shared[g][k] = shared[g][k] + more[k];
    }
    for (const Tensor& grad : shared[g]) {
      squared += grad.flatten(1).pow(2).sum(1).to(torch::kCPU, torch::kFloat64);
    }
  }
  last_norms_ = squared.sqrt();
  const Tensor scale = torch::clamp_max(options_.clip_norm / (last_norms_ + 1e-6), 1.0);
  for (size_t g = 0; g < groups.size(); ++g) {
    const GradSampleRecord& first = *groups[g][0];
    const Tensor c = scale.to(first.params()[0].device(), first.params()[0].scalar_type());
    std::vector<Tensor> sums;
    if (shared[g].empty()) {
      sums = first.ScaledSum(c);
    } else {
      for (const Tensor& grad : shared[g]) {
        sums.push_back(torch::tensordot(c, grad, {0}, {0}));
      }
    }
    RETURN_IF_ERROR(Accumulate(first.params(), sums));
  }
  samples_ += n;
  return absl::OkStatus();
}

absl::Status DpSgdEngine::Accumulate(const std::vector<Tensor>& params,
                                     const std::vector<Tensor>& sums) {
  for (size_t k = 0; k < params.size(); ++k) {
    size_t i = 0;
    while (i < params_.size() && !params_[i].second.is_same(params[k])) ++i;
    if (i == params_.size()) {
      if (!params[k].requires_grad()) continue;  // frozen parameter
      return absl::InvalidArgumentError("DP-SGD: a DP-aware layer outside the model was recorded");
    }
    sums_[i] = sums_[i].defined() ? sums_[i] + sums[k].detach() : sums[k].detach();
  }
  return absl::OkStatus();
}

absl::Status DpSgdEngine::Step(torch::optim::Optimizer& opt) {
  try {
    torch::NoGradGuard no_grad;
    const double noise_std = options_.noise_multiplier * options_.clip_norm;
    GradientReducer* reducer = options_.reducer;
    const bool adds_noise = reducer == nullptr || reducer->rank() == 0;  // once per step
    std::vector<Tensor> grads;
    grads.reserve(params_.size());
    for (size_t i = 0; i < params_.size(); ++i) {
      const Tensor& p = params_[i].second;
      Tensor grad = sums_[i].defined() ? sums_[i] : torch::zeros_like(p);
      if (noise_std > 0 && adds_noise) {
        grad = grad + torch::randn(p.sizes(), NoiseGenerator(p.device()), p.options()) * noise_std;
      }
      grads.push_back(grad.contiguous());
      sums_[i] = Tensor();
    }
    if (reducer != nullptr) RETURN_IF_ERROR(reducer->SumInPlace(grads));
    for (size_t i = 0; i < params_.size(); ++i) {
      params_[i].second.mutable_grad() = grads[i] / options_.expected_batch_size;
    }
    opt.step();
    samples_ = 0;
    return absl::OkStatus();
  } catch (const std::exception& e) {
    return TorchError("noise and optimizer step", e);
  }
}

absl::Status DpSgdStep(torch::nn::Module& model, torch::optim::Optimizer& opt,
                       const std::function<Tensor()>& per_sample_loss,
                       const DpSgdOptions& options) {
  ASSIGN_OR_RETURN(std::unique_ptr<DpSgdEngine> engine, DpSgdEngine::Create(model, options));
  RETURN_IF_ERROR(engine->AccumulateMicroBatch(per_sample_loss));
  return engine->Step(opt);
}

}  // namespace fl
