#include "client/update.h"

#include <algorithm>
#include <map>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "models/spec.h"

namespace fl {

absl::StatusOr<LabelMap> MapLabels(const JobSpec& spec, const std::vector<std::string>& train,
                                   const std::vector<std::string>& columns) {
  LabelMap map;
  const WorkloadKind kind = KindOf(spec);
  if (kind == WorkloadKind::kAutoencoder) {  // a label-free workload: nothing to map
    if (!train.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "a ", WorkloadName(spec), " job trains no labels, got ", absl::StrJoin(train, ", ")));
    }
    return map;
  }
  const bool classifier = kind == WorkloadKind::kClassification;
  if (classifier && spec.labels().empty()) {
    return absl::InvalidArgumentError("job has no labels");
  }
  map.column.assign(spec.labels_size(), -1);
  for (const std::string& label : train) {
    auto job_it = std::find(spec.labels().begin(), spec.labels().end(), label);
    if (job_it == spec.labels().end()) {
      return absl::InvalidArgumentError(absl::StrCat("train label \"", label,
                                                     "\" is not in the job's labels [",
                                                     absl::StrJoin(spec.labels(), ", "), "]"));
    }
    auto col_it = std::find(columns.begin(), columns.end(), label);
    if (col_it == columns.end()) {
      return absl::InvalidArgumentError(absl::StrCat("train label \"", label,
                                                     "\" is not a column of this site's labels [",
                                                     absl::StrJoin(columns, ", "), "]"));
    }
    int& slot = map.column[job_it - spec.labels().begin()];
    if (slot < 0) ++map.num_trained;
    slot = static_cast<int>(col_it - columns.begin());
  }
  if (classifier && map.num_trained == 0) {
    return absl::InvalidArgumentError("no train labels given");
  }
  return map;
}

bool SiteMode(const JobSpec& spec) { return spec.head_mode() == HEAD_MODE_SITE; }

uint64_t RoundSeed(const std::string& job_id, uint32_t seed, uint32_t round) {
  uint64_t h = 1469598103934665603ull;  // FNV-1a of the job id, stable across builds
  for (unsigned char c : job_id) h = (h ^ c) * 1099511628211ull;
  return h ^ (uint64_t{seed} << 32) ^ (uint64_t{round} * 0x9E3779B97F4A7C15ull);
}

bool IsHead(const std::string& name, const std::string& prefix) {
  return !prefix.empty() && absl::StartsWith(name, prefix);
}

TensorList HeadOf(const TensorList& weights, const std::string& prefix) {
  TensorList head;
  for (const NamedTensor& t : weights) {
    if (IsHead(t.name, prefix)) head.push_back(t);
  }
  return head;
}

const NamedTensor* FindTensor(const TensorList& list, const std::string& name) {
  for (const NamedTensor& t : list) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

absl::StatusOr<TensorList> ComputeUpdate(const TensorList& global, const TensorList& local,
                                         bool site_mode, const std::string& prefix,
                                         const LabelMap& labels) {
  std::map<std::string, const NamedTensor*> by_name;
  for (const NamedTensor& t : local) by_name[t.name] = &t;
  const int64_t num_labels = static_cast<int64_t>(labels.column.size());
  TensorList update;
  for (const NamedTensor& g : global) {
    const bool head = IsHead(g.name, prefix);
    if (site_mode && head) continue;
    auto it = by_name.find(g.name);
    if (it == by_name.end() || it->second->shape != g.shape || g.data.size() != g.numel()) {
      return absl::InternalError(absl::StrCat("model tensor ", g.name, " does not match global"));
    }
    NamedTensor d{g.name, g.shape, std::vector<float>(g.data.size())};
    for (size_t i = 0; i < d.data.size(); ++i) d.data[i] = it->second->data[i] - g.data[i];
    if (head && !g.shape.empty() && g.shape[0] == num_labels) {
      const int64_t row = g.numel() / num_labels;
      for (int64_t j = 0; j < num_labels; ++j) {
        if (labels.column[j] >= 0) continue;
        std::fill(d.data.begin() + j * row, d.data.begin() + (j + 1) * row, 0.0f);
      }
    }
    update.push_back(std::move(d));
  }
  return update;
}

}  // namespace fl
