// Local training and evaluation of a job's model on a site's data, with LibTorch (CUDA when
// available and allowed, else CPU). Decoded images are cached in memory; decoding runs on
// loader threads in parallel with training.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "client/dataset.h"
#include "common/tensor.h"
#include "fl/config.pb.h"
#include "fl/federation.pb.h"

namespace fl {

class GradientReducer;  // privacy/dp_sgd.h

// Decodes one sample's image to size x size floats in [0, 1] (DecodeDicom by default).
using ImageLoader =
    std::function<absl::StatusOr<std::vector<float>>(const Sample& sample, int size)>;

// A finished job's model that another job builds on: a diffusion job's frozen autoencoder.
struct FrozenModel {
  JobSpec spec;        // the job that trained it (its validated spec)
  TensorList weights;  // the model, every tensor of it
};
// The model of the finished job `job_id`.
using FrozenModelSource = std::function<absl::StatusOr<FrozenModel>(const std::string& job_id)>;

struct TrainerOptions {
  std::string device = "auto";  // "auto", "cpu", "cuda"
  int loader_threads = 2;
  // Where private heads are kept between rounds (HEAD_MODE_SITE); empty keeps them in memory.
  std::string state_dir;
  // Empty: decode the sample's DICOM file with DecodeDicom.
  ImageLoader loader;
  // FOR TESTS ONLY: non-zero makes DP-SGD's Poisson sampling and noise reproducible from this
  // seed (and the job and round). 0, the only value for production, seeds both from the OS CSPRNG.
  uint64_t dp_test_seed = 0;
  // Where a diffusion job's frozen autoencoder (DiffusionWorkload.autoencoder_job) comes from.
  // Unset: such a job fails with FAILED_PRECONDITION. The daemon reads its FrozenModelCache,
  // which it fills from the task before training or evaluating.
  FrozenModelSource frozen_models;
  // Checked before every step; when it returns true, Train stops with CANCELLED (the daemon is
  // shutting down). Unset: never.
  std::function<bool()> cancelled;
  // Data parallel over several processes of this site (privacy/process_group.h; not owned):
  // this trainer holds one shard of the site's train split (the `data` it was created with),
  // `site_train_size` is the whole split's size, and every process trains the same job and
  // round at once. DP-SGD only so far: each process Poisson-samples its shard at the plan's q
  // (over the whole split: the same sampling), clips its samples, and the engine sums the
  // clipped gradients over the processes with the noise added once (DpSgdOptions.reducer), so
  // every process ends with the same model. Null: one process.
  GradientReducer* reducer = nullptr;
  int64_t site_train_size = 0;
};

struct TrainResult {
  // New local weights minus `global`, for the tensors this site shares: everything in label
  // mode (head rows of labels this site does not train stay zero), the backbone only in site mode.
  TensorList update;
  uint64_t num_samples = 0;  // samples trained on over all local steps (decodable ones)
  // Mean training loss: over the local steps; with DP, over the samples (per-sample loss).
  double loss = 0;
  std::vector<std::string> labels;  // head rows (labels) the update carries
};

// Local training's progress: steps done of the round's total, and the samples trained on so
// far (counts only).
struct TrainProgress {
  int steps_done = 0;
  int steps_total = 0;
  uint64_t samples = 0;
};
// Called on the training thread after each local step; keep it quick.
using TrainProgressFn = std::function<void(const TrainProgress&)>;

class LocalTrainer {
 public:
  virtual ~LocalTrainer() = default;

  // Trains `spec.local_steps` steps from `global` on the train split with the job's workload
  // (client/workload.h); a classifier uses only the columns of `train_labels` (a missing value is
  // masked out of the loss, never treated as negative). `progress` (may be empty) hears of each
  // step.
  virtual absl::StatusOr<TrainResult> Train(const std::string& job_id, const JobSpec& spec,
                                            const std::vector<std::string>& train_labels,
                                            const TensorList& global, uint32_t round,
                                            const TrainProgressFn& progress) = 0;
  // The same without progress.
  absl::StatusOr<TrainResult> Train(const std::string& job_id, const JobSpec& spec,
                                    const std::vector<std::string>& train_labels,
                                    const TensorList& global, uint32_t round) {
    return Train(job_id, spec, train_labels, global, round, TrainProgressFn());
  }

  // The workload's evaluation of the model `weights` on the test split (with this site's private
  // head in site mode): the classifier's AUROC per label of `train_labels` in `test`, other
  // workloads' named `metrics`, and `test_images`; job_id, round and train_loss are left unset.
  virtual absl::StatusOr<MetricsReport> Evaluate(const std::string& job_id, const JobSpec& spec,
                                                 const std::vector<std::string>& train_labels,
                                                 const TensorList& weights) = 0;

  // "cuda:<name>" or "cpu:<n> threads".
  virtual std::string Hardware() const = 0;
};

absl::StatusOr<std::unique_ptr<LocalTrainer>> CreateLocalTrainer(const Dataset& data,
                                                                 const TrainerOptions& options);

// Area under the ROC curve of `scores` against binary `targets` (ties counted half). Returns NaN
// when either class is absent.
double Auroc(const std::vector<float>& scores, const std::vector<float>& targets);
// The ROC curve of `scores` against `targets` (NaN ones left out) at most `max_points` points
// from (0, 0) to (1, 1): thresholds at quantiles of the scores, so that no step of the curve
// moves on fewer than n / (max_points - 1) images (tied scores move together). Empty unless both
// classes are present. REQUIRES: max_points >= 2.
std::vector<RocPoint> RocCurve(const std::vector<float>& scores, const std::vector<float>& targets,
                               int max_points = 21);

}  // namespace fl
