#include "server/aggregator.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <numeric>

namespace fl {
namespace {

// Model: a backbone tensor of 2 elements and a head "fc.weight" with 3 label rows of 2.
TensorList Global() {
  return {{"conv.weight", {2}, {1.0f, 2.0f}}, {"fc.weight", {3, 2}, {0, 0, 0, 0, 0, 0}}};
}

void FoldAll(Aggregator& agg, const TensorList& update, uint64_t weight, std::vector<size_t> rows,
             double scale = 1.0) {
  ASSERT_TRUE(agg.BeginUpdate(weight, std::move(rows), scale).ok());
  for (size_t k = 0; k < agg.layout().shared.size(); ++k) {
    const NamedTensor& t = update[agg.layout().global_index[k]];
    ASSERT_TRUE(agg.Fold(k, 0, t.data.data(), t.data.size()).ok());
  }
  agg.EndUpdate();
}

ServerOptimizer FedAvg(double learning_rate = 1.0) {
  ServerOptimizer fedavg;
  fedavg.set_kind(FEDAVG);
  fedavg.set_learning_rate(learning_rate);
  return fedavg;
}

// The bytes of every tensor of `model`, for bitwise comparison.
std::string Bytes(const TensorList& model) {
  std::string out;
  for (const NamedTensor& t : model) {
    out.append(reinterpret_cast<const char*>(t.data.data()), t.byte_size());
  }
  return out;
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
  ASSERT_TRUE(agg.BeginUpdate(2, {0, 2}).ok());
  const float conv[2] = {4, 4};
  ASSERT_TRUE(agg.Fold(0, 0, conv, 2).ok());
  ASSERT_TRUE(agg.Fold(1, 0, head.data(), 3).ok());  // a chunk boundary in the middle of row 1
  ASSERT_TRUE(agg.Fold(1, 3, head.data() + 3, 3).ok());
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
  FoldAll(agg, {{"conv.weight", {2}, {0.5, -0.5}}, {"fc.weight", {3, 2}, {0, 0, 0, 0, 0, 0}}}, 1,
          {0});
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

// FedAvgM: the velocity accumulates the average updates (v = 0.5 v + delta) and the model moves
// by learning_rate * v; the velocity alone is kept across a restart (no second moment).
TEST(AggregatorTest, ServerMomentumAccumulatesTheVelocity) {
  TensorList global = Global();
  ServerOptimizer fedavgm = FedAvg(1.0);
  fedavgm.set_momentum(0.5);
  ASSERT_TRUE(HasServerState(fedavgm));
  EXPECT_FALSE(HasServerState(FedAvg()));
  OptimizerMoments moments;
  for (int round = 0; round < 2; ++round) {
    Aggregator agg(MakeLayout(global, "fc.", HEAD_MODE_LABEL, 3), 3);
    FoldAll(agg, {{"conv.weight", {2}, {1, -2}}, {"fc.weight", {3, 2}, {0, 0, 0, 0, 0, 0}}}, 1,
            {0});
    ASSERT_TRUE(agg.Apply(fedavgm, global, &moments).ok());
  }
  // v1 = 1, v2 = 0.5 + 1 = 1.5: the backbone moved by 2.5 (and -5).
  EXPECT_FLOAT_EQ(global[0].data[0], 1.0f + 2.5f);
  EXPECT_FLOAT_EQ(global[0].data[1], 2.0f - 5.0f);
  EXPECT_FLOAT_EQ(moments.m[0].data[0], 1.5f);
  EXPECT_TRUE(moments.v.empty());
  const std::string path = ::testing::TempDir() + "/velocity.moments";
  ASSERT_TRUE(WriteMoments(path, moments).ok());
  absl::StatusOr<OptimizerMoments> read = ReadMoments(path, global);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(read->m[0].data, moments.m[0].data);
  EXPECT_TRUE(read->v.empty());
}

// Site mode: the next model takes the backbone from the sums and copies the private head; the
// aggregator is spent afterwards.
TEST(AggregatorTest, NextModelKeepsUnsharedTensorsAndSpendsTheAggregator) {
  const TensorList global = {{"conv.weight", {2}, {1.0f, 2.0f}},
                             {"fc.weight", {3, 2}, {1, 2, 3, 4, 5, 6}}};
  Aggregator agg(MakeLayout(global, "fc.", HEAD_MODE_SITE, 3), 3);
  ASSERT_TRUE(agg.BeginUpdate(4, {}).ok());
  const float conv[2] = {2, -2};
  ASSERT_TRUE(agg.Fold(0, 0, conv, 2).ok());
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

// Updates whose float sum depends on the order of its terms: values far apart in magnitude, that
// cancel, with different weights, clipping scales and label rows.
struct TestUpdate {
  TensorList tensors;
  uint64_t weight;
  std::vector<size_t> rows;
  double scale;
};
std::vector<TestUpdate> OrderSensitiveUpdates() {
  return {
      {{{"conv.weight", {2}, {1e-3f, 3.3f}}, {"fc.weight", {3, 2}, {0.1f, 7, 1e4f, 1, 2, 3}}},
       5,
       {0, 1},
       1.0},
      {{{"conv.weight", {2}, {1e4f, -1.7f}}, {"fc.weight", {3, 2}, {1e-4f, 1, -1e4f, 2, 0, 0}}},
       7,
       {0, 1, 2},
       1.0},
      {{{"conv.weight", {2}, {-1e4f, 2.9e-7f}}, {"fc.weight", {3, 2}, {3, 3, 0.3f, 3, 1, 1}}},
       7,
       {1},
       1.0},
      {{{"conv.weight", {2}, {0.37f, -1e-5f}}, {"fc.weight", {3, 2}, {-0.5f, 4, 7e3f, 5, 6, 7}}},
       13,
       {0, 2},
       0.3},
      {{{"conv.weight", {2}, {123.4f, 1e5f}}, {"fc.weight", {3, 2}, {1, 1, 1, 1, 1, 1}}},
       1,
       {2},
       0.77},
  };
}

// The model after folding `updates` in the order `order`, with FedAvg at learning rate 1.
std::string FoldInOrder(const std::vector<TestUpdate>& updates, const std::vector<size_t>& order) {
  TensorList global = Global();
  Aggregator agg(MakeLayout(global, "fc.", HEAD_MODE_LABEL, 3), 3);
  for (size_t u : order) {
    FoldAll(agg, updates[u].tensors, updates[u].weight, updates[u].rows, updates[u].scale);
  }
  EXPECT_TRUE(agg.Apply(FedAvg(), global, nullptr).ok());
  return Bytes(global);
}

// The backbone's first element as the float fold of earlier versions summed it, in `order`.
float FloatSumInOrder(const std::vector<TestUpdate>& updates, const std::vector<size_t>& order) {
  float sum = 0;
  for (size_t u : order) {
    AxpyFloat(static_cast<float>(updates[u].weight * updates[u].scale),
              updates[u].tensors[0].data.data(), &sum, 1);
  }
  return sum;
}

// The same updates give the same model, byte for byte, in every one of their 120 orders (the
// float fold of earlier versions did not: checked on the same data, so this test can fail).
TEST(AggregatorTest, EveryOrderGivesTheSameBytes) {
  const std::vector<TestUpdate> updates = OrderSensitiveUpdates();
  std::vector<size_t> order(updates.size());
  std::iota(order.begin(), order.end(), 0);
  const std::string first = FoldInOrder(updates, order);
  const float float_first = FloatSumInOrder(updates, order);
  bool float_differs = false;
  int orders = 0;
  do {
    ASSERT_EQ(FoldInOrder(updates, order), first) << "order " << orders;
    float_differs |= FloatSumInOrder(updates, order) != float_first;
    ++orders;
  } while (std::next_permutation(order.begin(), order.end()));
  EXPECT_EQ(orders, 120);
  EXPECT_TRUE(float_differs);
}

// Sums that leave the 64-bit low word (three values of 6e6 at weight 1: 6e6 × 2^40 fits, two of
// them do not) and terms that never fit (1e3 at the largest weight: about 2^82) are still exact
// and order-independent; in some orders the partial sums cross 2^63 and come back, in others not.
TEST(AggregatorTest, SumsBeyond64BitsAreExactInEveryOrder) {
  const uint64_t big_weight = Aggregator::kMaxWeight;
  const std::vector<TestUpdate> updates = {
      {{{"conv.weight", {2}, {6e6f, 1e3f}}, {"fc.weight", {3, 2}, {6e6f, 1, 1, 1, 1, 1}}},
       1,
       {0, 1, 2},
       1.0},
      {{{"conv.weight", {2}, {6e6f, -2.5f}}, {"fc.weight", {3, 2}, {6e6f, 2, 2, 2, 2, 2}}},
       1,
       {0, 1, 2},
       1.0},
      {{{"conv.weight", {2}, {6e6f, 0.125f}}, {"fc.weight", {3, 2}, {-6e6f, 3, 3, 3, 3, 3}}},
       1,
       {0, 1, 2},
       1.0},
      {{{"conv.weight", {2}, {-6e6f, 7}}, {"fc.weight", {3, 2}, {-6e6f, 4, 4, 4, 4, 4}}},
       1,
       {0, 1, 2},
       1.0},
      {{{"conv.weight", {2}, {1e-3f, 1e3f}}, {"fc.weight", {3, 2}, {1e-6f, 5, 5, 5, 5, 5}}},
       big_weight,
       {0},
       1.0},
  };
  std::vector<size_t> order(updates.size());
  std::iota(order.begin(), order.end(), 0);
  const std::string first = FoldInOrder(updates, order);
  do {
    ASSERT_EQ(FoldInOrder(updates, order), first);
  } while (std::next_permutation(order.begin(), order.end()));
  // And the bytes are the weighted mean.
  TensorList global = Global();
  Aggregator agg(MakeLayout(global, "fc.", HEAD_MODE_LABEL, 3), 3);
  for (const TestUpdate& u : updates) FoldAll(agg, u.tensors, u.weight, u.rows, u.scale);
  const TensorList before = Global();
  ASSERT_TRUE(agg.Apply(FedAvg(), global, nullptr).ok());
  for (size_t k = 0; k < 2; ++k) {
    for (size_t i = 0; i < global[k].data.size(); ++i) {
      long double sum = 0, weight = 0;
      for (const TestUpdate& u : updates) {
        if (k == 1 && std::find(u.rows.begin(), u.rows.end(), i / 2) == u.rows.end()) continue;
        sum += static_cast<long double>(u.weight) * u.tensors[k].data[i];
        weight += u.weight;
      }
      EXPECT_FLOAT_EQ(global[k].data[i], before[k].data[i] + static_cast<float>(sum / weight))
          << k << " " << i;
    }
  }
}

// A refused chunk is taken back exactly also where the sum had left 64 bits.
TEST(AggregatorTest, RefusedChunkBeyond64BitsLeavesNoTrace) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  TensorList global = Global();
  Aggregator agg(MakeLayout(global, "fc.", HEAD_MODE_SITE, 3), 3);
  const float big[2] = {6e6f, 1e3f};
  const float bad[2] = {6e6f, nan};
  ASSERT_TRUE(agg.BeginUpdate(1, {}).ok());
  ASSERT_TRUE(agg.Fold(0, 0, big, 2).ok());
  agg.EndUpdate();
  ASSERT_TRUE(agg.BeginUpdate(1, {}).ok());
  EXPECT_EQ(agg.Fold(0, 0, bad, 2).code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(agg.Fold(0, 0, big, 2).ok());
  agg.EndUpdate();
  ASSERT_TRUE(agg.Apply(FedAvg(), global, nullptr).ok());
  EXPECT_EQ(global[0].data, std::vector<float>({1 + 6e6f, 2 + 1e3f}));
}

// The exact sum is the weighted mean (to far below a float's resolution), also in chunks split
// mid-row, and with clipping scales.
TEST(AggregatorTest, ExactSumIsTheWeightedMean) {
  const std::vector<TestUpdate> updates = OrderSensitiveUpdates();
  TensorList global = Global();
  Aggregator agg(MakeLayout(global, "fc.", HEAD_MODE_LABEL, 3), 3);
  for (const TestUpdate& u : updates) {
    ASSERT_TRUE(agg.BeginUpdate(u.weight, u.rows, u.scale).ok());
    const std::vector<float>& head = u.tensors[1].data;
    ASSERT_TRUE(agg.Fold(0, 0, u.tensors[0].data.data(), 2).ok());
    for (size_t at = 0; at < head.size(); ++at) ASSERT_TRUE(agg.Fold(1, at, &head[at], 1).ok());
    agg.EndUpdate();
  }
  const TensorList before = Global();
  ASSERT_TRUE(agg.Apply(FedAvg(), global, nullptr).ok());
  for (size_t i = 0; i < 2; ++i) {  // backbone: every update
    double sum = 0, weight = 0;
    for (const TestUpdate& u : updates) {
      sum += u.weight * u.scale * double{u.tensors[0].data[i]};
      weight += u.weight;
    }
    EXPECT_FLOAT_EQ(global[0].data[i], before[0].data[i] + static_cast<float>(sum / weight)) << i;
  }
  for (size_t i = 0; i < 6; ++i) {  // head: the updates that carry the row
    double sum = 0, weight = 0;
    for (const TestUpdate& u : updates) {
      if (std::find(u.rows.begin(), u.rows.end(), i / 2) == u.rows.end()) continue;
      sum += u.weight * u.scale * double{u.tensors[1].data[i]};
      weight += u.weight;
    }
    EXPECT_FLOAT_EQ(global[1].data[i], static_cast<float>(sum / weight)) << i;
  }
}

// NaN, infinities and values whose weighted contribution exceeds the bound are refused, and the
// refused call leaves no trace: the aggregate is that of the accepted values alone.
TEST(AggregatorTest, NonFiniteAndOutOfRangeValuesRefused) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  const float too_big = static_cast<float>(Aggregator::kMaxContribution / 10 * 2);
  for (float bad : {nan, inf, -inf, too_big, -too_big}) {
    TensorList global = Global();
    Aggregator agg(MakeLayout(global, "fc.", HEAD_MODE_LABEL, 3), 3);
    ASSERT_TRUE(agg.BeginUpdate(10, {0, 1, 2}).ok());
    const float conv[2] = {1, 2};
    ASSERT_TRUE(agg.Fold(0, 0, conv, 2).ok());
    const float head[6] = {1, 1, 1, 1, bad, 1};
    const absl::Status refused = agg.Fold(1, 0, head, 6);
    EXPECT_EQ(refused.code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_NE(refused.message().find("fc.weight"), std::string::npos) << refused;
    EXPECT_EQ(Aggregator::CheckValues(10, head, 6).code(), absl::StatusCode::kInvalidArgument)
        << bad;
    const float good[6] = {1, 1, 1, 1, 1, 1};
    ASSERT_TRUE(agg.Fold(1, 0, good, 6).ok());
    agg.EndUpdate();
    ASSERT_TRUE(agg.Apply(FedAvg(), global, nullptr).ok());
    EXPECT_EQ(global[1].data, std::vector<float>(6, 1.0f)) << bad;  // no half-added chunk
  }
  // At the bound itself the value is taken; a weight of 1 allows ten times more than 10 does.
  const float at_bound = static_cast<float>(Aggregator::kMaxContribution / 16);
  EXPECT_TRUE(Aggregator::CheckValues(16, &at_bound, 1).ok());
  EXPECT_FALSE(Aggregator::CheckValues(17, &at_bound, 1).ok());
  EXPECT_TRUE(Aggregator::CheckValues(1, &too_big, 1).ok());
}

TEST(AggregatorTest, WeightsScalesAndMisuseRefused) {
  Aggregator agg(MakeLayout(Global(), "fc.", HEAD_MODE_LABEL, 3), 3);
  EXPECT_EQ(agg.BeginUpdate(0, {}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(agg.BeginUpdate(Aggregator::kMaxWeight + 1, {}).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(agg.BeginUpdate(1, {}, 1.5).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(agg.BeginUpdate(1, {}, 0).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(agg.BeginUpdate(1, {}, std::nan("")).code(), absl::StatusCode::kInvalidArgument);
  const float one = 1;
  EXPECT_EQ(agg.Fold(0, 0, &one, 1).code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(agg.BeginUpdate(Aggregator::kMaxWeight, {}).ok());
  EXPECT_EQ(agg.BeginUpdate(1, {}).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(agg.Fold(2, 0, &one, 1).code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(agg.Fold(0, 2, &one, 1).code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(agg.NextModel(FedAvg(), Global(), nullptr).status().code(),
            absl::StatusCode::kFailedPrecondition);  // inside an update
}

}  // namespace
}  // namespace fl
