// The client's side of a workload (models/spec.h names them): what differs between model
// families on a site, behind one interface, while the local trainer (client/trainer.cc) keeps
// what they share: data loading, the round plan, the optimizer, DP-SGD, the update.
//   - the loss of a batch, per sample for DP-SGD (a sample's loss must depend on that sample
//     alone, so that clipping its gradient bounds its influence) and as one scalar otherwise;
//   - the evaluation on the test split, as a report of named metrics.
// A workload runs the model itself (TrainPerSampleLoss, TrainStepLoss, EvalOutput), so that one
// whose model is not `forward(images)` (the variational autoencoder's KL term needs the latent
// moments; the diffusion UNet needs latents, steps and conditions) fits the same trainer; the
// loss of one that is (classification, the plain autoencoder) derives from the output alone
// (ForwardWorkload).
// One implementation per file: workload_classification.cc, workload_autoencoder.cc,
// workload_diffusion.cc (the variational autoencoder beside the plain one).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "client/trainer_data.h"
#include "common/torch_pch.h"
#include "fl/federation.pb.h"
#include "models/diffusion.h"
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

// What a step (or an evaluation) may need besides the model and the batch.
struct StepContext {
  const JobSpec& spec;
  // The workload's own randomness (a CPU generator): seeded from the round in training, fixed
  // in evaluation, so that a run is reproducible and evaluations compare across rounds. (DP-SGD's
  // sampling and noise have their own generators.)
  at::Generator generator;
  // A diffusion job's frozen autoencoder (in eval mode, on the training device, parameters not
  // requiring gradients); null for other workloads.
  std::shared_ptr<KlVaeImpl> frozen_autoencoder;
};

class Workload {
 public:
  virtual ~Workload() = default;

  // Whether the batch gives the loss anything to learn from (a classifier's batch without a
  // known target does not).
  virtual bool Learnable(const HostBatch& batch) const = 0;
  // Each sample's loss, [n], for DP-SGD: sample i's value must depend on sample i alone. Runs
  // the model in training mode; anything run besides it (a frozen model) must leave no
  // autograd graph, so that the DP engine's tape records the trained model's layers only.
  virtual torch::Tensor TrainPerSampleLoss(ModelImpl& model, const DeviceBatch& batch,
                                           StepContext& context) const = 0;
  // The loss a non-private step minimises (a scalar).
  virtual torch::Tensor TrainStepLoss(ModelImpl& model, const DeviceBatch& batch,
                                      StepContext& context) const = 0;
  // What the evaluation gets for `batch` (model in eval mode, no gradients); by default
  // model.forward(batch.images).
  virtual torch::Tensor EvalOutput(ModelImpl& model, const DeviceBatch& batch,
                                   StepContext& context) const;
  // Whether the job trains on the frozen autoencoder of another job
  // (DiffusionWorkload.autoencoder_job): StepContext.frozen_autoencoder must then be set.
  virtual bool NeedsFrozenAutoencoder() const { return false; }
  // An empty evaluation of the job for the site's `labels` (the classifier's train labels).
  virtual std::unique_ptr<Evaluation> StartEvaluation(
      const JobSpec& spec, const std::vector<std::string>& labels) const = 0;
};

// A workload whose model maps the images to an output, model.forward(batch.images), and whose
// losses are functions of that output and the batch.
class ForwardWorkload : public Workload {
 public:
  // Each sample's loss, [n], from the model's output for the batch.
  virtual torch::Tensor PerSampleLoss(const torch::Tensor& output,
                                      const DeviceBatch& batch) const = 0;
  // The loss a non-private step minimises (a scalar).
  virtual torch::Tensor StepLoss(const torch::Tensor& output, const DeviceBatch& batch) const = 0;

  torch::Tensor TrainPerSampleLoss(ModelImpl& model, const DeviceBatch& batch,
                                   StepContext&) const final {
    return PerSampleLoss(model.forward(batch.images), batch);
  }
  torch::Tensor TrainStepLoss(ModelImpl& model, const DeviceBatch& batch,
                              StepContext&) const final {
    return StepLoss(model.forward(batch.images), batch);
  }
};

// The workload of the job (models/spec.h KindOf; a variational autoencoder has its own).
const Workload& WorkloadFor(const JobSpec& spec);

namespace workloads_internal {
const Workload& Classification();
const Workload& Autoencoder();
const Workload& VariationalAutoencoder();
const Workload& Diffusion();
// SampleLatent with noise from a CPU generator whatever the moments' device (the same draws on
// CPU and CUDA).
torch::Tensor SampleLatentWith(const LatentMoments& moments, at::Generator cpu_generator);
}  // namespace workloads_internal

}  // namespace fl
