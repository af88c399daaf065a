#include "server/robust_aggregator.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace fl {

float MedianOf(float* values, size_t n) {
  const size_t mid = n / 2;
  std::nth_element(values, values + mid, values + n);
  if (n % 2 == 1) return values[mid];
  // After nth_element, values[0, mid) are the lower half: its largest is the other middle value.
  const float below = *std::max_element(values, values + mid);
  return static_cast<float>((double{below} + double{values[mid]}) / 2);
}

float TrimmedMeanOf(float* values, size_t n, double trim_fraction) {
  // The small epsilon keeps e.g. 0.3 * 10 from flooring to 2 through rounding.
  const size_t t = static_cast<size_t>(std::floor(trim_fraction * static_cast<double>(n) + 1e-9));
  if (t > 0) {
    std::nth_element(values, values + t, values + n);                // [0, t): the t lowest
    std::nth_element(values + t, values + (n - t - 1), values + n);  // [n - t, n): the t highest
  }
  double sum = 0;
  for (size_t i = t; i < n - t; ++i) sum += values[i];
  return static_cast<float>(sum / static_cast<double>(n - 2 * t));
}

namespace {

// Every spool of the round read in lockstep: one call reads the next block of each.
class SpoolReader {
 public:
  // Opens the spools; each must hold exactly `bytes` bytes.
  static absl::StatusOr<SpoolReader> Open(Env* env, const std::vector<SpooledUpdate>& updates,
                                          size_t block) {
    SpoolReader reader(block);
    for (const SpooledUpdate& u : updates) {
      absl::StatusOr<std::unique_ptr<RandomAccessFile>> file = env->NewRandomAccessFile(u.path);
      if (!file.ok()) return absl::DataLossError(file.status().message());
      absl::StatusOr<uint64_t> size = (*file)->Size();
      if (!size.ok() || *size != u.bytes) {
        return absl::DataLossError(
            absl::StrCat("spool file ", u.path, " does not hold ", u.bytes, " bytes",
                         size.ok() ? "" : absl::StrCat(": ", size.status().message())));
      }
      reader.files_.push_back(*std::move(file));
    }
    reader.buffer_.resize(updates.size() * block);
    return reader;
  }

  // Reads the next `n` (at most the block size) floats of every spool.
  absl::Status Next(size_t n) {
    for (size_t u = 0; u < files_.size(); ++u) {
      absl::Status read = files_[u]->ReadAt(position_, n * sizeof(float),
                                            reinterpret_cast<char*>(buffer_.data() + u * block_));
      if (!read.ok()) return absl::DataLossError(read.message());
    }
    position_ += n * sizeof(float);
    return absl::OkStatus();
  }

  // The block last read from update `u`.
  const float* values(size_t u) const { return buffer_.data() + u * block_; }

 private:
  explicit SpoolReader(size_t block) : block_(block) {}

  size_t block_;
  std::vector<std::unique_ptr<RandomAccessFile>> files_;
  uint64_t position_ = 0;      // of the next block, in bytes, in every spool
  std::vector<float> buffer_;  // update u's block at [u * block_, (u + 1) * block_)
};

absl::Status CheckInputs(const UpdateLayout& layout, size_t num_labels,
                         const std::vector<SpooledUpdate>& updates, const RobustOptions& options) {
  if (options.rule != AGGREGATION_MEDIAN && options.rule != AGGREGATION_TRIMMED_MEAN) {
    return absl::InvalidArgumentError(
        absl::StrCat("aggregation ", Aggregation_Name(options.rule), " is not a robust rule"));
  }
  if (!(options.trim_fraction >= 0 && options.trim_fraction < 0.5)) {
    return absl::InvalidArgumentError(
        absl::StrCat("trim_fraction must be in [0, 0.5), got ", options.trim_fraction));
  }
  if (options.block_floats == 0) return absl::InvalidArgumentError("block_floats must be > 0");
  if (updates.empty()) return absl::FailedPreconditionError("no update to combine");
  uint64_t layout_bytes = 0;
  for (const TensorMeta& meta : layout.shared) layout_bytes += meta.byte_size();
  for (const SpooledUpdate& u : updates) {
    if (u.bytes != layout_bytes) {
      return absl::InvalidArgumentError(absl::StrCat("update ", u.path, " has ", u.bytes,
                                                     " bytes; the layout has ", layout_bytes));
    }
    for (size_t row : u.label_rows) {
      if (row >= num_labels) {
        return absl::InvalidArgumentError(
            absl::StrCat("update ", u.path, " carries label row ", row, " of ", num_labels));
      }
    }
  }
  return absl::OkStatus();
}

// Combines blocks coordinate by coordinate over the updates that take part in each.
class BlockCombiner {
 public:
  BlockCombiner(const std::vector<SpooledUpdate>& updates, size_t num_labels,
                const RobustOptions& options)
      : options_(options), carriers_(num_labels), scratch_(updates.size()) {
    for (size_t u = 0; u < updates.size(); ++u) {
      all_.push_back(u);
      scales_.push_back(updates[u].scale);
      std::vector<bool> seen(num_labels, false);  // a label listed twice counts once
      for (size_t row : updates[u].label_rows) {
        if (!seen[row]) carriers_[row].push_back(u);
        seen[row] = true;
      }
    }
  }

  bool Covered(size_t row) const { return !carriers_[row].empty(); }

  // Writes the combined values of elements [offset, offset + n) of a tensor to `out`. A head
  // tensor (`row_len` > 0) takes, for each row, only the updates carrying that row's label.
  void Block(const SpoolReader& reader, uint64_t row_len, uint64_t offset, size_t n, float* out) {
    for (size_t i = 0; i < n; ++i) {
      const std::vector<size_t>& who = row_len > 0 ? carriers_[(offset + i) / row_len] : all_;
      if (who.empty()) continue;
      for (size_t j = 0; j < who.size(); ++j) {
        scratch_[j] = static_cast<float>(double{reader.values(who[j])[i]} * scales_[who[j]]);
      }
      out[i] = options_.rule == AGGREGATION_MEDIAN
                   ? MedianOf(scratch_.data(), who.size())
                   : TrimmedMeanOf(scratch_.data(), who.size(), options_.trim_fraction);
    }
  }

 private:
  const RobustOptions options_;
  std::vector<size_t> all_;
  std::vector<double> scales_;
  std::vector<std::vector<size_t>> carriers_;  // per label row, the updates carrying it
  std::vector<float> scratch_;
};

}  // namespace

absl::StatusOr<RobustResult> CombineSpools(const UpdateLayout& layout, size_t num_labels,
                                           const std::vector<SpooledUpdate>& updates,
                                           const RobustOptions& options) {
  RETURN_IF_ERROR(CheckInputs(layout, num_labels, updates, options));
  ASSIGN_OR_RETURN(SpoolReader reader,
                   SpoolReader::Open(options.env, updates, options.block_floats));
  BlockCombiner combiner(updates, num_labels, options);
  RobustResult result;
  result.updates = updates.size();
  for (size_t r = 0; r < num_labels; ++r) result.row_covered.push_back(combiner.Covered(r));
  for (size_t k = 0; k < layout.shared.size(); ++k) {
    const uint64_t numel = layout.shared[k].byte_size() / sizeof(float);
    const uint64_t row_len = layout.is_head[k] ? numel / num_labels : 0;
    std::vector<float>& out = result.combined.emplace_back(numel, 0.0f);
    for (uint64_t offset = 0; offset < numel;) {
      const size_t n =
          static_cast<size_t>(std::min<uint64_t>(options.block_floats, numel - offset));
      RETURN_IF_ERROR(reader.Next(n));
      combiner.Block(reader, row_len, offset, n, out.data() + offset);
      offset += n;
    }
  }
  return result;
}

}  // namespace fl
