// Streaming weighted aggregation of model updates and the server optimizers (FedAvg, FedAdam,
// FedYogi). Torch-free: it works on float buffers so the coordinator's memory stays at a small
// multiple of one model whatever the number of sites.
#pragma once

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/tensor.h"
#include "common/tensor_stream.h"
#include "fl/config.pb.h"

namespace fl {

// Which tensors an update carries and which are label heads (one row per label of the job).
struct UpdateLayout {
  std::vector<TensorMeta> shared;    // tensors in an update, in order
  std::vector<size_t> global_index;  // index of each shared tensor in the global model
  std::vector<bool> is_head;         // true: row r of the tensor belongs to label r
};

// Label mode: every tensor is shared and tensors under `head_prefix` are heads. Site mode: heads
// are private, so only the backbone is shared.
UpdateLayout MakeLayout(const TensorList& global, const std::string& head_prefix, HeadMode mode,
                        size_t num_labels);

// The server optimizer's moment estimates (FedAdam/FedYogi), kept across rounds.
struct OptimizerMoments {
  TensorList m, v;
};

// Where the moments belonging to the checkpoint at `checkpoint_path` are kept.
std::string MomentsPath(const std::string& checkpoint_path);
// Writes `moments` atomically as safetensors (tensors "m.<name>" and "v.<name>").
absl::Status WriteMoments(const std::string& path, const OptimizerMoments& moments);
// Reads moments written by WriteMoments; each must match the shape of `model`'s tensor.
absl::StatusOr<OptimizerMoments> ReadMoments(const std::string& path, const TensorList& model);

// Running weighted sum of updates. Backbone tensors are averaged over all updates; a head row is
// averaged only over the updates whose labels include that row's label. Robust rules (median,
// trimmed mean; server/robust_aggregator.h) hand their result in through FromAverage.
class Aggregator {
 public:
  Aggregator(UpdateLayout layout, size_t num_labels);

  // An aggregator that holds an already combined update (e.g. a coordinate-wise median), so
  // that Apply runs the server optimizer on it exactly as on a mean. `average` has one buffer
  // per shared tensor of `layout`; `row_covered[r]` false leaves head row r unchanged;
  // `updates` is how many updates it combines. INVALID_ARGUMENT if the sizes do not match.
  static absl::StatusOr<Aggregator> FromAverage(UpdateLayout layout, size_t num_labels,
                                                std::vector<std::vector<float>> average,
                                                const std::vector<bool>& row_covered,
                                                size_t updates);

  // Starts folding one update with `weight` (its sample count) carrying head rows `label_rows`;
  // its values are multiplied by `scale` (norm clipping) without changing its weight.
  void BeginUpdate(double weight, std::vector<size_t> label_rows, double scale = 1.0);
  // Adds `n` floats of shared tensor `index` at element `offset` of the current update.
  void Fold(size_t index, uint64_t offset, const float* data, size_t n);
  void EndUpdate();

  size_t updates() const { return updates_; }
  const UpdateLayout& layout() const { return layout_; }

  // The next global model: the averaged update applied to `global` with the job's server
  // optimizer; `moments` carries FedAdam/FedYogi state across rounds. Entries that no update
  // covered (head rows of labels nobody trained) stay unchanged. The next model is built in the
  // aggregator's own sum buffers (memory: `global` plus the sums), so the aggregator is spent:
  // a second call fails with FAILED_PRECONDITION.
  absl::StatusOr<TensorList> NextModel(const ServerOptimizer& optimizer, const TensorList& global,
                                       OptimizerMoments* moments);
  // NextModel, replacing `global`.
  absl::Status Apply(const ServerOptimizer& optimizer, TensorList& global,
                     OptimizerMoments* moments);

 private:
  Aggregator(UpdateLayout layout, size_t num_labels, std::vector<std::vector<float>> sums);

  UpdateLayout layout_;
  size_t num_labels_;
  std::vector<std::vector<float>> sums_;
  double total_weight_ = 0;
  std::vector<double> label_weight_;  // per label row
  // Current update.
  double weight_ = 0;
  double scale_ = 1.0;
  std::vector<bool> row_on_;
  size_t updates_ = 0;
};

// The fold kernel: sum[i] += weight * data[i]. Exposed for the benchmark.
void AxpyFloat(float weight, const float* data, float* sum, size_t n);

}  // namespace fl
