// Robust aggregation: the coordinate-wise median or trimmed mean of a round's spooled updates.
// Torch-free. It reads every spool block by block, so memory is one combined model plus
// (number of updates x block) floats, never all updates at once. The result goes through the
// same server optimizer as the weighted mean (Aggregator::FromAverage, then Apply).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/env.h"
#include "fl/config.pb.h"
#include "server/aggregator.h"

namespace fl {

// One validated update as the coordinator spooled it: the raw float32 values of the layout's
// shared tensors, in order.
struct SpooledUpdate {
  std::string path;
  std::vector<size_t> label_rows;  // head rows (label indexes) it carries
  double scale = 1.0;              // norm clipping factor; values are multiplied by it first
  uint64_t bytes = 0;              // size the spool must have
};

struct RobustOptions {
  // AGGREGATION_MEDIAN or AGGREGATION_TRIMMED_MEAN.
  Aggregation rule = AGGREGATION_MEDIAN;
  // For the trimmed mean: floor(trim_fraction * k) of the k values of a coordinate are dropped
  // at each end. In [0, 0.5).
  double trim_fraction = 0.1;
  // Floats read from each spool at a time (16384: 64 KiB).
  size_t block_floats = 16384;
  // Where the spools are read.
  Env* env = Env::Default();
};

// The combined update: one buffer per shared tensor of the layout. Head row r is combined over
// the updates carrying label r only; `row_covered[r]` is false when none does (its values are
// then 0 and must be left out).
struct RobustResult {
  std::vector<std::vector<float>> combined;
  std::vector<bool> row_covered;
  size_t updates = 0;
};

// Combines `updates` coordinate by coordinate (unweighted: every update counts once, whatever
// its sample count). Opens every spool at once (one file descriptor each).
// Errors: INVALID_ARGUMENT for a bad rule, trim fraction or label row; FAILED_PRECONDITION for
// no updates; DATA_LOSS when a spool is missing, has the wrong size or cannot be read (the
// caller must then leave its model untouched).
absl::StatusOr<RobustResult> CombineSpools(const UpdateLayout& layout, size_t num_labels,
                                           const std::vector<SpooledUpdate>& updates,
                                           const RobustOptions& options);

// Median of values[0, n) (mean of the two middle values when n is even). REQUIRES: n > 0.
// Reorders `values`.
float MedianOf(float* values, size_t n);
// Mean of values[0, n) without the floor(trim_fraction * n) lowest and highest.
// REQUIRES: n > 0, trim_fraction in [0, 0.5). Reorders `values`.
float TrimmedMeanOf(float* values, size_t n, double trim_fraction);

}  // namespace fl
