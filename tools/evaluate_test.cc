#include "tools/evaluate.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>

#include "absl/strings/match.h"
#include "client/dataset.h"
#include "common/safetensors.h"
#include "common/test_dir.h"
#include "fl/report.pb.h"
#include "google/protobuf/util/json_util.h"
#include "gtest/gtest.h"
#include "tools/phantom.h"

namespace fl {
namespace {

constexpr float kNaN = std::nanf("");

Prediction P(const std::string& sex, int age, std::vector<float> probs,
             std::vector<float> targets) {
  return Prediction{"uid", "pid", sex, age, std::move(probs), std::move(targets)};
}

const GroupResult& Group(const EvaluationReport& r, const std::string& attribute,
                         const std::string& group) {
  for (const GroupResult& g : r.groups) {
    if (g.attribute == attribute && g.group == group) return g;
  }
  ADD_FAILURE() << "no group " << attribute << "=" << group;
  static const GroupResult kNone;
  return kNone;
}

TEST(AgeBandTest, BandsFromEdges) {
  const std::vector<int> edges = {40, 60};
  EXPECT_EQ(AgeBandNames(edges), (std::vector<std::string>{"<40", "40-59", "60+"}));
  EXPECT_EQ(AgeBand(39, edges), 0);
  EXPECT_EQ(AgeBand(40, edges), 1);
  EXPECT_EQ(AgeBand(59, edges), 1);
  EXPECT_EQ(AgeBand(60, edges), 2);
  EXPECT_EQ(AgeBand(-1, edges), -1);
}

// Worked by hand: label a right for 1, 3, 5 of 5; label b (2 unknown) right for 1, 3, 5 of 4.
TEST(SummarizeTest, HandComputedAccuracyAndSpd) {
  const std::vector<Prediction> preds = {
      P("M", 30, {0.9f, 0.2f}, {1, 0}),     // a right, b right
      P("M", 45, {0.8f, 0.7f}, {0, kNaN}),  // a wrong, b unknown
      P("F", 65, {0.3f, 0.6f}, {0, 1}),     // a right, b right
      P("F", 70, {0.6f, 0.1f}, {0, 1}),     // a wrong, b wrong
      P("", -1, {0.1f, 0.9f}, {0, 1}),      // right, right; in no group
  };
  const EvaluationReport r = Summarize({"a", "b"}, preds, 0.5, {40, 60});
  EXPECT_EQ(r.images, 5);
  ASSERT_EQ(r.labels.size(), 2u);
  EXPECT_DOUBLE_EQ(r.labels[0].auroc, 1.0);
  EXPECT_EQ(r.labels[0].positives, 1);
  EXPECT_EQ(r.labels[0].negatives, 4);
  EXPECT_NEAR(r.labels[1].auroc, 2.0 / 3, 1e-9);
  EXPECT_NEAR(r.mean_auroc, (1.0 + 2.0 / 3) / 2, 1e-9);
  EXPECT_NEAR(r.accuracy, (0.6 + 0.75) / 2, 1e-9);
  // M: a 1/2, b 1/1 -> 0.75; F: a 1/2, b 1/2 -> 0.5.
  EXPECT_EQ(Group(r, "sex", "M").n, 2);
  EXPECT_NEAR(Group(r, "sex", "M").accuracy, 0.75, 1e-9);
  EXPECT_NEAR(Group(r, "sex", "F").accuracy, 0.5, 1e-9);
  EXPECT_NEAR(Group(r, "sex", "M").spd, 0.25, 1e-9);
  EXPECT_NEAR(Group(r, "sex", "F").spd, -0.25, 1e-9);
  // <40: 1.0 (n 1); 40-59: 0.0 (n 1, label b unknown); 60+: 0.5 (n 2).
  EXPECT_NEAR(Group(r, "age", "<40").spd, 1.0 - (0.0 + 2 * 0.5) / 3, 1e-9);
  EXPECT_NEAR(Group(r, "age", "40-59").spd, 0.0 - (1.0 + 2 * 0.5) / 3, 1e-9);
  EXPECT_NEAR(Group(r, "age", "60+").spd, 0.5 - (1.0 + 0.0) / 2, 1e-9);
  EXPECT_EQ(Group(r, "age", "60+").n, 2);
}

// Threshold 0: per label, as many images called positive as the label has positives. A model
// whose scores are all below 0.5 but rank well still gets credit for its ranking.
TEST(SummarizeTest, PrevalenceThresholdPerLabel) {
  const std::vector<Prediction> predictions = {
      P("M", 30, {0.30f, 0.9f}, {1, 0}), P("M", 50, {0.20f, 0.8f}, {1, 1}),
      P("F", 70, {0.10f, 0.7f}, {0, 1}), P("F", 70, {0.05f, 0.1f}, {0, 0})};
  const EvaluationReport fixed = Summarize({"x", "y"}, predictions, 0.5, {40, 60});
  const EvaluationReport matched = Summarize({"x", "y"}, predictions, 0, {40, 60});
  // Label x at 0.5: every image called negative, 2 of 4 right; matched (2 positives: scores
  // >= 0.20), all 4 right. Label y at 0.5: 3 of 4 right; matched (scores >= 0.8), 2 of 4.
  EXPECT_DOUBLE_EQ(fixed.accuracy, (0.5 + 0.75) / 2);
  EXPECT_DOUBLE_EQ(matched.accuracy, (1.0 + 0.5) / 2);
  EXPECT_DOUBLE_EQ(Group(matched, "sex", "M").accuracy, (1.0 + 0.5) / 2);
  EXPECT_DOUBLE_EQ(Group(matched, "sex", "F").accuracy, (1.0 + 0.5) / 2);
}

TEST(SummarizeTest, ThresholdIsInclusiveAndEmptyGroupsAreNaN) {
  const std::vector<Prediction> preds = {P("M", 50, {0.5f}, {1}), P("M", 50, {0.49f}, {1})};
  const EvaluationReport r = Summarize({"a"}, preds, 0.5, {40, 60});
  EXPECT_NEAR(Group(r, "sex", "M").accuracy, 0.5, 1e-9);
  EXPECT_TRUE(std::isnan(Group(r, "sex", "M").spd));  // no other group to compare with
  EXPECT_TRUE(std::isnan(Group(r, "sex", "F").accuracy));
  EXPECT_EQ(Group(r, "sex", "F").n, 0);
  EXPECT_TRUE(std::isnan(r.mean_auroc));  // one class only
  const std::string json = ReportJson(r);
  EXPECT_FALSE(absl::StrContains(json, "mean_auroc")) << json;  // undefined: left out
  EXPECT_FALSE(absl::StrContains(json, "NaN")) << json;
  EXPECT_TRUE(absl::StrContains(json, "\"positives\": 2")) << json;
}

// The JSON is fl.EvaluationReportJson: it parses back (strictly: no unknown field) to the
// report's numbers, with the declared snake_case names.
TEST(SummarizeTest, JsonIsTheReportProtoAndRoundTrips) {
  const std::vector<Prediction> preds = {P("M", 30, {0.9f, 0.2f}, {1, 0}),
                                         P("F", 70, {0.1f, 0.7f}, {0, kNaN}),
                                         P("F", 45, {0.6f, 0.4f}, {0, 0})};
  const EvaluationReport r = Summarize({"a", "b"}, preds, 0.5, {40, 60});
  const std::string json = ReportJson(r);
  EXPECT_TRUE(absl::StrContains(json, "\"skipped_files\": 0")) << json;
  EvaluationReportJson back;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(json, &back).ok()) << json;
  EXPECT_EQ(back.images(), 3u);
  ASSERT_EQ(back.labels_size(), 2);
  EXPECT_EQ(back.labels(0).label(), "a");
  EXPECT_DOUBLE_EQ(back.labels(0).auroc(), r.labels[0].auroc);
  EXPECT_FALSE(back.labels(1).has_auroc());  // b: negatives only
  EXPECT_EQ(back.labels(1).negatives(), 2u);
  ASSERT_EQ(back.groups_size(), static_cast<int>(r.groups.size()));
  EXPECT_EQ(back.groups(0).attribute(), "sex");
  EXPECT_DOUBLE_EQ(back.groups(0).accuracy(), r.groups[0].accuracy);
}

TEST(SummarizeTest, ScoresCsvHasOneRowPerImageWithUnknownTargetsEmpty) {
  std::vector<Prediction> preds = {P("M", 30, {0.25f, 0.5f}, {1, kNaN}),
                                   P("", -1, {0.125f, 1.0f}, {0, 1})};
  preds[1].key = "1.2.3";
  preds[1].patient_id = "site,\"x\"";
  EXPECT_EQ(ScoresCsv({"a", "b"}, preds),
            "key,patient_id,sex,age,a_score,a_target,b_score,b_target\n"
            "uid,pid,M,30,0.25,1,0.5,\n"
            "1.2.3,\"site,\"\"x\"\"\",,,0.125,0,1,1\n");
}

class EvaluateModelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = FreshTestDir();
    PhantomOptions phantom;
    phantom.count = 48;
    phantom.size = 32;
    phantom.seed = 7;
    phantom.labels_to_write = {"cardiomegaly", "effusion_left"};
    ASSERT_TRUE(WritePhantomDataset(phantom, dir_ + "/data").ok());
    sidecar_ = {"smallcnn", {"cardiomegaly", "congestion", "effusion_left"}, 32, 1, "label"};
    options_.model_path = dir_ + "/model.safetensors";
    options_.data_dir = dir_ + "/data";
    options_.labels_csv = dir_ + "/data/labels.csv";
  }

  void WriteSidecar(const std::string& json) { std::ofstream(dir_ + "/model.json") << json; }
  void WriteModel(bool zero) {
    absl::StatusOr<TensorList> weights = InitialWeights(sidecar_, 3);
    ASSERT_TRUE(weights.ok()) << weights.status();
    if (zero) {
      for (NamedTensor& t : *weights) std::fill(t.data.begin(), t.data.end(), 0.0f);
    }
    ASSERT_TRUE(WriteSafetensors(options_.model_path, *weights).ok());
    WriteSidecar(
        "{\"job_id\": \"j\", \"architecture\": \"smallcnn\", \"labels\": [\"cardiomegaly\", "
        "\"congestion\", \"effusion_left\"], \"input_size\": 32, \"in_channels\": 1, "
        "\"head_mode\": \"label\", \"rounds\": 3}");
  }

  std::string dir_;
  ModelSidecar sidecar_;
  EvaluateOptions options_;
};

// All-zero weights give probability 0.5 for every image: every label is predicted positive
// (the threshold is inclusive), so a group's accuracy is its mean positive rate over labels,
// and every AUROC is exactly 0.5 (all ties).
TEST_F(EvaluateModelTest, ZeroModelMatchesPrevalence) {
  WriteModel(/*zero=*/true);
  std::vector<Prediction> scores;
  absl::StatusOr<EvaluationReport> r = EvaluateModel(options_, &scores);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(static_cast<int64_t>(scores.size()), r->images);
  for (const Prediction& p : scores) {
    EXPECT_FALSE(p.key.empty());
    EXPECT_EQ(p.patient_id.rfind("site-P", 0), 0u) << p.patient_id;
    EXPECT_EQ(p.probs, (std::vector<float>{0.5f, 0.5f}));
  }
  absl::StatusOr<Dataset> data = LoadDataset(options_.data_dir, options_.labels_csv, 1.0);
  ASSERT_TRUE(data.ok());
  EXPECT_EQ(r->images, static_cast<int64_t>(data->test.size()));
  ASSERT_EQ(r->labels.size(), 2u);  // congestion is not a CSV column
  EXPECT_EQ(r->labels[0].label, "cardiomegaly");
  EXPECT_EQ(r->labels[1].label, "effusion_left");
  EXPECT_DOUBLE_EQ(r->mean_auroc, 0.5);
  std::vector<int> column;
  for (const LabelResult& l : r->labels) {
    column.push_back(std::find(data->label_names.begin(), data->label_names.end(), l.label) -
                     data->label_names.begin());
  }
  std::map<std::string, std::vector<double>> pos, known;  // per sex, per label
  for (const Sample& s : data->test) {
    pos[s.sex].resize(2), known[s.sex].resize(2);
    for (int k = 0; k < 2; ++k) {
      const float t = s.labels[column[k]];
      if (std::isnan(t)) continue;
      known[s.sex][k] += 1;
      pos[s.sex][k] += t;
    }
  }
  for (const char* sex : {"M", "F"}) {
    ASSERT_GT(known[sex][0], 0) << sex;
    const double expected = (pos[sex][0] / known[sex][0] + pos[sex][1] / known[sex][1]) / 2;
    EXPECT_NEAR(Group(*r, "sex", sex).accuracy, expected, 1e-9) << sex;
  }
  const GroupResult& m = Group(*r, "sex", "M");
  const GroupResult& f = Group(*r, "sex", "F");
  EXPECT_EQ(m.n + f.n, r->images);
  EXPECT_NEAR(m.spd, m.accuracy - f.accuracy, 1e-9);
}

TEST_F(EvaluateModelTest, RandomModelGivesSaneReport) {
  WriteModel(/*zero=*/false);
  options_.split = "test";
  options_.test_fraction = 0.5;
  options_.batch_size = 5;
  absl::StatusOr<EvaluationReport> r = EvaluateModel(options_);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_GT(r->images, 0);
  EXPECT_LT(r->images, 48);
  int64_t age_n = 0;
  for (const GroupResult& g : r->groups) {
    if (g.attribute == "age") age_n += g.n;
    if (g.n > 0) EXPECT_TRUE(g.accuracy >= 0 && g.accuracy <= 1) << g.group;
  }
  EXPECT_EQ(age_n, r->images);
  for (const LabelResult& l : r->labels) {
    if (!std::isnan(l.auroc)) EXPECT_TRUE(l.auroc >= 0 && l.auroc <= 1);
  }
  EXPECT_TRUE(absl::StrContains(ReportText(*r), "mean AUROC"));
}

TEST_F(EvaluateModelTest, MissingModelFileIsNotFound) {
  absl::StatusOr<EvaluationReport> r = EvaluateModel(options_);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(absl::StrContains(r.status().message(), "model.safetensors")) << r.status();
}

TEST_F(EvaluateModelTest, SidecarWithOtherLabelsDoesNotMatch) {
  WriteModel(/*zero=*/false);
  WriteSidecar(
      "{\"architecture\": \"smallcnn\", \"labels\": [\"cardiomegaly\", \"effusion_left\"], "
      "\"input_size\": 32}");
  absl::StatusOr<EvaluationReport> r = EvaluateModel(options_);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(r.status().message(), "does not match")) << r.status();
}

TEST_F(EvaluateModelTest, SidecarErrorsNameTheField) {
  WriteModel(/*zero=*/false);
  WriteSidecar("{\"architecture\": \"smallcnn\", \"labels\": [\"cardiomegaly\"]}");
  absl::StatusOr<EvaluationReport> r = EvaluateModel(options_);
  EXPECT_FALSE(r.ok());
  EXPECT_TRUE(absl::StrContains(r.status().message(), "input_size")) << r.status();
  WriteSidecar("{\"architecture\": \"nope\", \"labels\": [\"a\"], \"input_size\": 32}");
  r = EvaluateModel(options_);
  EXPECT_FALSE(r.ok());
  EXPECT_TRUE(absl::StrContains(r.status().message(), "nope")) << r.status();
  // The card is a ModelCard: a misspelt field is named, and other workloads are refused.
  WriteSidecar("{\"architecture\": \"smallcnn\", \"labelz\": [\"a\"], \"input_size\": 32}");
  r = EvaluateModel(options_);
  EXPECT_TRUE(absl::StrContains(r.status().message(), "labelz")) << r.status();
  WriteSidecar(
      "{\"workload\": \"autoencoder\", \"architecture\": \"autoencoder\", "
      "\"input_size\": 32}");
  r = EvaluateModel(options_);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition) << r.status();
  EXPECT_TRUE(absl::StrContains(r.status().message(), "'autoencoder' workload")) << r.status();
}

TEST_F(EvaluateModelTest, NoSharedLabelIsAnError) {
  sidecar_.labels = {"congestion"};
  absl::StatusOr<TensorList> weights = InitialWeights(sidecar_, 1);
  ASSERT_TRUE(weights.ok());
  ASSERT_TRUE(WriteSafetensors(options_.model_path, *weights).ok());
  WriteSidecar(
      "{\"architecture\": \"smallcnn\", \"labels\": [\"congestion\"], \"input_size\": 32}");
  absl::StatusOr<EvaluationReport> r = EvaluateModel(options_);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(r.status().message(), "none of the model's labels"));
}

TEST_F(EvaluateModelTest, BadThresholdIsRefused) {
  WriteModel(/*zero=*/false);
  options_.threshold = 1.5;
  EXPECT_EQ(EvaluateModel(options_).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace fl
