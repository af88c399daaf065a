// The generator's figures against values computed by hand, and the synthetic DICOM writer's
// output read back as the client reads it.
#include <cmath>
#include <filesystem>
#include <set>

#include "client/dataset.h"
#include "client/dicom.h"
#include "common/test_dir.h"
#include "gtest/gtest.h"
#include "tools/synth.h"
#include "tools/synth_eval.h"

namespace fl {
namespace {

FeatureMatrix Rows(std::vector<std::vector<float>> rows) {
  FeatureMatrix m;
  m.rows = static_cast<int64_t>(rows.size());
  m.cols = static_cast<int64_t>(rows[0].size());
  for (const auto& r : rows) m.data.insert(m.data.end(), r.begin(), r.end());
  return m;
}

TEST(FrechetDistanceTest, OneDimensionIsTheClosedForm) {
  // a: mean 1, unbiased variance 2; b: mean 5, variance 8.
  // (1 - 5)^2 + 2 + 8 - 2 sqrt(2 * 8) = 16 + 10 - 8 = 18.
  EXPECT_NEAR(FrechetDistance(Rows({{0}, {2}}), Rows({{3}, {7}})), 18.0, 1e-9);
  EXPECT_NEAR(FrechetDistance(Rows({{0}, {2}, {7}}), Rows({{0}, {2}, {7}})), 0.0, 1e-9);
}

// Sample means and unbiased covariances of 2-D rows, by hand.
void Moments(const std::vector<std::vector<double>>& rows, double mu[2], double s[2][2]) {
  const double n = static_cast<double>(rows.size());
  mu[0] = mu[1] = 0;
  for (const auto& r : rows) mu[0] += r[0] / n, mu[1] += r[1] / n;
  for (int i = 0; i < 2; ++i) {
    for (int j = 0; j < 2; ++j) {
      s[i][j] = 0;
      for (const auto& r : rows) s[i][j] += (r[i] - mu[i]) * (r[j] - mu[j]) / (n - 1);
    }
  }
}

TEST(FrechetDistanceTest, TwoDimensionsWithCovariancesThatDoNotCommute) {
  // For 2 x 2 positive definite S1, S2: Tr sqrt(S1^1/2 S2 S1^1/2) =
  // sqrt(tr(S1 S2) + 2 sqrt(det S1 det S2)) (the eigenvalues l1, l2 of the product give
  // (sqrt l1 + sqrt l2)^2 = l1 + l2 + 2 sqrt(l1 l2)).
  const std::vector<std::vector<double>> a = {{0, 0}, {2, 1}, {1, 3}, {4, 2}, {3, 5}};
  const std::vector<std::vector<double>> b = {{1, 0}, {0, 2}, {5, 1}, {2, 6}};
  double ma[2], mb[2], sa[2][2], sb[2][2];
  Moments(a, ma, sa);
  Moments(b, mb, sb);
  const double tr_ab =
      sa[0][0] * sb[0][0] + sa[0][1] * sb[1][0] + sa[1][0] * sb[0][1] + sa[1][1] * sb[1][1];
  const double det_a = sa[0][0] * sa[1][1] - sa[0][1] * sa[1][0];
  const double det_b = sb[0][0] * sb[1][1] - sb[0][1] * sb[1][0];
  const double expected = std::pow(ma[0] - mb[0], 2) + std::pow(ma[1] - mb[1], 2) + sa[0][0] +
                          sa[1][1] + sb[0][0] + sb[1][1] -
                          2 * std::sqrt(tr_ab + 2 * std::sqrt(det_a * det_b));
  auto to_float = [](const std::vector<std::vector<double>>& rows) {
    std::vector<std::vector<float>> out;
    for (const auto& r : rows) out.push_back({static_cast<float>(r[0]), static_cast<float>(r[1])});
    return Rows(out);
  };
  EXPECT_NEAR(FrechetDistance(to_float(a), to_float(b)), expected, 1e-6);
}

TEST(PrecisionRecallTest, BallsOfTheKthNeighbour) {
  // Real points on a line 0, 1, 2, 3: with k = 1 every real ball has radius 1.
  const FeatureMatrix real = Rows({{0}, {1}, {2}, {3}});
  // Synthetic: 0.5 and 2.5 lie in real balls, 10 does not; their own radii (k = 1): 2, 2, 7.5.
  const FeatureMatrix synthetic = Rows({{0.5}, {2.5}, {10}});
  const PrecisionRecall pr = ImprovedPrecisionRecall(real, synthetic, 1);
  EXPECT_NEAR(pr.precision, 2.0 / 3.0, 1e-12);
  EXPECT_NEAR(pr.recall, 1.0, 1e-12);  // every real point is within 2 of 0.5 or 2.5, or 7.5 of 10
  const PrecisionRecall far = ImprovedPrecisionRecall(real, Rows({{100}, {101}, {103}}), 1);
  EXPECT_EQ(far.precision, 0.0);
  EXPECT_EQ(far.recall, 0.0);
  const PrecisionRecall same = ImprovedPrecisionRecall(real, real, 3);
  EXPECT_EQ(same.precision, 1.0);
  EXPECT_EQ(same.recall, 1.0);
}

TEST(MemorisationTest, ACopiedImageIsTheClosestPair) {
  const FeatureMatrix real = Rows({{0, 0, 0, 0}, {1, 1, 1, 1}, {0, 1, 0, 1}});
  const FeatureMatrix synthetic = Rows({{0.5, 0.5, 0.5, 0.5}, {0, 1, 0, 1}});  // a copy of real 2
  const Memorisation m = MemorisationCheck(real, synthetic, 1);
  ASSERT_EQ(m.closest.size(), 1u);
  EXPECT_EQ(m.closest[0].synthetic, 1);
  EXPECT_EQ(m.closest[0].real, 2);
  EXPECT_EQ(m.closest[0].distance, 0.0);
  // Real to real: every pair is sqrt(2) / 2 apart per pixel except 0 and 1 (1 apart).
  EXPECT_NEAR(m.real_to_real, std::sqrt(2.0) / 2, 1e-9);
  // Synthetic 0 is 0.5 from real 0 and 1 per pixel: median of {0.5, 0} is 0.25.
  EXPECT_NEAR(m.synthetic_to_real, 0.25, 1e-9);
}

TEST(SyntheticDicomTest, WrittenMarkedAndReadBackAsTheClientReadsThem) {
  SyntheticSet set;
  set.labels = {"cardiomegaly", "effusion"};
  set.classes = SynthClasses(set.labels);
  ASSERT_EQ(set.classes.size(), 3u);
  EXPECT_EQ(set.classes[2].name, "effusion");
  EXPECT_EQ(set.classes[2].states, (std::vector<int>{0, 1}));
  set.size = 8;
  set.provenance = "test";
  std::vector<float> ramp(64);
  for (int i = 0; i < 64; ++i) ramp[i] = i / 63.0f;
  for (size_t c = 0; c < set.classes.size(); ++c) set.images.push_back({c, ramp});
  const std::string dir = FreshTestDir() + "/synthetic";
  ASSERT_TRUE(WriteSyntheticSet(set, dir).ok());
  absl::StatusOr<ImageFolder> read = ReadImageFolder(dir, 8);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(read->pixels.rows, 3);
  EXPECT_EQ(read->skipped, 0);
  for (int i = 0; i < 64; ++i) EXPECT_NEAR(read->pixels.data[i], ramp[i], 1.0 / 4095 + 1e-6);
  absl::StatusOr<DicomImage> image = DecodeDicom(read->paths[0], 0);
  ASSERT_TRUE(image.ok()) << image.status();
  EXPECT_EQ(image->photometric, "MONOCHROME2");
  // Each image is a "patient" of its own, so that the client's split by patient has a test
  // split; all of them together load as a site's data.
  absl::StatusOr<Dataset> data = LoadDataset(dir, dir + "/labels.csv", 0.34);
  ASSERT_TRUE(data.ok()) << data.status();
  EXPECT_EQ(data->train.size() + data->test.size(), 3u);
  std::set<std::string> patients;
  for (const auto* split : {&data->train, &data->test}) {
    for (const Sample& s : *split) patients.insert(s.patient_id);
  }
  EXPECT_EQ(patients.size(), 3u);
  EXPECT_EQ(data->label_names, set.labels);
}

}  // namespace
}  // namespace fl
