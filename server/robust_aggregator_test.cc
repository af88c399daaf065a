#include "server/robust_aggregator.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <memory>

#include "absl/strings/str_cat.h"
#include "common/test_dir.h"

namespace fl {
namespace {

TEST(RobustMathTest, MedianOfOddAndEvenCounts) {
  std::vector<float> odd = {5, 1, 3};
  EXPECT_FLOAT_EQ(MedianOf(odd.data(), odd.size()), 3);
  std::vector<float> even = {4, 1, 3, 2};
  EXPECT_FLOAT_EQ(MedianOf(even.data(), even.size()), 2.5f);
  std::vector<float> one = {-7};
  EXPECT_FLOAT_EQ(MedianOf(one.data(), 1), -7);
}

TEST(RobustMathTest, TrimmedMeanDropsFloorOfFractionAtEachEnd) {
  const std::vector<float> values = {30, 0, 1000, 2, 0, 10, 3, 20, 1, 0};
  std::vector<float> v = values;
  EXPECT_FLOAT_EQ(TrimmedMeanOf(v.data(), v.size(), 0.0), 106.6f);  // plain mean
  v = values;
  EXPECT_FLOAT_EQ(TrimmedMeanOf(v.data(), v.size(), 0.1), 66.0f / 8);  // without 0 and 1000
  v = values;
  EXPECT_FLOAT_EQ(TrimmedMeanOf(v.data(), v.size(), 0.3), 4.0f);  // (1 + 2 + 3 + 10) / 4
  v = values;
  EXPECT_FLOAT_EQ(TrimmedMeanOf(v.data(), v.size(), 0.15), 66.0f / 8);  // floor(1.5) = 1
}

// Layout: a backbone "conv.weight" of 3 values and a head "fc.weight" of 2 label rows of 2.
TensorList Global() {
  return {{"conv.weight", {3}, {10, 20, 30}}, {"fc.weight", {2, 2}, {1, 1, 2, 2}}};
}

class RobustAggregatorTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = FreshTestDir(); }

  // Spools one update (backbone values, then head values) carrying head rows `rows`.
  void Add(const std::vector<float>& conv, const std::vector<float>& head, std::vector<size_t> rows,
           double scale = 1.0) {
    const std::string path = absl::StrCat(dir_, "/spool-", updates_.size());
    std::unique_ptr<FILE, int (*)(FILE*)> out(std::fopen(path.c_str(), "wb"), &std::fclose);
    ASSERT_TRUE(out);
    ASSERT_EQ(conv.size(), 3u);
    ASSERT_EQ(head.size(), 4u);
    ASSERT_EQ(std::fwrite(conv.data(), sizeof(float), conv.size(), out.get()), conv.size());
    ASSERT_EQ(std::fwrite(head.data(), sizeof(float), head.size(), out.get()), head.size());
    updates_.push_back({path, std::move(rows), scale, 7 * sizeof(float)});
  }

  absl::StatusOr<RobustResult> Combine(Aggregation rule, double trim = 0.1) {
    RobustOptions options;
    options.rule = rule;
    options.trim_fraction = trim;
    options.block_floats = 2;  // blocks cross the tensor's rows
    return CombineSpools(layout_, 2, updates_, options);
  }

  std::string dir_;
  UpdateLayout layout_ = MakeLayout(Global(), "fc.", HEAD_MODE_LABEL, 2);
  std::vector<SpooledUpdate> updates_;
};

TEST_F(RobustAggregatorTest, MedianOverAllForBackboneAndOverCarriersForHeadRows) {
  Add({1, 10, -1}, {1, 1, 5, 5}, {0, 1});
  Add({2, 20, -3}, {3, 3, 99, 99}, {0});  // its row 1 is not its label: ignored
  Add({9, 30, -2}, {2, 2, 7, 7}, {0, 1});
  auto result = Combine(AGGREGATION_MEDIAN);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->combined[0], std::vector<float>({2, 20, -2}));
  // Row 0: median of 1, 3, 2. Row 1: two carriers, so the mean of 5 and 7.
  EXPECT_EQ(result->combined[1], std::vector<float>({2, 2, 6, 6}));
  EXPECT_EQ(result->row_covered, std::vector<bool>({true, true}));
  EXPECT_EQ(result->updates, 3u);
}

TEST_F(RobustAggregatorTest, MedianOfEvenCountAndUncoveredRow) {
  Add({1, 0, 0}, {1, 2, 0, 0}, {0});
  Add({4, 0, 0}, {3, 4, 0, 0}, {0});
  Add({2, 0, 0}, {5, 6, 0, 0}, {0});
  Add({8, 0, 0}, {7, 8, 0, 0}, {0});
  auto result = Combine(AGGREGATION_MEDIAN);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_FLOAT_EQ(result->combined[0][0], 3.0f);  // (2 + 4) / 2
  EXPECT_EQ(result->combined[1], std::vector<float>({4, 5, 0, 0}));
  EXPECT_EQ(result->row_covered, std::vector<bool>({true, false}));
}

TEST_F(RobustAggregatorTest, TrimmedMean) {
  Add({1, -100, 0}, {0, 0, 0, 0}, {});
  Add({2, 0, 0}, {0, 0, 0, 0}, {});
  Add({3, 1, 0}, {0, 0, 0, 0}, {});
  Add({4, 2, 0}, {0, 0, 0, 0}, {});
  Add({100, 3, 10}, {0, 0, 0, 0}, {});
  auto result = Combine(AGGREGATION_TRIMMED_MEAN, 0.2);  // drops 1 at each end of 5
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->combined[0], std::vector<float>({3, 1, 0}));
  EXPECT_EQ(result->row_covered, std::vector<bool>({false, false}));
}

TEST_F(RobustAggregatorTest, ValuesAreScaledBeforeCombining) {
  Add({1, 0, 0}, {0, 0, 0, 0}, {});
  Add({10, 0, 0}, {0, 0, 0, 0}, {});
  Add({50, 0, 0}, {0, 0, 0, 0}, {}, /*scale=*/0.1);  // counts as 5
  auto result = Combine(AGGREGATION_MEDIAN);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_FLOAT_EQ(result->combined[0][0], 5.0f);
}

// One wild site: it dominates the weighted mean and barely moves the median.
TEST_F(RobustAggregatorTest, WildUpdateBarelyMovesTheMedian) {
  const std::vector<float> honest = {0.9f, 1.0f, 1.1f, 1.05f};
  Aggregator mean(layout_, 2);
  for (float v : honest) {
    Add({v, v, v}, {v, v, v, v}, {0, 1});
    const float conv[3] = {v, v, v}, head[4] = {v, v, v, v};
    ASSERT_TRUE(mean.BeginUpdate(10, {0, 1}).ok());
    ASSERT_TRUE(mean.Fold(0, 0, conv, 3).ok());
    ASSERT_TRUE(mean.Fold(1, 0, head, 4).ok());
    mean.EndUpdate();
  }
  Add({1e6f, 1e6f, 1e6f}, {1e6f, 1e6f, 1e6f, 1e6f}, {0, 1});
  const float wild[4] = {1e6f, 1e6f, 1e6f, 1e6f};
  ASSERT_TRUE(mean.BeginUpdate(10, {0, 1}).ok());
  ASSERT_TRUE(mean.Fold(0, 0, wild, 3).ok());
  ASSERT_TRUE(mean.Fold(1, 0, wild, 4).ok());
  mean.EndUpdate();
  ServerOptimizer fedavg;
  fedavg.set_kind(FEDAVG);
  fedavg.set_learning_rate(1.0);
  TensorList by_mean = Global();
  OptimizerMoments moments;
  ASSERT_TRUE(mean.Apply(fedavg, by_mean, &moments).ok());
  EXPECT_GT(by_mean[0].data[0] - 10, 1e5);  // (sum of honest + 1e6) / 5

  auto result = Combine(AGGREGATION_MEDIAN);
  ASSERT_TRUE(result.ok()) << result.status();
  for (const std::vector<float>& tensor : result->combined) {
    for (float v : tensor) EXPECT_FLOAT_EQ(v, 1.05f);  // the middle of 0.9, 1, 1.05, 1.1, 1e6
  }
}

// The combined update goes through the same server optimizer as the mean: one update gives
// the same FedAdam step either way, and a row nobody carried stays unchanged.
TEST_F(RobustAggregatorTest, FromAverageAppliesLikeTheMean) {
  Add({0.5f, -0.5f, 0}, {0.25f, 0.25f, 9, 9}, {0});
  Aggregator mean(layout_, 2);
  const float conv[3] = {0.5f, -0.5f, 0}, head[4] = {0.25f, 0.25f, 9, 9};
  ASSERT_TRUE(mean.BeginUpdate(3, {0}).ok());
  ASSERT_TRUE(mean.Fold(0, 0, conv, 3).ok());
  ASSERT_TRUE(mean.Fold(1, 0, head, 4).ok());
  mean.EndUpdate();
  auto result = Combine(AGGREGATION_MEDIAN);
  ASSERT_TRUE(result.ok()) << result.status();
  auto robust = Aggregator::FromAverage(layout_, 2, std::move(result->combined),
                                        result->row_covered, result->updates);
  ASSERT_TRUE(robust.ok()) << robust.status();

  ServerOptimizer adam;
  adam.set_kind(FEDADAM);
  adam.set_learning_rate(0.1);
  adam.set_beta1(0.9);
  adam.set_beta2(0.99);
  adam.set_tau(1e-3);
  TensorList by_mean = Global(), by_median = Global();
  OptimizerMoments m1, m2;
  ASSERT_TRUE(mean.Apply(adam, by_mean, &m1).ok());
  ASSERT_TRUE(robust->Apply(adam, by_median, &m2).ok());
  for (size_t t = 0; t < by_mean.size(); ++t) EXPECT_EQ(by_median[t].data, by_mean[t].data);
  EXPECT_NEAR(by_median[0].data[0], 10 + 0.1 * 0.05 / 0.051, 1e-5);
  EXPECT_FLOAT_EQ(by_median[1].data[2], 2.0f);  // row 1: nobody carried it
  EXPECT_EQ(m2.m[0].data, m1.m[0].data);
}

TEST_F(RobustAggregatorTest, FromAverageRefusesWrongSizes) {
  EXPECT_EQ(Aggregator::FromAverage(layout_, 2, {{1, 2, 3}}, {true, true}, 1).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(
      Aggregator::FromAverage(layout_, 2, {{1, 2}, {1, 2, 3, 4}}, {true, true}, 1).status().code(),
      absl::StatusCode::kInvalidArgument);
}

TEST_F(RobustAggregatorTest, BadInputsRefused) {
  EXPECT_EQ(Combine(AGGREGATION_MEDIAN).status().code(), absl::StatusCode::kFailedPrecondition);
  Add({1, 2, 3}, {0, 0, 0, 0}, {0});
  EXPECT_EQ(Combine(AGGREGATION_TRIMMED_MEAN, 0.5).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Combine(AGGREGATION_MEAN).status().code(), absl::StatusCode::kInvalidArgument);
  updates_[0].label_rows = {2};
  EXPECT_EQ(Combine(AGGREGATION_MEDIAN).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(RobustAggregatorTest, MissingOrShortSpoolIsDataLoss) {
  Add({1, 2, 3}, {0, 0, 0, 0}, {0});
  Add({1, 2, 3}, {0, 0, 0, 0}, {0});
  std::filesystem::resize_file(updates_[1].path, 5 * sizeof(float));
  auto result = Combine(AGGREGATION_MEDIAN);
  EXPECT_EQ(result.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(result.status().message().find(updates_[1].path), std::string::npos);
  std::filesystem::remove(updates_[1].path);
  EXPECT_EQ(Combine(AGGREGATION_MEDIAN).status().code(), absl::StatusCode::kDataLoss);
}

}  // namespace
}  // namespace fl
