// The client's side of a workload (models/spec.h names them): what differs between model
// families on a site, behind one interface, while the local trainer (client/trainer.cc) keeps
// what they share: data loading, the round plan, the optimizer, DP-SGD, the update.
//   - the loss of a batch, per sample for DP-SGD (a sample's loss must depend on that sample
//     alone, so that clipping its gradient bounds its influence) and as one scalar otherwise;
//   - the evaluation on the test split, as a report of named metrics.
// One implementation per file: workload_classification.cc, workload_autoencoder.cc.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "client/trainer_data.h"
#include "common/torch_pch.h"
#include "fl/federation.pb.h"
#include "models/model.h"

namespace fl {

// A batch on the training device.
struct DeviceBatch {
  torch::Tensor images;   // [n, C, H, W] in [0, 1]
  torch::Tensor targets;  // [n, job labels], NaN where unknown; undefined without label columns
  int64_t n = 0;
  int64_t known_targets = 0;  // non-NaN entries of targets
};

// Gathers one evaluation on the test split, batch by batch.
class Evaluation {
 public:
  virtual ~Evaluation() = default;
  // `output` is the model's output for `batch` (eval mode, no gradients).
  virtual absl::Status Add(const DeviceBatch& batch, const HostBatch& host,
                           const torch::Tensor& output) = 0;
  // The report's figures (`test` per label and/or named `metrics`, and `test_images`).
  virtual absl::StatusOr<MetricsReport> Finish() const = 0;
};

class Workload {
 public:
  virtual ~Workload() = default;

  // Whether the batch gives the loss anything to learn from (a classifier's batch without a
  // known target does not).
  virtual bool Learnable(const HostBatch& batch) const = 0;
  // Each sample's loss, [n], from the model's output for the batch.
  virtual torch::Tensor PerSampleLoss(const torch::Tensor& output,
                                      const DeviceBatch& batch) const = 0;
  // The loss a non-private step minimises (a scalar).
  virtual torch::Tensor StepLoss(const torch::Tensor& output, const DeviceBatch& batch) const = 0;
  // An empty evaluation of the job for the site's `labels` (the classifier's train labels).
  virtual std::unique_ptr<Evaluation> StartEvaluation(
      const JobSpec& spec, const std::vector<std::string>& labels) const = 0;
};

// The workload of the job (models/spec.h KindOf).
const Workload& WorkloadFor(const JobSpec& spec);

namespace workloads_internal {
const Workload& Classification();
const Workload& Autoencoder();
}  // namespace workloads_internal

}  // namespace fl
