#include "server/aggregator.h"

#include <algorithm>
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
                      !t.shape.empty() && t.shape[0] == static_cast<int64_t>(num_labels);
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

namespace {

// |value × multiplier| above this is refused: kMaxContribution in fixed point.
constexpr double kFixedLimit = Aggregator::kMaxContribution * 0x1p40;
static_assert(Aggregator::kFractionBits == 40, "kFixedLimit and kFromFixed assume 2^40");
constexpr double kFromFixed = 0x1p-40;
constexpr __int128 kTwo64 = static_cast<__int128>(1) << 64;

using HighWords = std::unordered_map<uint64_t, int64_t>;

// The fixed-point term of one value: trunc(value × multiplier). Truncation (cvttsd2si) does not
// depend on the FPU's rounding mode, so every process computes the same integer.
inline bool ToFixed(float value, double multiplier, __int128* term) {
  const double v = double{value} * multiplier;
  if (std::fabs(v) < 0x1p63) [[likely]] {
    *term = static_cast<int64_t>(v);
    return true;
  }
  if (!(std::fabs(v) <= kFixedLimit)) return false;  // also NaN
  *term = static_cast<__int128>(v);                  // |v| >= 2^63 is a whole number: exact
  return true;
}

// The sum of element `element`, high × 2^64 + low, plus `term`, written back as its unique
// (high, low) pair: low in [-2^63, 2^63), a high word kept only while it is not zero.
void AddWide(__int128 term, int64_t* low, HighWords& high, uint64_t element) {
  auto it = high.find(element);
  const __int128 sum = (it == high.end() ? 0 : it->second * kTwo64) + *low + term;
  *low = static_cast<int64_t>(static_cast<uint64_t>(sum));  // modulo 2^64, as two's complement
  const int64_t new_high = static_cast<int64_t>((sum - *low) / kTwo64);
  if (new_high != 0) {
    high[element] = new_high;
  } else if (it != high.end()) {
    high.erase(it);
  }
}

// low[i] += term(data[i]) (or -= when `subtract`) for i < n, `first` being the element index of
// low[0]; stops before the first value out of range and returns its index (n when none). A term
// or a sum that leaves 64 bits takes the wide path.
template <bool subtract>
size_t AddFixed(double multiplier, const float* __restrict data, int64_t* __restrict low,
                HighWords& high, uint64_t first, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    const double v = double{data[i]} * multiplier;
    if (std::fabs(v) < 0x1p63) [[likely]] {
      const int64_t term = static_cast<int64_t>(v);
      int64_t result;
      const bool overflow = subtract ? __builtin_sub_overflow(low[i], term, &result)
                                     : __builtin_add_overflow(low[i], term, &result);
      if (!overflow) [[likely]] {
        low[i] = result;
        continue;
      }
    }
    __int128 term;
    if (!ToFixed(data[i], multiplier, &term)) [[unlikely]]
      return i;
    AddWide(subtract ? -term : term, &low[i], high, first + i);
  }
  return n;
}

double FixedToDouble(int64_t low, const HighWords& high, uint64_t element) {
  if (high.empty()) [[likely]]
    return static_cast<double>(low);
  auto it = high.find(element);
  if (it == high.end()) return static_cast<double>(low);
  return static_cast<double>(it->second * kTwo64 + low);
}

}  // namespace

Aggregator::Aggregator(UpdateLayout layout, size_t num_labels)
    : layout_(std::move(layout)), num_labels_(num_labels), label_weight_(num_labels, 0) {
  sums_.reserve(layout_.shared.size());
  for (const TensorMeta& meta : layout_.shared) {
    sums_.emplace_back(meta.byte_size() / sizeof(float), 0);
  }
  high_.resize(layout_.shared.size());
}

absl::StatusOr<Aggregator> Aggregator::FromAverage(UpdateLayout layout, size_t num_labels,
                                                   std::vector<std::vector<float>> average,
                                                   const std::vector<bool>& row_covered,
                                                   size_t updates) {
  if (average.size() != layout.shared.size() || row_covered.size() != num_labels) {
    return absl::InvalidArgumentError(
        absl::StrCat("combined update has ", average.size(), " tensors and ", row_covered.size(),
                     " label rows; the layout has ", layout.shared.size(), " and ", num_labels));
  }
  for (size_t k = 0; k < average.size(); ++k) {
    if (average[k].size() * sizeof(float) != layout.shared[k].byte_size()) {
      return absl::InvalidArgumentError(absl::StrCat("combined update of ", layout.shared[k].name,
                                                     " has ", average[k].size(), " values"));
    }
  }
  Aggregator aggregator(UpdateLayout{}, num_labels);
  aggregator.layout_ = std::move(layout);
  aggregator.average_ = std::move(average);
  aggregator.from_average_ = true;
  aggregator.total_weight_ = updates > 0 ? 1 : 0;
  for (size_t r = 0; r < num_labels; ++r) aggregator.label_weight_[r] = row_covered[r] ? 1 : 0;
  aggregator.updates_ = updates;
  return aggregator;
}

absl::Status Aggregator::CheckValues(uint64_t weight, const float* data, size_t n) {
  const double multiplier = static_cast<double>(weight) * 0x1p40;
  __int128 term;
  for (size_t i = 0; i < n; ++i) {
    if (ToFixed(data[i], multiplier, &term)) continue;
    if (!std::isfinite(data[i])) {
      return absl::InvalidArgumentError(absl::StrCat("non-finite value at element ", i));
    }
    return absl::InvalidArgumentError(
        absl::StrCat("value ", data[i], " at element ", i, " times the update's weight ", weight,
                     " exceeds the bound of the exact sum (", kMaxContribution, ")"));
  }
  return absl::OkStatus();
}

absl::Status Aggregator::BeginUpdate(uint64_t weight, std::vector<size_t> label_rows,
                                     double scale) {
  if (in_update_ || from_average_ || spent_) {
    return absl::FailedPreconditionError(in_update_ ? "BeginUpdate inside an update"
                                                    : "this aggregator takes no more updates");
  }
  if (weight == 0 || weight > kMaxWeight) {
    return absl::InvalidArgumentError(
        absl::StrCat("update weight ", weight, " is outside [1, ", kMaxWeight, "]"));
  }
  if (!(scale > 0 && scale <= 1)) {
    return absl::InvalidArgumentError(absl::StrCat("update scale ", scale, " is outside (0, 1]"));
  }
  if (updates_ >= kMaxUpdates) {
    return absl::InvalidArgumentError(absl::StrCat("more than ", kMaxUpdates, " updates"));
  }
  in_update_ = true;
  weight_ = weight;
  multiplier_ = static_cast<double>(weight) * scale * 0x1p40;
  row_on_.assign(num_labels_, false);
  for (size_t row : label_rows) {
    if (row < num_labels_) row_on_[row] = true;
  }
  return absl::OkStatus();
}

template <typename Fn>
void Aggregator::ForEachRun(size_t index, uint64_t offset, size_t n, Fn&& fn) const {
  if (!layout_.is_head[index]) {
    fn(size_t{0}, n);
    return;
  }
  const uint64_t row_len = sums_[index].size() / num_labels_;
  for (size_t i = 0; i < n;) {
    const uint64_t element = offset + i;
    const uint64_t row = element / row_len;
    const size_t run =
        static_cast<size_t>(std::min<uint64_t>(n - i, (row + 1) * row_len - element));
    if (row_on_[row] && !fn(i, run)) return;
    i += run;
  }
}

absl::Status Aggregator::Fold(size_t index, uint64_t offset, const float* data, size_t n) {
  if (!in_update_) return absl::FailedPreconditionError("Fold outside an update");
  if (index >= sums_.size() || offset > sums_[index].size() || n > sums_[index].size() - offset) {
    return absl::OutOfRangeError(
        absl::StrCat("fold of ", n, " values at ", offset, " is outside shared tensor ", index));
  }
  if (n == 0) return absl::OkStatus();
  int64_t* sum = sums_[index].data() + offset;
  HighWords& high = high_[index];
  size_t bad = n;
  ForEachRun(index, offset, n, [&](size_t start, size_t length) {
    const size_t done =
        AddFixed<false>(multiplier_, data + start, sum + start, high, offset + start, length);
    if (done < length) bad = start + done;
    return done == length;
  });
  if (bad == n) return absl::OkStatus();
  // Take this call's terms back (integer sums: exactly), so the refused chunk leaves no trace.
  ForEachRun(index, offset, bad, [&](size_t start, size_t length) {
    AddFixed<true>(multiplier_, data + start, sum + start, high, offset + start, length);
    return true;
  });
  return absl::InvalidArgumentError(absl::StrCat(
      std::isfinite(data[bad]) ? "" : "non-finite ", "value ", data[bad], " at element ",
      offset + bad, " of ", layout_.shared[index].name,
      std::isfinite(data[bad])
          ? absl::StrCat(" times the update's weight ", weight_,
                         " exceeds the bound of the exact sum (", kMaxContribution, ")")
          : ""));
}

void Aggregator::EndUpdate() {
  if (!in_update_) return;
  in_update_ = false;
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
  return static_cast<float>(opt.learning_rate()) * m /
         (std::sqrt(v) + static_cast<float>(opt.tau()));
}

// FedAvgM: the velocity `m` updated in place; the step is learning_rate * velocity.
float MomentumStep(const ServerOptimizer& opt, float delta, float& m) {
  m = static_cast<float>(opt.momentum()) * m + delta;
  return static_cast<float>(opt.learning_rate()) * m;
}

}  // namespace

uint64_t UpdateWeight(Weighting weighting, uint64_t train_size) {
  return weighting == WEIGHTING_EQUAL ? 1 : train_size;
}

bool HasServerState(const ServerOptimizer& optimizer) {
  return optimizer.kind() == FEDADAM || optimizer.kind() == FEDYOGI || optimizer.momentum() > 0;
}

absl::StatusOr<TensorList> Aggregator::NextModel(const ServerOptimizer& optimizer,
                                                 const TensorList& global,
                                                 OptimizerMoments* moments) {
  if (spent_) return absl::FailedPreconditionError("the aggregate was already applied");
  if (in_update_) return absl::FailedPreconditionError("an update is still being folded");
  if (updates_ == 0 || total_weight_ == 0) {
    return absl::FailedPreconditionError("no update to apply");
  }
  const bool adaptive = optimizer.kind() == FEDADAM || optimizer.kind() == FEDYOGI;
  if (HasServerState(optimizer) && moments->m.empty()) {
    for (const NamedTensor& t : global) {
      moments->m.push_back({t.name, t.shape, std::vector<float>(t.data.size(), 0.0f)});
      if (adaptive) {
        moments->v.push_back({t.name, t.shape, std::vector<float>(t.data.size(), 0.0f)});
      }
    }
  }
  const bool momentum = !adaptive && optimizer.momentum() > 0;
  const float lr = static_cast<float>(optimizer.learning_rate());
  TensorList next;
  next.reserve(global.size());
  for (const NamedTensor& t : global) next.push_back({t.name, t.shape, {}});
  std::vector<bool> shared(global.size(), false);
  for (size_t k = 0; k < layout_.shared.size(); ++k) {
    const size_t g = layout_.global_index[k];
    shared[g] = true;
    const std::vector<float>& current = global[g].data;
    std::vector<float> out =
        from_average_ ? std::move(average_[k]) : std::vector<float>(current.size());
    const size_t row_len = layout_.is_head[k] ? out.size() / num_labels_ : out.size();
    for (size_t i = 0; i < out.size(); ++i) {
      const uint64_t w = layout_.is_head[k] ? label_weight_[i / row_len] : total_weight_;
      if (w == 0) {  // nobody trained this head row
        out[i] = current[i];
        continue;
      }
      const float delta = from_average_
                              ? out[i]
                              : static_cast<float>(FixedToDouble(sums_[k][i], high_[k], i) *
                                                   kFromFixed / static_cast<double>(w));
      out[i] = current[i] + (adaptive   ? AdaptiveStep(optimizer, delta, moments->m[g].data[i],
                                                       moments->v[g].data[i])
                             : momentum ? MomentumStep(optimizer, delta, moments->m[g].data[i])
                                        : lr * delta);
    }
    next[g].data = std::move(out);
    if (!from_average_) {  // memory back as we go
      std::vector<int64_t>().swap(sums_[k]);
      HighWords().swap(high_[k]);
    }
  }
  for (size_t g = 0; g < global.size(); ++g) {
    if (!shared[g]) next[g].data = global[g].data;
  }
  spent_ = true;
  return next;
}

absl::Status Aggregator::Apply(const ServerOptimizer& optimizer, TensorList& global,
                               OptimizerMoments* moments) {
  ASSIGN_OR_RETURN(global, NextModel(optimizer, global, moments));
  return absl::OkStatus();
}

std::string MomentsPath(const std::string& checkpoint_path) { return checkpoint_path + ".moments"; }

absl::Status WriteMoments(const std::string& path, const OptimizerMoments& moments, Env* env) {
  TensorList all;
  for (const NamedTensor& t : moments.m) all.push_back({"m." + t.name, t.shape, t.data});
  for (const NamedTensor& t : moments.v) all.push_back({"v." + t.name, t.shape, t.data});
  return WriteSafetensors(path, all, {}, env);
}

absl::StatusOr<OptimizerMoments> ReadMoments(const std::string& path, const TensorList& model,
                                             Env* env) {
  ASSIGN_OR_RETURN(TensorList all, ReadSafetensors(path, nullptr, env));
  std::map<std::string, NamedTensor*> by_name;
  for (NamedTensor& t : all) by_name[t.name] = &t;
  OptimizerMoments moments;
  const bool velocity_only = std::none_of(
      all.begin(), all.end(), [](const NamedTensor& t) { return t.name.rfind("v.", 0) == 0; });
  for (const char* prefix : {"m.", "v."}) {
    if (prefix[0] == 'v' && velocity_only) break;
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
