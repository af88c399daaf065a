// Streaming weighted aggregation of model updates and the server optimizers (FedAvg, FedAdam,
// FedYogi). Torch-free: it works on float buffers so the coordinator's memory stays at a small
// multiple of one model whatever the number of sites.
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/env.h"
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

// What an update from a site with `train_size` training images weighs in the mean (Weighting).
uint64_t UpdateWeight(Weighting weighting, uint64_t train_size);

// The server optimizer's state, kept across rounds: FedAdam/FedYogi's moment estimates (m, v);
// FedAvg with server momentum's velocity (m alone, v empty).
struct OptimizerMoments {
  TensorList m, v;
};
// Whether `optimizer` keeps state across rounds (OptimizerMoments).
bool HasServerState(const ServerOptimizer& optimizer);

// Where the moments belonging to the checkpoint at `checkpoint_path` are kept.
std::string MomentsPath(const std::string& checkpoint_path);
// Writes `moments` atomically as safetensors (tensors "m.<name>" and "v.<name>").
absl::Status WriteMoments(const std::string& path, const OptimizerMoments& moments,
                          Env* env = Env::Default());
// Reads moments written by WriteMoments; each must match the shape of `model`'s tensor. A file
// without "v." tensors (a velocity) gives an empty v.
absl::StatusOr<OptimizerMoments> ReadMoments(const std::string& path, const TensorList& model,
                                             Env* env = Env::Default());

// Exact, order-independent weighted sum of updates. Backbone tensors are averaged over all
// updates; a head row is averaged only over the updates whose labels include that row's label.
// Robust rules (median, trimmed mean; server/robust_aggregator.h) hand their result in through
// FromAverage.
//
// Why fixed point: a float sum depends on the order of its terms, so the same updates arriving
// in another order, or folded again from their spools after a crash, gave another model. Each
// value is turned into an integer, trunc(value × weight × scale × 2^kFractionBits), by a rule
// that depends on that update alone, and the integers are summed exactly; integer addition does
// not care about order. The mean is taken once, at NextModel.
//
// Memory: each sum is held as a 64-bit low word per shared parameter (8 bytes: twice the model)
// and a high word kept apart, sparsely, only for the elements whose sum has left the 64-bit range
// (|sum| >= 2^63 in fixed point: |weighted sum| >= 2^23, which a model update does not reach
// unless values or weights are huge). Each (high, low) pair is the unique representation of its
// integer, so the bytes of the result do not depend on which path an addition took. A fold is a
// read-modify-write of one 64-bit word per value.
class Aggregator {
 public:
  // Resolution of the sum: 2^-40 (about 1e-12) of one sample's weight, far below a float's
  // resolution at any parameter size that matters.
  static constexpr int kFractionBits = 40;
  // Largest |weight × value| one update may contribute (about 1.1e15); with kMaxUpdates terms
  // the sum stays within 2^(50 + 40 + 30) < 2^127.
  static constexpr double kMaxContribution = 0x1p50;
  static constexpr uint64_t kMaxWeight = uint64_t{1} << 32;
  static constexpr size_t kMaxUpdates = size_t{1} << 30;

  Aggregator(UpdateLayout layout, size_t num_labels);

  // An aggregator that holds an already combined update (e.g. a coordinate-wise median), so
  // that Apply runs the server optimizer on it exactly as on a mean. `average` has one buffer
  // per shared tensor of `layout`; `row_covered[r]` false leaves head row r unchanged;
  // `updates` is how many updates it combines. INVALID_ARGUMENT if the sizes do not match.
  static absl::StatusOr<Aggregator> FromAverage(UpdateLayout layout, size_t num_labels,
                                                std::vector<std::vector<float>> average,
                                                const std::vector<bool>& row_covered,
                                                size_t updates);

  // OK when every value is finite and |weight × value| <= kMaxContribution, i.e. when Fold will
  // take these values from an update of `weight` (at any scale <= 1). INVALID_ARGUMENT naming
  // the first value that is not. For checking an update before anything of it is folded.
  static absl::Status CheckValues(uint64_t weight, const float* data, size_t n);

  // Starts folding one update with `weight` (its sample count, 1..kMaxWeight) carrying head
  // rows `label_rows`; its values are multiplied by `scale` (norm clipping, in (0, 1]) without
  // changing its weight. INVALID_ARGUMENT for a weight or scale out of range, or past
  // kMaxUpdates updates; FAILED_PRECONDITION inside another update or on a spent aggregator.
  absl::Status BeginUpdate(uint64_t weight, std::vector<size_t> label_rows, double scale = 1.0);
  // Adds `n` floats of shared tensor `index` at element `offset` of the current update.
  // INVALID_ARGUMENT for a non-finite value or one beyond kMaxContribution, and nothing of
  // this call is added; but earlier calls of the same update were, so after an error the
  // aggregate holds part of an update and must not be applied (check the update with
  // CheckValues first where that matters). OUT_OF_RANGE for an index or range outside the
  // layout; FAILED_PRECONDITION outside BeginUpdate/EndUpdate.
  absl::Status Fold(size_t index, uint64_t offset, const float* data, size_t n);
  void EndUpdate();

  size_t updates() const { return updates_; }
  const UpdateLayout& layout() const { return layout_; }

  // The next global model: the averaged update applied to `global` with the job's server
  // optimizer; `moments` carries FedAdam/FedYogi state across rounds. Entries that no update
  // covered (head rows of labels nobody trained) stay unchanged. Each sum buffer is released
  // as its tensor of the next model is built (memory: `global` plus the sums plus one tensor),
  // so the aggregator is spent: a second call fails with FAILED_PRECONDITION. The result
  // depends only on the set of updates folded, never on their order.
  absl::StatusOr<TensorList> NextModel(const ServerOptimizer& optimizer, const TensorList& global,
                                       OptimizerMoments* moments);
  // NextModel, replacing `global`.
  absl::Status Apply(const ServerOptimizer& optimizer, TensorList& global,
                     OptimizerMoments* moments);

 private:
  // Calls `fn(start, length)` for each run of elements [0, n) of a chunk at `offset` of shared
  // tensor `index` that the current update folds (all of a backbone tensor; the rows of its
  // labels in a head), until `fn` returns false.
  template <typename Fn>
  void ForEachRun(size_t index, uint64_t offset, size_t n, Fn&& fn) const;

  UpdateLayout layout_;
  size_t num_labels_;
  // Weighted mean: exact fixed-point sums, one buffer of low words per shared tensor, and the
  // high words of the few elements whose sums do not fit in 64 bits (element -> high word; the
  // sum is high × 2^64 + low, low signed).
  std::vector<std::vector<int64_t>> sums_;
  std::vector<std::unordered_map<uint64_t, int64_t>> high_;
  // Sums of the weights (at most kMaxWeight × kMaxUpdates < 2^63, so exact).
  uint64_t total_weight_ = 0;
  std::vector<uint64_t> label_weight_;  // per label row
  // FromAverage: the combined update itself (sums_ stays empty), every weight 1 or 0.
  std::vector<std::vector<float>> average_;
  bool from_average_ = false;
  // Current update.
  bool in_update_ = false;
  uint64_t weight_ = 0;
  double multiplier_ = 0;  // weight × scale × 2^kFractionBits
  std::vector<bool> row_on_;
  size_t updates_ = 0;
  bool spent_ = false;
};

// The float fold of earlier versions, sum[i] += weight * data[i]: order-dependent, kept as the
// benchmark's baseline.
void AxpyFloat(float weight, const float* data, float* sum, size_t n);

}  // namespace fl
