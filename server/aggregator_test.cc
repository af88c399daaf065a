#include "server/aggregator.h"

#include <gtest/gtest.h>

namespace fl {
namespace {

// Model: a backbone tensor of 2 elements and a head "fc.weight" with 3 label rows of 2.
TensorList Global() {
  return {{"conv.weight", {2}, {1.0f, 2.0f}}, {"fc.weight", {3, 2}, {0, 0, 0, 0, 0, 0}}};
}

void FoldAll(Aggregator& agg, const TensorList& update, double weight,
             std::vector<size_t> rows) {
  agg.BeginUpdate(weight, std::move(rows));
  for (size_t k = 0; k < agg.layout().shared.size(); ++k) {
    const NamedTensor& t = update[agg.layout().global_index[k]];
    agg.Fold(k, 0, t.data.data(), t.data.size());
  }
  agg.EndUpdate();
}

TEST(AggregatorTest, FedAvgWeightedByLabelRows) {
  TensorList global = Global();
  Aggregator agg(MakeLayout(global, "fc.", HEAD_MODE_LABEL, 3), 3);
  // Site A (100 samples) trains labels 0 and 1; site B (300 samples) trains label 1 only.
  FoldAll(agg, {{"conv.weight", {2}, {1, 1}}, {"fc.weight", {3, 2}, {1, 1, 2, 2, 9, 9}}}, 100,
          {0, 1});
  FoldAll(agg, {{"conv.weight", {2}, {-1, 3}}, {"fc.weight", {3, 2}, {7, 7, 6, 6, 9, 9}}}, 300,
          {1});
  ServerOptimizer fedavg;
  fedavg.set_kind(FEDAVG);
  fedavg.set_learning_rate(1.0);
  OptimizerMoments moments;
  ASSERT_TRUE(agg.Apply(fedavg, global, &moments).ok());
  // Backbone: (100*1 + 300*-1)/400 = -0.5 and (100*1 + 300*3)/400 = 2.5, added to 1 and 2.
  EXPECT_FLOAT_EQ(global[0].data[0], 0.5f);
  EXPECT_FLOAT_EQ(global[0].data[1], 4.5f);
  // Row 0: only A has it -> 1. Row 1: (100*2 + 300*6)/400 = 5. Row 2: nobody -> unchanged 0.
  EXPECT_FLOAT_EQ(global[1].data[0], 1.0f);
  EXPECT_FLOAT_EQ(global[1].data[2], 5.0f);
  EXPECT_FLOAT_EQ(global[1].data[4], 0.0f);
  EXPECT_FLOAT_EQ(global[1].data[5], 0.0f);
}

TEST(AggregatorTest, SiteModeSharesOnlyTheBackbone) {
  UpdateLayout layout = MakeLayout(Global(), "fc.", HEAD_MODE_SITE, 3);
  ASSERT_EQ(layout.shared.size(), 1u);
  EXPECT_EQ(layout.shared[0].name, "conv.weight");
}

TEST(AggregatorTest, FoldInPiecesEqualsWhole) {
  TensorList global = Global();
  Aggregator agg(MakeLayout(global, "fc.", HEAD_MODE_LABEL, 3), 3);
  const std::vector<float> head = {1, 2, 3, 4, 5, 6};
  agg.BeginUpdate(2.0, {0, 2});
  const float conv[2] = {4, 4};
  agg.Fold(0, 0, conv, 2);
  agg.Fold(1, 0, head.data(), 3);  // a chunk boundary in the middle of row 1
  agg.Fold(1, 3, head.data() + 3, 3);
  agg.EndUpdate();
  ServerOptimizer fedavg;
  fedavg.set_kind(FEDAVG);
  fedavg.set_learning_rate(1.0);
  OptimizerMoments moments;
  ASSERT_TRUE(agg.Apply(fedavg, global, &moments).ok());
  EXPECT_EQ(global[1].data, std::vector<float>({1, 2, 0, 0, 5, 6}));
}

TEST(AggregatorTest, FedAdamFirstStepMovesByLearningRate) {
  TensorList global = Global();
  Aggregator agg(MakeLayout(global, "fc.", HEAD_MODE_LABEL, 3), 3);
  FoldAll(agg, {{"conv.weight", {2}, {0.5, -0.5}}, {"fc.weight", {3, 2}, {0, 0, 0, 0, 0, 0}}},
          1, {0});
  ServerOptimizer adam;
  adam.set_kind(FEDADAM);
  adam.set_learning_rate(0.1);
  adam.set_beta1(0.9);
  adam.set_beta2(0.99);
  adam.set_tau(1e-3);
  OptimizerMoments moments;
  ASSERT_TRUE(agg.Apply(adam, global, &moments).ok());
  // m = 0.05, v = 0.0025, step = 0.1 * 0.05 / (0.05 + 0.001).
  EXPECT_NEAR(global[0].data[0], 1.0 + 0.1 * 0.05 / 0.051, 1e-6);
  EXPECT_NEAR(global[0].data[1], 2.0 - 0.1 * 0.05 / 0.051, 1e-6);
  EXPECT_FLOAT_EQ(moments.m[0].data[0], 0.05f);
}

// Site mode: the next model takes the backbone from the sums and copies the private head; the
// aggregator is spent afterwards.
TEST(AggregatorTest, NextModelKeepsUnsharedTensorsAndSpendsTheAggregator) {
  const TensorList global = {{"conv.weight", {2}, {1.0f, 2.0f}},
                             {"fc.weight", {3, 2}, {1, 2, 3, 4, 5, 6}}};
  Aggregator agg(MakeLayout(global, "fc.", HEAD_MODE_SITE, 3), 3);
  agg.BeginUpdate(4.0, {});
  const float conv[2] = {2, -2};
  agg.Fold(0, 0, conv, 2);
  agg.EndUpdate();
  ServerOptimizer fedavg;
  fedavg.set_kind(FEDAVG);
  fedavg.set_learning_rate(0.5);
  auto next = agg.NextModel(fedavg, global, nullptr);
  ASSERT_TRUE(next.ok()) << next.status();
  EXPECT_EQ((*next)[0].data, std::vector<float>({2, 1}));
  EXPECT_EQ((*next)[1].data, global[1].data);
  EXPECT_EQ((*next)[1].name, "fc.weight");
  EXPECT_EQ(agg.NextModel(fedavg, global, nullptr).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST(AggregatorTest, ApplyWithoutUpdatesRefused) {
  TensorList global = Global();
  Aggregator agg(MakeLayout(global, "fc.", HEAD_MODE_LABEL, 3), 3);
  OptimizerMoments moments;
  EXPECT_FALSE(agg.Apply(ServerOptimizer(), global, &moments).ok());
}

}  // namespace
}  // namespace fl
