#include "client/update.h"

#include <gtest/gtest.h>

namespace fl {
namespace {

JobSpec ThreeLabels(HeadMode mode) {
  JobSpec spec;
  for (const char* label : {"a", "b", "c"}) spec.add_labels(label);
  spec.set_head_mode(mode);
  return spec;
}

TEST(MapLabelsTest, MapsJobLabelsToThisSitesColumns) {
  // The site's table has columns in its own order and one the job does not know.
  auto map = MapLabels(ThreeLabels(HEAD_MODE_LABEL), {"c", "a"}, {"x", "a", "c"});
  ASSERT_TRUE(map.ok()) << map.status();
  EXPECT_EQ(map->column, (std::vector<int>{1, -1, 2}));  // b is not trained here: masked
  EXPECT_EQ(map->num_trained, 2);
}

TEST(MapLabelsTest, RefusesLabelsItCannotTrainNamingThem) {
  const JobSpec spec = ThreeLabels(HEAD_MODE_LABEL);
  auto foreign = MapLabels(spec, {"z"}, {"a", "z"});
  ASSERT_FALSE(foreign.ok());
  EXPECT_NE(foreign.status().message().find("\"z\" is not in the job's labels [a, b, c]"),
            std::string::npos)
      << foreign.status();
  auto missing = MapLabels(spec, {"b"}, {"a"});
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("\"b\" is not a column of this site's labels [a]"),
            std::string::npos)
      << missing.status();
  EXPECT_FALSE(MapLabels(spec, {}, {"a"}).ok());
  EXPECT_FALSE(MapLabels(JobSpec(), {"a"}, {"a"}).ok());
}

TEST(MapLabelsTest, DiffusionMayTrainNoneOfItsLabels) {
  JobSpec spec = ThreeLabels(HEAD_MODE_LABEL);
  spec.clear_model();
  spec.mutable_diffusion();
  auto none = MapLabels(spec, {}, {"x"});  // every finding unknown at this site
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_EQ(none->column, (std::vector<int>{-1, -1, -1}));
  EXPECT_EQ(none->num_trained, 0);
  auto some = MapLabels(spec, {"b"}, {"b"});
  ASSERT_TRUE(some.ok()) << some.status();
  EXPECT_EQ(some->column, (std::vector<int>{-1, 0, -1}));
  EXPECT_FALSE(MapLabels(spec, {"z"}, {"z"}).ok());
  spec.clear_labels();  // an unconditional model
  auto unconditional = MapLabels(spec, {}, {"x"});
  ASSERT_TRUE(unconditional.ok()) << unconditional.status();
  EXPECT_TRUE(unconditional->column.empty());
}

TEST(RoundSeedTest, StableAndDistinctPerJobSeedAndRound) {
  EXPECT_EQ(RoundSeed("job-1", 7, 3), RoundSeed("job-1", 7, 3));
  EXPECT_NE(RoundSeed("job-1", 7, 3), RoundSeed("job-2", 7, 3));
  EXPECT_NE(RoundSeed("job-1", 7, 3), RoundSeed("job-1", 8, 3));
  EXPECT_NE(RoundSeed("job-1", 7, 3), RoundSeed("job-1", 7, 4));
}

// A backbone of 2 values and a head of 3 labels x 2 features plus its bias.
TensorList Model(float backbone, float head) {
  return {{"conv.weight", {2}, {backbone, backbone}},
          {"fc.weight", {3, 2}, std::vector<float>(6, head)},
          {"fc.bias", {3}, std::vector<float>(3, head)}};
}

TEST(ComputeUpdateTest, LabelModeZeroesTheHeadRowsOfLabelsNotTrainedHere) {
  auto map = MapLabels(ThreeLabels(HEAD_MODE_LABEL), {"a", "c"}, {"a", "c"});
  ASSERT_TRUE(map.ok());
  auto update = ComputeUpdate(Model(1, 2), Model(1.5f, 3), /*site_mode=*/false, "fc.", *map);
  ASSERT_TRUE(update.ok()) << update.status();
  ASSERT_EQ(update->size(), 3u);
  EXPECT_EQ((*update)[0].data, (std::vector<float>{0.5f, 0.5f}));
  EXPECT_EQ((*update)[1].data, (std::vector<float>{1, 1, 0, 0, 1, 1}));  // row b is zero
  EXPECT_EQ((*update)[2].data, (std::vector<float>{1, 0, 1}));
}

TEST(ComputeUpdateTest, SiteModeSendsTheBackboneOnly) {
  auto map = MapLabels(ThreeLabels(HEAD_MODE_SITE), {"a"}, {"a"});
  ASSERT_TRUE(map.ok());
  auto update = ComputeUpdate(Model(1, 2), Model(0, 3), /*site_mode=*/true, "fc.", *map);
  ASSERT_TRUE(update.ok()) << update.status();
  ASSERT_EQ(update->size(), 1u);
  EXPECT_EQ((*update)[0].name, "conv.weight");
  EXPECT_EQ((*update)[0].data, (std::vector<float>{-1, -1}));
  EXPECT_EQ(HeadOf(Model(0, 3), "fc.").size(), 2u);
  EXPECT_EQ(FindTensor(Model(0, 3), "fc.bias")->shape, (std::vector<int64_t>{3}));
  EXPECT_EQ(FindTensor(Model(0, 3), "fc.other"), nullptr);
}

TEST(ComputeUpdateTest, RefusesALocalModelThatDoesNotMatchTheGlobalOne) {
  auto map = MapLabels(ThreeLabels(HEAD_MODE_LABEL), {"a"}, {"a"});
  ASSERT_TRUE(map.ok());
  TensorList reshaped = Model(0, 0);
  reshaped[0].shape = {1, 2};
  TensorList missing = Model(0, 0);
  missing.pop_back();
  for (const TensorList& local : {reshaped, missing}) {
    auto update = ComputeUpdate(Model(0, 0), local, false, "fc.", *map);
    ASSERT_FALSE(update.ok());
    EXPECT_EQ(update.status().code(), absl::StatusCode::kInternal) << update.status();
  }
}

}  // namespace
}  // namespace fl
