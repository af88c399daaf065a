#include "server/aggregator.h"

#include <cmath>
#include <map>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/safetensors.h"
#include "common/status.h"

namespace fl {

UpdateLayout MakeLayout(const TensorList& global, const std::string& head_prefix, HeadMode mode,
                        size_t num_labels) {
  UpdateLayout layout;
  for (size_t i = 0; i < global.size(); ++i) {
    const NamedTensor& t = global[i];
    const bool head = !head_prefix.empty() && absl::StartsWith(t.name, head_prefix) &&
                      !t.shape.empty() &&
                      t.shape[0] == static_cast<int64_t>(num_labels);
    if (head && mode == HEAD_MODE_SITE) continue;
    layout.shared.push_back({t.name, t.shape});
    layout.global_index.push_back(i);
    layout.is_head.push_back(head);
  }
  return layout;
}

void AxpyFloat(float weight, const float* __restrict data, float* __restrict sum, size_t n) {
  for (size_t i = 0; i < n; ++i) sum[i] += weight * data[i];
}

Aggregator::Aggregator(UpdateLayout layout, size_t num_labels)
    : layout_(std::move(layout)), num_labels_(num_labels), label_weight_(num_labels, 0.0) {
  sums_.reserve(layout_.shared.size());
  for (const TensorMeta& meta : layout_.shared) {
    sums_.emplace_back(meta.byte_size() / sizeof(float), 0.0f);
  }
}

Aggregator::Aggregator(UpdateLayout layout, size_t num_labels,
                       std::vector<std::vector<float>> sums)
    : layout_(std::move(layout)),
      num_labels_(num_labels),
      sums_(std::move(sums)),
      label_weight_(num_labels, 0.0) {}

absl::StatusOr<Aggregator> Aggregator::FromAverage(UpdateLayout layout, size_t num_labels,
                                                   std::vector<std::vector<float>> average,
                                                   const std::vector<bool>& row_covered,
                                                   size_t updates) {
  if (average.size() != layout.shared.size() || row_covered.size() != num_labels) {
    return absl::InvalidArgumentError(absl::StrCat(
        "combined update has ", average.size(), " tensors and ", row_covered.size(),
        " label rows; the layout has ", layout.shared.size(), " and ", num_labels));
  }
  for (size_t k = 0; k < average.size(); ++k) {
    if (average[k].size() * sizeof(float) != layout.shared[k].byte_size()) {
      return absl::InvalidArgumentError(absl::StrCat("combined update of ",
                                                     layout.shared[k].name, " has ",
                                                     average[k].size(), " values"));
    }
  }
  // The sums hold the average itself, so every weight is 1 (or 0 for rows nobody covered).
  Aggregator aggregator(std::move(layout), num_labels, std::move(average));
  aggregator.total_weight_ = updates > 0 ? 1.0 : 0.0;
  for (size_t r = 0; r < num_labels; ++r) aggregator.label_weight_[r] = row_covered[r] ? 1.0 : 0.0;
  aggregator.updates_ = updates;
  return aggregator;
}

void Aggregator::BeginUpdate(double weight, std::vector<size_t> label_rows, double scale) {
  weight_ = weight;
  scale_ = scale;
  row_on_.assign(num_labels_, false);
  for (size_t row : label_rows) {
    if (row < num_labels_) row_on_[row] = true;
  }
}

void Aggregator::Fold(size_t index, uint64_t offset, const float* data, size_t n) {
  float* sum = sums_[index].data() + offset;
  const float w = static_cast<float>(weight_ * scale_);
  if (!layout_.is_head[index]) {
    AxpyFloat(w, data, sum, n);
    return;
  }
  // Head tensor: fold only the rows of labels this update carries.
  const uint64_t row_len = (sums_[index].size()) / num_labels_;
  for (size_t i = 0; i < n;) {
    const uint64_t element = offset + i;
    const uint64_t row = element / row_len;
    const size_t run = static_cast<size_t>(std::min<uint64_t>(n - i, (row + 1) * row_len - element));
    if (row_on_[row]) AxpyFloat(w, data + i, sum + i, run);
    i += run;
  }
}

void Aggregator::EndUpdate() {
  total_weight_ += weight_;
  for (size_t r = 0; r < num_labels_; ++r) {
    if (row_on_[r]) label_weight_[r] += weight_;
  }
  ++updates_;
}

namespace {

// Adam/Yogi step on one element; `m`, `v` updated in place.
float AdaptiveStep(const ServerOptimizer& opt, float delta, float& m, float& v) {
  const float b1 = static_cast<float>(opt.beta1());
  const float b2 = static_cast<float>(opt.beta2());
  m = b1 * m + (1 - b1) * delta;
  const float d2 = delta * delta;
  if (opt.kind() == FEDYOGI) {
    v = v - (1 - b2) * d2 * (v - d2 > 0 ? 1.0f : (v - d2 < 0 ? -1.0f : 0.0f));
  } else {
    v = b2 * v + (1 - b2) * d2;
  }
  return static_cast<float>(opt.learning_rate()) * m / (std::sqrt(v) + static_cast<float>(opt.tau()));
}

}  // namespace

absl::StatusOr<TensorList> Aggregator::NextModel(const ServerOptimizer& optimizer,
                                                 const TensorList& global,
                                                 OptimizerMoments* moments) {
  if (updates_ == 0 || total_weight_ <= 0) {
    return absl::FailedPreconditionError("no update to apply");
  }
  const bool adaptive = optimizer.kind() == FEDADAM || optimizer.kind() == FEDYOGI;
  if (adaptive && moments->m.empty()) {
    for (const NamedTensor& t : global) {
      moments->m.push_back({t.name, t.shape, std::vector<float>(t.data.size(), 0.0f)});
      moments->v.push_back({t.name, t.shape, std::vector<float>(t.data.size(), 0.0f)});
    }
  }
  // Each shared tensor's sum buffer becomes that tensor of the next model, so the peak is the
  // global model plus the sums, never a third copy.
  std::vector<int64_t> shared_at(global.size(), -1);
  for (size_t k = 0; k < sums_.size(); ++k) {
    const size_t g = layout_.global_index[k];
    shared_at[g] = static_cast<int64_t>(k);
    std::vector<float>& sum = sums_[k];
    const std::vector<float>& current = global[g].data;
    const size_t row_len = layout_.is_head[k] ? sum.size() / num_labels_ : sum.size();
    for (size_t i = 0; i < sum.size(); ++i) {
      const double w = layout_.is_head[k] ? label_weight_[i / row_len] : total_weight_;
      if (w <= 0) {  // nobody trained this head row
        sum[i] = current[i];
        continue;
      }
      const float delta = static_cast<float>(sum[i] / w);
      sum[i] = current[i] + (adaptive ? AdaptiveStep(optimizer, delta, moments->m[g].data[i],
                                                     moments->v[g].data[i])
                                      : static_cast<float>(optimizer.learning_rate()) * delta);
    }
  }
  TensorList next;
  next.reserve(global.size());
  for (size_t g = 0; g < global.size(); ++g) {
    next.push_back({global[g].name, global[g].shape,
                    shared_at[g] < 0 ? global[g].data : std::move(sums_[shared_at[g]])});
  }
  updates_ = 0;  // the sums are gone
  return next;
}

absl::Status Aggregator::Apply(const ServerOptimizer& optimizer, TensorList& global,
                               OptimizerMoments* moments) {
  ASSIGN_OR_RETURN(global, NextModel(optimizer, global, moments));
  return absl::OkStatus();
}

std::string MomentsPath(const std::string& checkpoint_path) {
  return checkpoint_path + ".moments";
}

absl::Status WriteMoments(const std::string& path, const OptimizerMoments& moments) {
  TensorList all;
  for (const NamedTensor& t : moments.m) all.push_back({"m." + t.name, t.shape, t.data});
  for (const NamedTensor& t : moments.v) all.push_back({"v." + t.name, t.shape, t.data});
  return WriteSafetensors(path, all);
}

absl::StatusOr<OptimizerMoments> ReadMoments(const std::string& path, const TensorList& model) {
  ASSIGN_OR_RETURN(TensorList all, ReadSafetensors(path));
  std::map<std::string, NamedTensor*> by_name;
  for (NamedTensor& t : all) by_name[t.name] = &t;
  OptimizerMoments moments;
  for (const char* prefix : {"m.", "v."}) {
    for (const NamedTensor& want : model) {
      auto it = by_name.find(prefix + want.name);
      if (it == by_name.end() || it->second->shape != want.shape) {
        return absl::DataLossError(absl::StrCat("optimizer moments ", path, " lack '", prefix,
                                                want.name, "' of the model's shape"));
      }
      TensorList& out = prefix[0] == 'm' ? moments.m : moments.v;
      out.push_back({want.name, want.shape, std::move(it->second->data)});
    }
  }
  return moments;
}

}  // namespace fl
