// What a reviewer asks of a generator (flctl synth-eval): how close its images are to real ones
// (FID; improved precision and recall, Kynkaanniemi et al. 2019, k = 3) in the feature space of
// a classifier the federation trained (the Inception weights the literature uses cannot be
// fetched here: every report says which features it used), and whether it copies its training
// images (each synthetic image's nearest real image, against the real images' own nearest
// neighbours). The header is torch-free; the arithmetic runs in synth.cc.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace fl {

// rows x cols, row-major: one feature vector (or flattened image) per row.
struct FeatureMatrix {
  int64_t rows = 0;
  int64_t cols = 0;
  std::vector<float> data;
};

// The Frechet distance between Gaussians fitted to the rows of `a` and `b` (means and unbiased
// covariances, as pytorch-fid): |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2),
// in double precision. REQUIRES: equal cols, at least 2 rows each.
double FrechetDistance(const FeatureMatrix& a, const FeatureMatrix& b);

struct PrecisionRecall {
  double precision = 0;  // share of synthetic rows inside the real manifold
  double recall = 0;     // share of real rows inside the synthetic manifold
};
// Improved precision and recall: a set's manifold is the union of balls around its rows, each of
// radius the distance to the row's k-th nearest other row (Euclidean). REQUIRES: more than k
// rows each.
PrecisionRecall ImprovedPrecisionRecall(const FeatureMatrix& real, const FeatureMatrix& synthetic,
                                        int k = 3);

struct NearestPair {
  int64_t synthetic = 0;  // row of the synthetic set
  int64_t real = 0;       // its nearest real row
  double distance = 0;    // Euclidean, per pixel (divided by sqrt(cols))
};
struct Memorisation {
  // Medians of each synthetic row's distance to its nearest real row, and of each real row's
  // distance to its nearest other real row; a ratio well below 1 says the generator copies.
  double synthetic_to_real = 0;
  double real_to_real = 0;
  std::vector<NearestPair> closest;  // the `closest` nearest pairs, nearest first
};
// REQUIRES: equal cols, real has at least 2 rows, synthetic at least 1.
Memorisation MemorisationCheck(const FeatureMatrix& real, const FeatureMatrix& synthetic,
                               int closest = 5);

// The features that the label head of the classifier exported at `model_path` (card beside it)
// reads, for each image of each of `sets` (each side x side pixels in [0, 1], side the model's
// input size): one matrix per set, the model loaded once.
absl::StatusOr<std::vector<FeatureMatrix>> ClassifierFeaturesOf(
    const std::string& model_path, const std::vector<const FeatureMatrix*>& sets);

// The images of a folder as the client reads them (every DICOM file, recursively, decoded and
// resized to side x side in [0, 1]), one row each, with their paths; files that do not decode
// are skipped and counted.
struct ImageFolder {
  FeatureMatrix pixels;
  std::vector<std::string> paths;
  int64_t skipped = 0;
};
absl::StatusOr<ImageFolder> ReadImageFolder(const std::string& dir, int side);

}  // namespace fl
