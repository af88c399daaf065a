// The torch-free arithmetic of a training round on a site: which dataset column each of the
// job's labels trains on, the round's seed, and the update sent back (local minus global).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/tensor.h"
#include "fl/config.pb.h"

namespace fl {

// Per job label: the dataset column it trains/evaluates on, or -1 when it is not in
// train_labels (its target is then NaN: masked out, never a negative).
struct LabelMap {
  std::vector<int> column;
  int num_trained = 0;
};

// Maps the job's labels to the columns of this site's label table (`columns`); `train` are the
// labels the coordinator asked this site to train. Refuses a train label that is not a job label
// or not a column here, and (for a classifier) an empty `train`. A label-free workload (the
// autoencoder) maps to no columns and takes no train labels. Diffusion maps like a classifier
// but may train none of its labels (its conditions are then all unknown).
absl::StatusOr<LabelMap> MapLabels(const JobSpec& spec, const std::vector<std::string>& train,
                                   const std::vector<std::string>& columns);

// Head mode `site`: each site keeps a private head.
bool SiteMode(const JobSpec& spec);

// The seed of a job's round: the same on every run of the same job, round and spec seed.
uint64_t RoundSeed(const std::string& job_id, uint32_t seed, uint32_t round);

// Whether the tensor `name` belongs to the head (its name starts with `prefix`; an empty prefix:
// the model has no head).
bool IsHead(const std::string& name, const std::string& prefix);
// The head tensors of `weights`, in order.
TensorList HeadOf(const TensorList& weights, const std::string& prefix);
// The tensor called `name` in `list`, or null.
const NamedTensor* FindTensor(const TensorList& list, const std::string& name);

// `local - global` for the shared tensors of `global`, in its order (site mode: without the
// head). In label mode the head rows of labels not trained here are exactly zero (weight
// decay/momentum may have moved them). INTERNAL when `local` lacks a tensor or its shape differs.
absl::StatusOr<TensorList> ComputeUpdate(const TensorList& global, const TensorList& local,
                                         bool site_mode, const std::string& prefix,
                                         const LabelMap& labels);

}  // namespace fl
