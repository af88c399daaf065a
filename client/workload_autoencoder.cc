// The autoencoder workloads: reconstruct each image, evaluated by mean L1 and PSNR (and SSIM for
// the variational one) on the test split. Needs no labels. The plain autoencoder's loss is the
// per-sample mean absolute error; the variational one (Medfusion's KL-VAE) decodes a sample of
// the latent distribution and adds (1 - SSIM) and the KL term (models/diffusion.h
// VaePerSampleLoss).
#include <cmath>

#include "client/workload.h"
#include "models/spec.h"

namespace fl {
namespace workloads_internal {
namespace {

// Mean absolute error per sample, [n].
torch::Tensor PerSampleL1(const torch::Tensor& output, const torch::Tensor& images) {
  TORCH_CHECK(output.sizes() == images.sizes(), "reconstruction has shape ", output.sizes(),
              ", not ", images.sizes());
  return (output - images).abs().flatten(1).mean(1);
}

void AddMetric(MetricsReport& report, const std::string& name, double value) {
  Metric* metric = report.add_metrics();
  metric->set_name(name);
  metric->set_value(value);
}

class AutoencoderEvaluation : public Evaluation {
 public:
  explicit AutoencoderEvaluation(bool with_ssim) : with_ssim_(with_ssim) {}

  absl::Status Add(const DeviceBatch& batch, const HostBatch&,
                   const torch::Tensor& output) override {
    if (output.sizes() != batch.images.sizes()) {
      return absl::InternalError("the reconstruction's shape differs from the image's");
    }
    torch::Tensor diff = (output - batch.images).flatten(1).to(torch::kFloat64);
    l1_sum_ += diff.abs().mean(1).sum().item<double>();
    torch::Tensor mse = diff.square().mean(1).clamp_min(1e-10);
    psnr_sum_ += (-10.0 * torch::log10(mse)).sum().item<double>();  // peak 1: pixels in [0, 1]
    if (with_ssim_) {
      ssim_sum_ += Ssim(output.clamp(0.0, 1.0), batch.images).sum().item<double>();
    }
    images_ += batch.n;
    return absl::OkStatus();
  }

  absl::StatusOr<MetricsReport> Finish() const override {
    MetricsReport report;
    report.set_test_images(images_);
    if (images_ == 0) return report;
    AddMetric(report, "l1", l1_sum_ / images_);
    AddMetric(report, "psnr", psnr_sum_ / images_);
    if (with_ssim_) AddMetric(report, "ssim", ssim_sum_ / images_);
    return report;
  }

 private:
  const bool with_ssim_;
  double l1_sum_ = 0;
  double psnr_sum_ = 0;
  double ssim_sum_ = 0;
  int64_t images_ = 0;
};

class AutoencoderWorkload : public ForwardWorkload {
 public:
  bool Learnable(const HostBatch& batch) const override { return batch.n > 0; }
  torch::Tensor PerSampleLoss(const torch::Tensor& output,
                              const DeviceBatch& batch) const override {
    return PerSampleL1(output, batch.images);
  }
  torch::Tensor StepLoss(const torch::Tensor& output, const DeviceBatch& batch) const override {
    return PerSampleL1(output, batch.images).mean();
  }
  std::unique_ptr<Evaluation> StartEvaluation(const JobSpec&,
                                              const std::vector<std::string>&) const override {
    return std::make_unique<AutoencoderEvaluation>(/*with_ssim=*/false);
  }
};

// Medfusion's KL-VAE: the loss decodes a sample of q(z|x) (drawn from the step's generator);
// the evaluation the deterministic reconstruction, forward(x) = Decode(Encode(x).mean).
class VariationalAutoencoderWorkload : public Workload {
 public:
  bool Learnable(const HostBatch& batch) const override { return batch.n > 0; }
  torch::Tensor TrainPerSampleLoss(ModelImpl& model, const DeviceBatch& batch,
                                   StepContext& context) const override {
    auto& vae = dynamic_cast<KlVaeImpl&>(model);
    const LatentMoments moments = vae.Encode(batch.images);
    const torch::Tensor z = SampleLatentWith(moments, context.generator);
    return VaePerSampleLoss(vae.Decode(z), batch.images, moments, KlWeightFor(context.spec)).total;
  }
  torch::Tensor TrainStepLoss(ModelImpl& model, const DeviceBatch& batch,
                              StepContext& context) const override {
    return TrainPerSampleLoss(model, batch, context).mean();
  }
  std::unique_ptr<Evaluation> StartEvaluation(const JobSpec&,
                                              const std::vector<std::string>&) const override {
    return std::make_unique<AutoencoderEvaluation>(/*with_ssim=*/true);
  }
};

}  // namespace

torch::Tensor SampleLatentWith(const LatentMoments& moments, at::Generator cpu_generator) {
  if (moments.mean.is_cpu()) return SampleLatent(moments, cpu_generator);
  const torch::Tensor noise = at::normal(0.0, 1.0, moments.mean.sizes(), cpu_generator,
                                         torch::TensorOptions().dtype(moments.mean.scalar_type()))
                                  .to(moments.mean.device());
  return moments.mean + torch::exp(0.5 * moments.logvar) * noise;
}

const Workload& Autoencoder() {
  static const auto* workload = new AutoencoderWorkload();
  return *workload;
}

const Workload& VariationalAutoencoder() {
  static const auto* workload = new VariationalAutoencoderWorkload();
  return *workload;
}

}  // namespace workloads_internal
}  // namespace fl
