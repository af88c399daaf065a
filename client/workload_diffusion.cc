// The diffusion workload (Medfusion's latent diffusion, models/diffusion.h): the UNet learns to
// predict the noise added to the latents that the job's frozen autoencoder gives each image,
// conditioned on the job's findings as this site labels them (a finding it does not label, or a
// missing value, is "unknown", never negative). Every site trains, whatever labels it has.
// Evaluated by the mean absolute error of the predicted noise (eps-L1) at fixed steps with fixed
// noise, a figure that falls as the model learns and compares across rounds; FID and sample
// quality need sampling and are flctl's (not built yet).
#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/workload.h"
#include "models/spec.h"

namespace fl {
namespace workloads_internal {
namespace {

// The steps evaluated, in thousandths of T (Medfusion's T = 1000: steps 100, 500 and 900).
constexpr int kEvalPermille[] = {100, 500, 900};

std::vector<int64_t> EvalSteps(int64_t T) {
  std::vector<int64_t> steps;
  for (int permille : kEvalPermille) steps.push_back(std::min(T - 1, permille * T / 1000));
  return steps;
}

NoiseSchedule ScheduleOf(const JobSpec& spec) {
  const DiffusionProcess p = DiffusionProcessFor(spec);
  return ScaledLinearSchedule(p.timesteps, p.beta_start, p.beta_end);
}

// A sample of each image's latent under the frozen autoencoder. Without an autograd graph: the
// frozen model is not trained, and none of its layers may reach the DP engine's tape.
torch::Tensor EncodeLatents(StepContext& context, const torch::Tensor& images) {
  TORCH_CHECK(context.frozen_autoencoder != nullptr,
              "a diffusion step without its frozen autoencoder");
  torch::NoGradGuard no_grad;
  const LatentMoments moments = context.frozen_autoencoder->Encode(images);
  return SampleLatentWith(moments, context.generator);
}

// The batch's conditions over the job's findings; undefined (all unknown) when the batch has
// no label columns.
torch::Tensor ConditionOf(const DeviceBatch& batch, int64_t findings) {
  if (findings == 0 || !batch.targets.defined()) return {};
  TORCH_CHECK(batch.targets.size(1) == findings, "targets of ", batch.targets.size(1),
              " labels for a condition over ", findings, " findings");
  return ConditionFromTargets(batch.targets);
}

class DiffusionEvaluation : public Evaluation {
 public:
  explicit DiffusionEvaluation(std::vector<int64_t> steps)
      : steps_(std::move(steps)), sums_(steps_.size(), 0.0) {}

  // `output`: [n, steps] eps-L1 per sample and evaluated step.
  absl::Status Add(const DeviceBatch& batch, const HostBatch&,
                   const torch::Tensor& output) override {
    if (output.dim() != 2 || output.size(0) != batch.n ||
        output.size(1) != static_cast<int64_t>(steps_.size())) {
      return absl::InternalError("the diffusion evaluation's output has the wrong shape");
    }
    torch::Tensor per_step = output.to(torch::kCPU, torch::kFloat64).sum(0);
    for (size_t k = 0; k < steps_.size(); ++k) {
      sums_[k] += per_step[static_cast<int64_t>(k)].item<double>();
    }
    images_ += batch.n;
    return absl::OkStatus();
  }

  absl::StatusOr<MetricsReport> Finish() const override {
    MetricsReport report;
    report.set_test_images(images_);
    if (images_ == 0) return report;
    double mean = 0;
    for (size_t k = 0; k < steps_.size(); ++k) {
      Metric* metric = report.add_metrics();
      metric->set_name(absl::StrCat("eps_l1_t", steps_[k]));
      metric->set_value(sums_[k] / images_);
      mean += metric->value() / steps_.size();
    }
    Metric* metric = report.add_metrics();
    metric->set_name("eps_l1");  // models/spec.h SelectionFor
    metric->set_value(mean);
    return report;
  }

 private:
  const std::vector<int64_t> steps_;
  std::vector<double> sums_;
  int64_t images_ = 0;
};

class DiffusionWorkload : public Workload {
 public:
  bool Learnable(const HostBatch& batch) const override { return batch.n > 0; }
  bool NeedsFrozenAutoencoder() const override { return true; }

  torch::Tensor TrainPerSampleLoss(ModelImpl& model, const DeviceBatch& batch,
                                   StepContext& context) const override {
    auto& unet = dynamic_cast<LatentUNetImpl&>(model);
    const torch::Tensor z0 = EncodeLatents(context, batch.images);
    return DiffusionPerSampleLoss(unet, ScheduleOf(context.spec), z0,
                                  ConditionOf(batch, unet.num_findings()), context.generator,
                                  DiffusionProcessFor(context.spec).condition_dropout);
  }
  torch::Tensor TrainStepLoss(ModelImpl& model, const DeviceBatch& batch,
                              StepContext& context) const override {
    return TrainPerSampleLoss(model, batch, context).mean();
  }

  // [n, steps]: each sample's eps-L1 at each evaluated step, with its own condition (no
  // dropout) and noise from the context's fixed generator.
  torch::Tensor EvalOutput(ModelImpl& model, const DeviceBatch& batch,
                           StepContext& context) const override {
    auto& unet = dynamic_cast<LatentUNetImpl&>(model);
    const NoiseSchedule schedule = ScheduleOf(context.spec);
    const torch::Tensor z0 = EncodeLatents(context, batch.images);
    const torch::Tensor condition = ConditionOf(batch, unet.num_findings());
    std::vector<torch::Tensor> columns;
    for (int64_t step : EvalSteps(schedule.steps())) {
      const torch::Tensor t = torch::full({batch.n}, step, torch::kLong);
      const torch::Tensor eps = at::normal(0.0, 1.0, z0.sizes(), context.generator,
                                           torch::TensorOptions().dtype(torch::kFloat32))
                                    .to(z0.device(), z0.scalar_type());
      const torch::Tensor z_t = QSample(schedule, z0, t, eps);
      const torch::Tensor predicted = unet.Denoise(z_t, t.to(z0.device()), condition);
      columns.push_back((predicted - eps).abs().flatten(1).mean(1));
    }
    return torch::stack(columns, 1);
  }

  std::unique_ptr<Evaluation> StartEvaluation(const JobSpec& spec,
                                              const std::vector<std::string>&) const override {
    return std::make_unique<DiffusionEvaluation>(EvalSteps(DiffusionProcessFor(spec).timesteps));
  }
};

}  // namespace

const Workload& Diffusion() {
  static const auto* workload = new DiffusionWorkload();
  return *workload;
}

}  // namespace workloads_internal
}  // namespace fl
