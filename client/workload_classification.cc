// The classification workload: per-label binary cross-entropy with unknown labels masked out,
// evaluated by AUROC per label.
#include <cmath>

#include "absl/strings/str_cat.h"
#include "client/workload.h"

namespace fl {
namespace workloads_internal {
namespace {

namespace F = torch::nn::functional;

// BCE-with-logits of each (sample, label) whose target is known (NaN: unknown, weight 0), [n, L]
// unreduced, or summed.
torch::Tensor MaskedBce(
    const torch::Tensor& logits, const torch::Tensor& targets,
    torch::nn::functional::BinaryCrossEntropyWithLogitsFuncOptions::reduction_t reduction) {
  TORCH_CHECK(logits.sizes() == targets.sizes(), "model output has shape ", logits.sizes(),
              ", not ", targets.sizes());
  torch::Tensor known = torch::isnan(targets).logical_not();
  return F::binary_cross_entropy_with_logits(
      logits, torch::where(known, targets, torch::zeros_like(targets)),
      F::BinaryCrossEntropyWithLogitsFuncOptions()
          .weight(known.to(torch::kFloat32))
          .reduction(reduction));
}

class ClassificationEvaluation : public Evaluation {
 public:
  ClassificationEvaluation(const JobSpec& spec, std::vector<std::string> labels)
      : spec_(spec), labels_(std::move(labels)), table_(spec.labels_size()) {}

  absl::Status Add(const DeviceBatch&, const HostBatch& host,
                   const torch::Tensor& output) override {
    torch::Tensor probs = torch::sigmoid(output).to(torch::kCPU).contiguous();
    if (probs.dim() != 2) return absl::InternalError("model output is not a matrix");
    return table_.Add(host, probs.data_ptr<float>(), probs.size(0), probs.size(1));
  }

  absl::StatusOr<MetricsReport> Finish() const override {
    MetricsReport report;
    for (LabelMetric& m : table_.Metrics(spec_, labels_)) *report.add_test() = std::move(m);
    report.set_test_images(table_.images);
    return report;
  }

 private:
  const JobSpec spec_;
  const std::vector<std::string> labels_;
  ScoreTable table_;
};

class ClassificationWorkload : public ForwardWorkload {
 public:
  bool Learnable(const HostBatch& batch) const override {
    return batch.n > 0 && batch.known_targets > 0;
  }
  // Summed over the sample's known targets, not averaged, so that a sample's gradient does not
  // grow as its labels go missing.
  torch::Tensor PerSampleLoss(const torch::Tensor& output,
                              const DeviceBatch& batch) const override {
    return MaskedBce(output, batch.targets, torch::kNone).sum(1);
  }
  torch::Tensor StepLoss(const torch::Tensor& output, const DeviceBatch& batch) const override {
    return MaskedBce(output, batch.targets, torch::kSum) / static_cast<double>(batch.known_targets);
  }
  std::unique_ptr<Evaluation> StartEvaluation(
      const JobSpec& spec, const std::vector<std::string>& labels) const override {
    return std::make_unique<ClassificationEvaluation>(spec, labels);
  }
};

}  // namespace

const Workload& Classification() {
  static const auto* workload = new ClassificationWorkload();
  return *workload;
}

}  // namespace workloads_internal

const Workload& WorkloadFor(const JobSpec& spec) {
  switch (KindOf(spec)) {
    case WorkloadKind::kAutoencoder:
      return spec.autoencoder().variational() ? workloads_internal::VariationalAutoencoder()
                                              : workloads_internal::Autoencoder();
    case WorkloadKind::kDiffusion:
      return workloads_internal::Diffusion();
    case WorkloadKind::kClassification:
      break;
  }
  return workloads_internal::Classification();
}

torch::Tensor Workload::EvalOutput(ModelImpl& model, const DeviceBatch& batch, StepContext&) const {
  return model.forward(batch.images);
}

}  // namespace fl
