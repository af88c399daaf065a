// The autoencoder workload: reconstruct each image; per-sample mean absolute error as the loss,
// evaluated by mean L1 and PSNR on the test split. Needs no labels.
#include <cmath>

#include "client/workload.h"

namespace fl {
namespace workloads_internal {
namespace {

// Mean absolute error per sample, [n].
torch::Tensor PerSampleL1(const torch::Tensor& output, const torch::Tensor& images) {
  TORCH_CHECK(output.sizes() == images.sizes(), "reconstruction has shape ", output.sizes(),
              ", not ", images.sizes());
  return (output - images).abs().flatten(1).mean(1);
}

class AutoencoderEvaluation : public Evaluation {
 public:
  absl::Status Add(const DeviceBatch& batch, const HostBatch&,
                   const torch::Tensor& output) override {
    if (output.sizes() != batch.images.sizes()) {
      return absl::InternalError("the reconstruction's shape differs from the image's");
    }
    torch::Tensor diff = (output - batch.images).flatten(1).to(torch::kFloat64);
    l1_sum_ += diff.abs().mean(1).sum().item<double>();
    torch::Tensor mse = diff.square().mean(1).clamp_min(1e-10);
    psnr_sum_ += (-10.0 * torch::log10(mse)).sum().item<double>();  // peak 1: pixels in [0, 1]
    images_ += batch.n;
    return absl::OkStatus();
  }

  absl::StatusOr<MetricsReport> Finish() const override {
    MetricsReport report;
    report.set_test_images(images_);
    if (images_ == 0) return report;
    Metric* l1 = report.add_metrics();
    l1->set_name("l1");
    l1->set_value(l1_sum_ / images_);
    Metric* psnr = report.add_metrics();
    psnr->set_name("psnr");
    psnr->set_value(psnr_sum_ / images_);
    return report;
  }

 private:
  double l1_sum_ = 0;
  double psnr_sum_ = 0;
  int64_t images_ = 0;
};

class AutoencoderWorkload : public Workload {
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
    return std::make_unique<AutoencoderEvaluation>();
  }
};

}  // namespace

const Workload& Autoencoder() {
  static const auto* workload = new AutoencoderWorkload();
  return *workload;
}

}  // namespace workloads_internal
}  // namespace fl
