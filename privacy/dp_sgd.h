// DP-SGD: per-sample clipping of the whole-model gradient, Gaussian noise and
// Poisson sampling, on models built from the DP-aware layers of
// models/dp_layers.h. One forward and one backward pass per micro-batch: the
// layers' backward hands activations and output gradients to a
// GradSampleTape, from which each sample's gradient norm and then the clipped
// sum are computed ("book-keeping"; per layer the cheaper of materialised
// per-sample gradients and ghost norms).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/torch_pch.h"
#include "models/dp_layers.h"

namespace fl {

// Sums tensors over the processes that train one model together at one site (data parallel:
// each process holds a shard of the site's data and takes the same steps). privacy/
// process_group.h has the c10d implementation (Gloo on CPUs).
class GradientReducer {
 public:
  virtual ~GradientReducer() = default;
  virtual int rank() const = 0;
  virtual int world_size() const = 0;
  // Replaces each of `tensors` by its sum over every rank, in place. Every rank calls it with
  // tensors of the same shapes and dtypes in the same order; it returns once all have.
  virtual absl::Status SumInPlace(std::vector<torch::Tensor>& tensors) = 0;
};

struct DpSgdOptions {
  // C: each sample's whole-model gradient is scaled to norm at most C. > 0.
  double clip_norm = 1.0;
  // sigma: the noise added to the clipped sum has standard deviation sigma * C. >= 0.
  double noise_multiplier = 1.0;
  // B = q * dataset size: the noised sum is divided by B (never by the drawn batch size, which
  // would leak it). > 0.
  double expected_batch_size = 1.0;
  // Production: true, the noise generator is seeded from the OS (getrandom). False only in tests,
  // which then get the reproducible noise of `test_seed`.
  bool secure_noise = true;
  uint64_t test_seed = 0;
  // How per-sample norms are computed; kAuto picks the cheaper per layer.
  GradSampleMode norm_mode = GradSampleMode::kAuto;
  // Several processes (null: this one alone): each clips its own samples, rank 0 adds the noise
  // to its clipped sum once, and the sums are added over the ranks, so the step is exactly that
  // of one process over the union of the shards, with noise of variance sigma^2 C^2 (not
  // world_size times that): the accounting does not change. expected_batch_size is then q
  // times the size of all the shards together. Not owned.
  GradientReducer* reducer = nullptr;
};

// OK if `model` can be trained with DP-SGD: no BatchNorm module and no InstanceNorm with
// track_running_stats (FailedPrecondition naming it), and
// every trainable parameter belongs to a DP-aware layer (InvalidArgument naming the parameter
// otherwise: it would be neither clipped nor noised).
absl::Status CheckDpCompatible(torch::nn::Module& model);

// A 64-bit seed from the operating system's CSPRNG.
absl::StatusOr<uint64_t> SecureSeed();

// Poisson sampling: each of the indices 0..n-1 independently with probability q, ascending. The
// result may be empty or larger than q * n. REQUIRES: 0 <= q <= 1, n >= 0; `generator` a CPU
// generator.
absl::StatusOr<std::vector<int64_t>> PoissonSample(int64_t n, double q, at::Generator generator);

// One DP-SGD step, possibly over several micro-batches: AccumulateMicroBatch() any number of times
// (zero included: then the step is pure noise), then Step(). Not thread-safe; the model must not
// be trained by anything else meanwhile.
class DpSgdEngine {
 public:
  // Checks the model (CheckDpCompatible) and the options, seeds the noise generator.
  static absl::StatusOr<std::unique_ptr<DpSgdEngine>> Create(torch::nn::Module& model,
                                                             const DpSgdOptions& options);

  // Runs `per_sample_loss` (forward pass; returns the [N] per-sample losses, N >= 0) and one
  // backward pass under a tape, clips each sample's gradient and adds the clipped sum to the
  // step's accumulator. Parameters' .grad are left undefined.
  absl::Status AccumulateMicroBatch(const std::function<torch::Tensor()>& per_sample_loss);

  // Writes (accumulated clipped sum + N(0, sigma^2 C^2)) / B to every trainable parameter's .grad,
  // calls opt.step() and resets the accumulator. With a reducer, the sum and the noise are over
  // all ranks (each rank must call Step for the same steps).
  absl::Status Step(torch::optim::Optimizer& opt);

  // Samples accumulated since the last Step().
  int64_t samples() const { return samples_; }
  // Per-sample gradient norms (before clipping) of the last micro-batch.
  const torch::Tensor& last_norms() const { return last_norms_; }

 private:
  DpSgdEngine(std::vector<std::pair<std::string, torch::Tensor>> params,
              const DpSgdOptions& options, uint64_t seed);
  absl::StatusOr<std::vector<std::vector<const GradSampleRecord*>>> GroupByLayer(
      const std::vector<std::unique_ptr<GradSampleRecord>>& records) const;
  absl::Status ClipAndAccumulate(const std::vector<std::unique_ptr<GradSampleRecord>>& records);
  absl::Status Accumulate(const std::vector<torch::Tensor>& params,
                          const std::vector<torch::Tensor>& sums);

  std::vector<std::pair<std::string, torch::Tensor>> params_;  // trainable, in model order
  DpSgdOptions options_;
  // The generator noise for a parameter on `device` is drawn from.
  at::Generator NoiseGenerator(const torch::Device& device);

  uint64_t seed_;
  at::Generator generator_;          // CPU
  at::Generator device_generator_;   // the accelerator's, once a parameter lives there
  std::vector<torch::Tensor> sums_;  // per params_; undefined until first accumulated
  int64_t samples_ = 0;
  torch::Tensor last_norms_;
};

// Convenience: one step over one batch (Create + AccumulateMicroBatch + Step).
absl::Status DpSgdStep(torch::nn::Module& model, torch::optim::Optimizer& opt,
                       const std::function<torch::Tensor()>& per_sample_loss,
                       const DpSgdOptions& options);

}  // namespace fl
