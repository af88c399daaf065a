#include "client/trainer.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <mutex>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/fault_env.h"
#include "common/safetensors.h"
#include "client/trainer_data.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "common/test_dir.h"
#include "common/test_workers.h"
#include "privacy/process_group_test_util.h"
#include "models/model.h"

namespace fl {
namespace {

using ::testing::HasSubstr;

constexpr int kSize = 32;
const float kNaN = std::nanf("");

// 32x32 noise; label "left" puts a bright 8x8 square in the left half, "right" in the right half.
std::vector<float> SyntheticImage(int index, bool left, bool right) {
  std::mt19937 rng(index * 7919 + 17);
  std::uniform_real_distribution<float> noise(0.0f, 0.3f);
  std::uniform_int_distribution<int> y0(2, kSize - 10), left_x0(1, 7), right_x0(17, 23);
  std::vector<float> image(kSize * kSize);
  for (float& v : image) v = noise(rng);
  auto square = [&](int x0, int y) {
    for (int dy = 0; dy < 8; ++dy) {
      for (int dx = 0; dx < 8; ++dx) image[(y + dy) * kSize + x0 + dx] = 0.9f;
    }
  };
  if (left) square(left_x0(rng), y0(rng));
  if (right) square(right_x0(rng), y0(rng));
  return image;
}

// Loads "good/<index>_<left>_<right>" as a synthetic image and fails on "bad/...", counting the
// calls per path.
class FakeLoader {
 public:
  ImageLoader loader() {
    return [this](const Sample& sample, int size) -> absl::StatusOr<std::vector<float>> {
      {
        std::lock_guard<std::mutex> lock(mu_);
        ++calls_[sample.path];
      }
      int index, left, right;
      if (size != kSize) return absl::InvalidArgumentError("unexpected size");
      if (std::sscanf(sample.path.c_str(), "good/%d_%d_%d", &index, &left, &right) != 3) {
        return absl::DataLossError("truncated pixel data");
      }
      return SyntheticImage(index, left != 0, right != 0);
    };
  }
  int calls(const std::string& path) {
    std::lock_guard<std::mutex> lock(mu_);
    return calls_[path];
  }

 private:
  std::mutex mu_;
  std::map<std::string, int> calls_;
};

struct DataOptions {
  int train = 200;
  int test = 100;
  bool right_missing = false;  // every sample lacks a value for "right"
  int bad_train = 0;           // undecodable samples added to each split
  int bad_test = 0;
};

DataOptions Sizes(int train, int test) {
  DataOptions o;
  o.train = train;
  o.test = test;
  return o;
}

DataOptions RightMissing(DataOptions o) {
  o.right_missing = true;
  return o;
}

DataOptions WithBad(DataOptions o, int train, int test) {
  o.bad_train = train;
  o.bad_test = test;
  return o;
}

Dataset MakeDataset(const DataOptions& o) {
  Dataset data;
  data.label_names = {"left", "right"};
  std::mt19937 rng(42);
  std::bernoulli_distribution coin(0.5);
  auto add = [&](std::vector<Sample>& split, int count, int first) {
    for (int i = first; i < first + count; ++i) {
      const bool left = coin(rng), right = coin(rng);
      Sample s;
      s.path =
          "good/" + std::to_string(i) + "_" + std::to_string(left) + "_" + std::to_string(right);
      s.patient_id = "p" + std::to_string(i);
      s.labels = {left ? 1.0f : 0.0f, o.right_missing ? kNaN : (right ? 1.0f : 0.0f)};
      split.push_back(s);
    }
  };
  add(data.train, o.train, 0);
  add(data.test, o.test, 100000);
  for (int i = 0; i < o.bad_train; ++i) data.train.push_back({"bad/train" + std::to_string(i)});
  for (int i = 0; i < o.bad_test; ++i) data.test.push_back({"bad/test" + std::to_string(i)});
  for (auto* split : {&data.train, &data.test}) {
    for (Sample& s : *split) s.labels.resize(2, kNaN);
  }
  return data;
}

JobSpec MakeSpec(HeadMode mode, int steps, int batch) {
  JobSpec spec;
  spec.set_model("smallcnn");
  spec.add_labels("left");
  spec.add_labels("right");
  spec.set_image_size(kSize);
  spec.set_head_mode(mode);
  spec.set_local_steps(steps);
  spec.set_batch_size(batch);
  spec.set_seed(7);
  spec.mutable_local_optimizer()->set_name("adam");
  spec.mutable_local_optimizer()->set_learning_rate(0.003);
  return spec;
}

struct Global {
  TensorList weights;
  std::string head_prefix;
};

Global GlobalFor(const JobSpec& spec) {
  auto model_spec = ModelSpecFor(spec);
  EXPECT_TRUE(model_spec.ok()) << model_spec.status();
  auto model = CreateModel(*model_spec, spec.seed());
  EXPECT_TRUE(model.ok()) << model.status();
  return {ExtractWeights(**model), (*model)->head_prefix()};
}

std::unique_ptr<LocalTrainer> MakeTrainer(const Dataset& data, FakeLoader& loader,
                                          const std::string& state_dir = "",
                                          uint64_t dp_test_seed = 0) {
  TrainerOptions options;
  options.device = "cpu";
  options.state_dir = state_dir;
  options.dp_test_seed = dp_test_seed;
  options.loader = loader.loader();
  auto trainer = CreateLocalTrainer(data, options);
  EXPECT_TRUE(trainer.ok()) << trainer.status();
  return *std::move(trainer);
}

TensorList Apply(const TensorList& global, const TensorList& update) {
  TensorList out = global;
  for (NamedTensor& t : out) {
    for (const NamedTensor& u : update) {
      if (u.name != t.name) continue;
      for (size_t i = 0; i < t.data.size(); ++i) t.data[i] += u.data[i];
    }
  }
  return out;
}

// Sum of |values| of row `row` of a [labels, ...] head tensor.
double RowMass(const NamedTensor& t, int row) {
  const int64_t width = t.numel() / t.shape[0];
  double sum = 0;
  for (int64_t i = row * width; i < (row + 1) * width; ++i) sum += std::fabs(t.data[i]);
  return sum;
}

std::string TempDir(const std::string& name) { return FreshTestDir(name); }

TEST(AurocTest, PerfectReversedAndHandComputed) {
  EXPECT_DOUBLE_EQ(Auroc({0.1f, 0.2f, 0.8f, 0.9f}, {0, 0, 1, 1}), 1.0);
  EXPECT_DOUBLE_EQ(Auroc({0.9f, 0.8f, 0.2f, 0.1f}, {0, 0, 1, 1}), 0.0);
  // Positives 0.35 and 0.8 against negatives 0.1 and 0.4: 3 of 4 pairs ordered.
  EXPECT_DOUBLE_EQ(Auroc({0.1f, 0.4f, 0.35f, 0.8f}, {0, 0, 1, 1}), 0.75);
}

TEST(RocCurveTest, FromZeroToOneWithTiesTogetherAndFewPoints) {
  auto pairs = [](const std::vector<RocPoint>& curve) {
    std::vector<std::pair<double, double>> out;
    for (const RocPoint& p : curve) out.emplace_back(p.fpr(), p.tpr());
    return out;
  };
  using P = std::vector<std::pair<double, double>>;
  EXPECT_EQ(pairs(RocCurve({0.1f, 0.2f, 0.8f, 0.9f}, {0, 0, 1, 1})),
            (P{{0, 0}, {0, 0.5}, {0, 1}, {0.5, 1}, {1, 1}}));
  // Tied scores pass the threshold together.
  EXPECT_EQ(pairs(RocCurve({0.5f, 0.5f, 0.9f, 0.1f}, {1, 0, 1, 0})),
            (P{{0, 0}, {0, 0.5}, {0.5, 1}, {1, 1}}));
  EXPECT_TRUE(RocCurve({0.1f, 0.7f}, {1, 1}).empty());  // one class only
  std::vector<float> scores, targets;
  for (int i = 0; i < 1000; ++i) {
    scores.push_back(static_cast<float>((i * 7919) % 1000) / 1000.0f);
    targets.push_back(static_cast<float>(i % 3 == 0));
  }
  const std::vector<RocPoint> curve = RocCurve(scores, targets);
  ASSERT_LE(curve.size(), 21u);
  ASSERT_GE(curve.size(), 10u);
  for (size_t i = 1; i < curve.size(); ++i) {
    EXPECT_GE(curve[i].fpr(), curve[i - 1].fpr());
    EXPECT_GE(curve[i].tpr(), curve[i - 1].tpr());
  }
  EXPECT_EQ(pairs({curve.back()}), (P{{1, 1}}));
}

TEST(AurocTest, TiesCountHalf) {
  EXPECT_DOUBLE_EQ(Auroc({0.5f, 0.5f, 0.5f, 0.5f}, {1, 0, 1, 0}), 0.5);
  // Pairs: (0.5 vs 0.2) 1, (0.5 vs 0.5) 0.5, (0.9 vs both) 2 -> 3.5 / 4.
  EXPECT_DOUBLE_EQ(Auroc({0.2f, 0.5f, 0.5f, 0.9f}, {0, 0, 1, 1}), 0.875);
}

TEST(AurocTest, NaNWhenAClassIsMissingAndSkipsUnknownTargets) {
  EXPECT_TRUE(std::isnan(Auroc({0.1f, 0.7f}, {1, 1})));
  EXPECT_TRUE(std::isnan(Auroc({0.1f, 0.7f}, {0, 0})));
  EXPECT_TRUE(std::isnan(Auroc({}, {})));
  EXPECT_DOUBLE_EQ(Auroc({0.1f, 0.9f, 0.95f, 0.7f}, {0, 1, kNaN, 1}), 1.0);
}

TEST(TrainerTest, MissingValuesGiveNoGradient) {
  FakeLoader loader;
  Dataset data = MakeDataset(RightMissing(Sizes(64, 8)));
  JobSpec spec = MakeSpec(HEAD_MODE_LABEL, 3, 16);
  spec.mutable_local_optimizer()->set_name("sgd");
  spec.mutable_local_optimizer()->set_learning_rate(0.1);
  Global global = GlobalFor(spec);
  auto result =
      MakeTrainer(data, loader)->Train("job1", spec, {"left", "right"}, global.weights, 1);
  ASSERT_TRUE(result.ok()) << result.status();
  int heads = 0;
  for (const NamedTensor& t : result->update) {
    if (t.name.rfind(global.head_prefix, 0) != 0) continue;
    ++heads;
    EXPECT_GT(RowMass(t, 0), 0) << t.name;
    EXPECT_EQ(RowMass(t, 1), 0) << t.name << ": a missing value was trained on";
  }
  EXPECT_EQ(heads, 2);
}

TEST(TrainerTest, UntrainedLabelRowsAreExactlyZero) {
  FakeLoader loader;
  Dataset data = MakeDataset(RightMissing(Sizes(64, 8)));
  JobSpec spec = MakeSpec(HEAD_MODE_LABEL, 4, 16);
  LocalOptimizer* opt = spec.mutable_local_optimizer();
  opt->set_name("sgd");
  opt->set_learning_rate(0.1);
  opt->set_momentum(0.9);
  opt->set_weight_decay(0.01);  // moves every row, trained or not
  Global global = GlobalFor(spec);
  auto result = MakeTrainer(data, loader)->Train("job1", spec, {"left"}, global.weights, 1);
  ASSERT_TRUE(result.ok()) << result.status();
  ASSERT_EQ(result->update.size(), global.weights.size());
  for (size_t i = 0; i < global.weights.size(); ++i) {
    EXPECT_EQ(result->update[i].name, global.weights[i].name);
    EXPECT_EQ(result->update[i].shape, global.weights[i].shape);
  }
  for (const NamedTensor& t : result->update) {
    if (t.name.rfind(global.head_prefix, 0) != 0) continue;
    EXPECT_GT(RowMass(t, 0), 0) << t.name;
    EXPECT_EQ(RowMass(t, 1), 0) << t.name;
  }
  EXPECT_EQ(result->labels, std::vector<std::string>{"left"});
  EXPECT_EQ(result->num_samples, 4u * 16u);
  EXPECT_TRUE(std::isfinite(result->loss));
  EXPECT_GT(result->loss, 0);
}

TEST(TrainerTest, LearnsTheLeftSquare) {
  FakeLoader loader;
  Dataset data = MakeDataset(DataOptions());
  JobSpec spec = MakeSpec(HEAD_MODE_LABEL, 60, 32);
  Global global = GlobalFor(spec);
  auto trainer = MakeTrainer(data, loader);
  auto result = trainer->Train("job1", spec, {"left", "right"}, global.weights, 1);
  ASSERT_TRUE(result.ok()) << result.status();
  auto metrics =
      trainer->Evaluate("job1", spec, {"left", "right"}, Apply(global.weights, result->update));
  ASSERT_TRUE(metrics.ok()) << metrics.status();
  ASSERT_EQ(metrics->test_size(), 2);
  EXPECT_EQ(metrics->test(0).label(), "left");
  RecordProperty("left_auroc", std::to_string(metrics->test(0).auroc()));
  RecordProperty("right_auroc", std::to_string(metrics->test(1).auroc()));
  RecordProperty("loss", std::to_string(result->loss));
  EXPECT_GT(metrics->test(0).auroc(), 0.9);
  EXPECT_EQ(metrics->test(0).positives() + metrics->test(0).negatives(), 100u);
  EXPECT_GT(metrics->test(0).positives(), 0u);
}

TEST(TrainerTest, SiteHeadStaysPrivateAndPersists) {
  FakeLoader loader;
  Dataset data = MakeDataset(Sizes(64, 16));
  JobSpec spec = MakeSpec(HEAD_MODE_SITE, 3, 16);
  Global full = GlobalFor(spec);
  TensorList backbone;
  for (const NamedTensor& t : full.weights) {
    if (t.name.rfind(full.head_prefix, 0) != 0) backbone.push_back(t);
  }
  const std::vector<std::string> labels = {"left", "right"};
  const std::string dir_a = TempDir("a"), dir_b = TempDir("b"), dir_c = TempDir("c");
  const std::string head_file = "/heads/job-7.safetensors";

  // Trainer A keeps its head in memory between rounds 1 and 2.
  auto a = MakeTrainer(data, loader, dir_a);
  auto r1 = a->Train("job-7", spec, labels, backbone, 1);
  ASSERT_TRUE(r1.ok()) << r1.status();
  EXPECT_EQ(r1->update.size(), backbone.size());
  for (const NamedTensor& t : r1->update) EXPECT_NE(t.name.rfind(full.head_prefix, 0), 0u);
  EXPECT_TRUE(r1->labels.empty());
  auto head1 = ReadSafetensors(dir_a + head_file);
  ASSERT_TRUE(head1.ok()) << head1.status();
  ASSERT_TRUE(a->Train("job-7", spec, labels, backbone, 2).ok());
  auto head_a = ReadSafetensors(dir_a + head_file);
  ASSERT_TRUE(head_a.ok());
  EXPECT_NE((*head_a)[0].data, (*head1)[0].data);

  // B does round 1, then a new trainer on B's state_dir does round 2: same head as A's.
  ASSERT_TRUE(MakeTrainer(data, loader, dir_b)->Train("job-7", spec, labels, backbone, 1).ok());
  ASSERT_TRUE(MakeTrainer(data, loader, dir_b)->Train("job-7", spec, labels, backbone, 2).ok());
  auto head_b = ReadSafetensors(dir_b + head_file);
  ASSERT_TRUE(head_b.ok());
  // C does round 2 only, from a fresh head: a different head, so the starting head mattered.
  ASSERT_TRUE(MakeTrainer(data, loader, dir_c)->Train("job-7", spec, labels, backbone, 2).ok());
  auto head_c = ReadSafetensors(dir_c + head_file);
  ASSERT_TRUE(head_c.ok());
  ASSERT_EQ(head_a->size(), head_b->size());
  for (size_t i = 0; i < head_a->size(); ++i) {
    ASSERT_EQ((*head_a)[i].data.size(), (*head_b)[i].data.size());
    double diff_b = 0, diff_c = 0;
    for (size_t k = 0; k < (*head_a)[i].data.size(); ++k) {
      diff_b = std::max<double>(diff_b, std::fabs((*head_a)[i].data[k] - (*head_b)[i].data[k]));
      diff_c = std::max<double>(diff_c, std::fabs((*head_a)[i].data[k] - (*head_c)[i].data[k]));
    }
    EXPECT_LT(diff_b, 1e-5) << (*head_a)[i].name;
    EXPECT_GT(diff_c, 1e-4) << (*head_a)[i].name;
  }
  auto metrics = a->Evaluate("job-7", spec, labels, backbone);
  ASSERT_TRUE(metrics.ok()) << metrics.status();
  EXPECT_EQ(metrics->test_size(), 2);
}

// A private head that cannot be saved (a full disk, half of it written) is an error with the disk's
// code, and the head saved before stays whole on disk for the next start.
TEST(HeadStoreTest, AFailedSaveKeepsTheHeadBeforeIt) {
  const std::string dir = TempDir("heads");
  FaultEnv env;
  const TensorList first = {{"fc.weight", {2}, {1, 2}}};
  const TensorList second = {{"fc.weight", {2}, {3, 4}}};
  HeadStore store(dir, &env);
  ASSERT_TRUE(store.Put("job-7", first).ok());
  env.Inject({.op = FileOp::kWrite, .error = ENOSPC, .short_write = true});
  const absl::Status failed = store.Put("job-7", second);
  EXPECT_EQ(failed.code(), absl::StatusCode::kResourceExhausted) << failed;
  EXPECT_NE(failed.message().find("private head"), std::string::npos) << failed;
  auto reread = HeadStore(dir, &env).Get("job-7");
  ASSERT_TRUE(reread.ok()) << reread.status();
  ASSERT_TRUE(reread->has_value());
  EXPECT_EQ((**reread)[0].data, first[0].data);
  // A folder that cannot be made (a read-only disk) names its cause too.
  HeadStore elsewhere(dir + "/other", &env);
  env.Inject({.op = FileOp::kMkdir, .error = EROFS});
  EXPECT_EQ(elsewhere.Put("job-8", first).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(elsewhere.Put("../x", first).code(), absl::StatusCode::kInvalidArgument);
}

TEST(TrainerTest, SkipsUndecodableSamples) {
  FakeLoader loader;
  Dataset data = MakeDataset(WithBad(Sizes(40, 20), 3, 2));
  JobSpec spec = MakeSpec(HEAD_MODE_LABEL, 4, 43);  // every batch holds every sample
  Global global = GlobalFor(spec);
  auto trainer = MakeTrainer(data, loader);
  auto result = trainer->Train("job1", spec, {"left", "right"}, global.weights, 1);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->num_samples, 4u * 40u);
  ASSERT_TRUE(trainer->Train("job1", spec, {"left", "right"}, global.weights, 2).ok());
  EXPECT_EQ(loader.calls("bad/train0"), 1);  // a failure is remembered, not retried
  EXPECT_EQ(loader.calls(data.train[0].path), 1);
  auto metrics = trainer->Evaluate("job1", spec, {"left"}, global.weights);
  ASSERT_TRUE(metrics.ok()) << metrics.status();
  EXPECT_EQ(metrics->test(0).positives() + metrics->test(0).negatives(), 20u);
}

TEST(TrainerTest, FailsWhenNoSampleDecodes) {
  FakeLoader loader;
  Dataset data = MakeDataset(WithBad(Sizes(0, 0), 5, 2));
  JobSpec spec = MakeSpec(HEAD_MODE_LABEL, 2, 4);
  Global global = GlobalFor(spec);
  auto trainer = MakeTrainer(data, loader);
  auto result = trainer->Train("job1", spec, {"left"}, global.weights, 1);
  EXPECT_FALSE(result.ok());
  EXPECT_THAT(std::string(result.status().message()), HasSubstr("decoded"));
  auto metrics = trainer->Evaluate("job1", spec, {"left"}, global.weights);
  EXPECT_FALSE(metrics.ok());
  EXPECT_THAT(std::string(metrics.status().message()), HasSubstr("decoded"));
}

// The second workload through the same trainer: an autoencoder learns to reconstruct the images
// (no labels), with and without DP-SGD, and reports L1 and PSNR instead of AUROC.
JobSpec AutoencoderSpec(int steps) {
  JobSpec spec;
  spec.mutable_autoencoder()->add_widths(8);
  spec.mutable_autoencoder()->add_widths(16);
  spec.mutable_autoencoder()->set_latent_channels(4);
  spec.set_image_size(kSize);
  spec.set_local_steps(steps);
  spec.set_batch_size(16);
  spec.set_seed(3);
  spec.mutable_local_optimizer()->set_name("adam");
  spec.mutable_local_optimizer()->set_learning_rate(0.01);
  return spec;
}

double MetricOf(const MetricsReport& report, const std::string& name) {
  for (const Metric& m : report.metrics()) {
    if (m.name() == name) return m.value();
  }
  ADD_FAILURE() << "no metric " << name;
  return std::nan("");
}

TEST(TrainerTest, AutoencoderLearnsToReconstructWithoutLabels) {
  FakeLoader loader;
  Dataset data = MakeDataset(Sizes(64, 16));
  const JobSpec spec = AutoencoderSpec(60);
  Global global = GlobalFor(spec);
  EXPECT_EQ(global.head_prefix, "");
  auto trainer = MakeTrainer(data, loader);
  auto before = trainer->Evaluate("ae", spec, {}, global.weights);
  ASSERT_TRUE(before.ok()) << before.status();
  EXPECT_EQ(before->test_size(), 0);
  EXPECT_EQ(before->test_images(), 16u);
  auto result = trainer->Train("ae", spec, {}, global.weights, 1);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->update.size(), global.weights.size());  // no head: every tensor is shared
  EXPECT_TRUE(result->labels.empty());
  auto after = trainer->Evaluate("ae", spec, {}, Apply(global.weights, result->update));
  ASSERT_TRUE(after.ok()) << after.status();
  RecordProperty("l1_before", std::to_string(MetricOf(*before, "l1")));
  RecordProperty("l1_after", std::to_string(MetricOf(*after, "l1")));
  EXPECT_LT(MetricOf(*after, "l1"), 0.6 * MetricOf(*before, "l1"));
  EXPECT_GT(MetricOf(*after, "psnr"), MetricOf(*before, "psnr") + 3);
  // A label-free workload takes no train labels.
  EXPECT_FALSE(trainer->Train("ae", spec, {"left"}, global.weights, 2).ok());
}

TEST(TrainerTest, AutoencoderTrainsWithDpSgd) {
  FakeLoader loader;
  Dataset data = MakeDataset(Sizes(64, 16));
  JobSpec spec = AutoencoderSpec(5);
  spec.mutable_dp()->set_enabled(true);
  spec.mutable_dp()->set_clip_norm(1.0);
  spec.mutable_dp()->set_noise_multiplier(1.0);
  Global global = GlobalFor(spec);
  auto a =
      MakeTrainer(data, loader, "", /*dp_test_seed=*/11)->Train("ae", spec, {}, global.weights, 1);
  auto b =
      MakeTrainer(data, loader, "", /*dp_test_seed=*/11)->Train("ae", spec, {}, global.weights, 1);
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_GT(a->num_samples, 0u);
  ASSERT_EQ(a->update.size(), b->update.size());
  bool moved = false;
  for (size_t i = 0; i < a->update.size(); ++i) {
    EXPECT_EQ(a->update[i].data, b->update[i].data) << a->update[i].name;  // same test seed
    for (float v : a->update[i].data) moved |= v != 0.0f;
  }
  EXPECT_TRUE(moved);
}

// Data parallel DP-SGD: two processes of one site, each with half of the train split, joined by
// a Gloo group (privacy/process_group.h). With q = 1 every sample is drawn at every step, so the
// union of the shards is the whole split and the update is the one process's over all of it
// (rank 0 draws the same noise from the same test seed), within float tolerance.
constexpr char kTrainerWorkerEnv[] = "FL_TRAINER_WORKER";  // WorkerValue with OUT

JobSpec DataParallelSpec() {
  JobSpec spec = MakeSpec(HEAD_MODE_LABEL, 2, 16);  // batch 16 of 16 images: q = 1
  spec.mutable_dp()->set_enabled(true);
  spec.mutable_dp()->set_clip_norm(1.0);
  spec.mutable_dp()->set_noise_multiplier(0.5);
  return spec;
}

Dataset Shard(const Dataset& data, int rank, int world) {
  Dataset shard = data;
  shard.train.clear();
  for (size_t i = rank; i < data.train.size(); i += world) shard.train.push_back(data.train[i]);
  return shard;
}

TEST(TrainerWorker, DISABLED_Rank) {
  std::vector<std::string> f;  // OUT
  auto reducer = JoinWorkerGroup(kTrainerWorkerEnv, &f);
  ASSERT_TRUE(reducer.ok()) << reducer.status();
  ASSERT_EQ(f.size(), 1u);
  FakeLoader loader;
  const Dataset data = MakeDataset(Sizes(16, 4));
  TrainerOptions options;
  options.device = "cpu";
  options.dp_test_seed = 99;
  options.loader = loader.loader();
  options.reducer = reducer->get();
  options.site_train_size = static_cast<int64_t>(data.train.size());
  auto trainer =
      CreateLocalTrainer(Shard(data, (*reducer)->rank(), (*reducer)->world_size()), options);
  ASSERT_TRUE(trainer.ok()) << trainer.status();
  const JobSpec spec = DataParallelSpec();
  auto result = (*trainer)->Train("dp", spec, {"left", "right"}, GlobalFor(spec).weights, 0);
  ASSERT_TRUE(result.ok()) << result.status();
  ASSERT_TRUE(WriteSafetensors(f[0], result->update).ok());
}

TEST(TrainerTest, DataParallelDpEqualsOneProcess) {
  const std::string dir = FreshTestDir("ranks");
  std::vector<std::string> values;
  for (int rank = 0; rank < 2; ++rank) {
    values.push_back(WorkerValue(rank, 2, dir + "/rendezvous",
                                 absl::StrCat(dir, "/rank", rank, ".safetensors")));
  }
  RunWorkers("TrainerWorker.DISABLED_Rank", kTrainerWorkerEnv, values);
  auto rank0 = ReadSafetensors(dir + "/rank0.safetensors");
  auto rank1 = ReadSafetensors(dir + "/rank1.safetensors");
  ASSERT_TRUE(rank0.ok() && rank1.ok());
  FakeLoader loader;
  const JobSpec spec = DataParallelSpec();
  auto alone = MakeTrainer(MakeDataset(Sizes(16, 4)), loader, "", /*dp_test_seed=*/99)
                   ->Train("dp", spec, {"left", "right"}, GlobalFor(spec).weights, 0);
  ASSERT_TRUE(alone.ok()) << alone.status();
  ASSERT_EQ(rank0->size(), alone->update.size());
  float worst = 0, moved = 0;
  for (size_t t = 0; t < alone->update.size(); ++t) {
    EXPECT_EQ((*rank0)[t].data, (*rank1)[t].data) << (*rank0)[t].name;  // one model
    for (size_t i = 0; i < alone->update[t].data.size(); ++i) {
      worst = std::max(worst, std::fabs((*rank0)[t].data[i] - alone->update[t].data[i]));
      moved = std::max(moved, std::fabs(alone->update[t].data[i]));
    }
  }
  EXPECT_LT(worst, 1e-5f);
  EXPECT_GT(moved, 1e-4f);
  // Without DP, several processes are refused (not built yet).
  class NeverCalled : public GradientReducer {
   public:
    int rank() const override { return 0; }
    int world_size() const override { return 2; }
    absl::Status SumInPlace(std::vector<torch::Tensor>&) override {
      ADD_FAILURE() << "a non-DP job reached the reducer";
      return absl::InternalError("called");
    }
  } never;
  TrainerOptions options;
  options.device = "cpu";
  options.loader = loader.loader();
  options.reducer = &never;
  options.site_train_size = 16;
  auto trainer = CreateLocalTrainer(MakeDataset(Sizes(16, 4)), options);
  ASSERT_TRUE(trainer.ok());
  JobSpec plain = MakeSpec(HEAD_MODE_LABEL, 2, 16);
  EXPECT_EQ((*trainer)->Train("x", plain, {"left"}, GlobalFor(plain).weights, 0).status().code(),
            absl::StatusCode::kUnimplemented);
}

// A stopping client does not finish its local steps: training ends with CANCELLED.
TEST(TrainerTest, StopsWhenCancelled) {
  FakeLoader loader;
  Dataset data = MakeDataset(Sizes(8, 2));
  JobSpec spec = MakeSpec(HEAD_MODE_LABEL, 5, 4);
  Global global = GlobalFor(spec);
  TrainerOptions options;
  options.device = "cpu";
  options.loader = loader.loader();
  int checks = 0;
  options.cancelled = [&checks] { return ++checks > 2; };  // stop before the third step
  auto trainer = CreateLocalTrainer(data, options);
  ASSERT_TRUE(trainer.ok()) << trainer.status();
  auto result = (*trainer)->Train("job1", spec, {"left"}, global.weights, 1);
  EXPECT_EQ(result.status().code(), absl::StatusCode::kCancelled) << result.status();
  EXPECT_EQ(checks, 3);
}

TEST(TrainerTest, EmptyTrainSplitIsAnError) {
  FakeLoader loader;
  Dataset data = MakeDataset(Sizes(0, 10));
  JobSpec spec = MakeSpec(HEAD_MODE_LABEL, 2, 4);
  auto result =
      MakeTrainer(data, loader)->Train("job1", spec, {"left"}, GlobalFor(spec).weights, 1);
  EXPECT_EQ(result.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(result.status().message()), HasSubstr("train split is empty"));
}

TEST(TrainerTest, RejectsBadArguments) {
  FakeLoader loader;
  Dataset data = MakeDataset(Sizes(8, 4));
  JobSpec spec = MakeSpec(HEAD_MODE_LABEL, 1, 4);
  Global global = GlobalFor(spec);
  auto trainer = MakeTrainer(data, loader);
  auto unknown = trainer->Train("job1", spec, {"effusion"}, global.weights, 1);
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(unknown.status().message()), HasSubstr("effusion"));
  JobSpec dp = spec;
  dp.mutable_dp()->set_enabled(true);  // neither noise_multiplier nor target_epsilon
  dp.mutable_dp()->set_clip_norm(1.0);
  EXPECT_FALSE(trainer->Train("job1", dp, {"left"}, global.weights, 1).ok());
  JobSpec optimizer = spec;
  optimizer.mutable_local_optimizer()->set_name("lbfgs");
  EXPECT_EQ(trainer->Train("job1", optimizer, {"left"}, global.weights, 1).status().code(),
            absl::StatusCode::kInvalidArgument);
  TensorList truncated(global.weights.begin(), global.weights.end() - 1);
  EXPECT_FALSE(trainer->Train("job1", spec, {"left"}, truncated, 1).ok());
}

TEST(TrainerTest, DeviceChoice) {
  FakeLoader loader;
  Dataset data = MakeDataset(Sizes(4, 4));
  EXPECT_THAT(MakeTrainer(data, loader)->Hardware(), HasSubstr("cpu:"));
  TrainerOptions options;
  options.device = "tpu";
  EXPECT_EQ(CreateLocalTrainer(data, options).status().code(), absl::StatusCode::kInvalidArgument);
  options.device = "cuda";
  auto cuda = CreateLocalTrainer(data, options);
  if (cuda.ok()) {
    EXPECT_THAT((*cuda)->Hardware(), HasSubstr("cuda:"));
  } else {
    EXPECT_EQ(cuda.status().code(), absl::StatusCode::kFailedPrecondition);
  }
}

// Label mode, SGD without momentum (so the update is the sum of the noised steps), DP-SGD with
// C = 1 and the given sigma.
JobSpec DpSpec(double sigma, int steps = 3) {
  JobSpec spec = MakeSpec(HEAD_MODE_LABEL, steps, 16);
  spec.mutable_local_optimizer()->set_name("sgd");
  spec.mutable_local_optimizer()->set_learning_rate(0.1);
  spec.mutable_dp()->set_enabled(true);
  spec.mutable_dp()->set_clip_norm(1.0);
  spec.mutable_dp()->set_noise_multiplier(sigma);
  spec.mutable_dp()->set_delta(1e-5);
  return spec;
}

double SquaredNorm(const TensorList& list) {
  double sum = 0;
  for (const NamedTensor& t : list) {
    for (float v : t.data) sum += double{v} * v;
  }
  return sum;
}

std::vector<float> Flatten(const TensorList& list) {
  std::vector<float> out;
  for (const NamedTensor& t : list) out.insert(out.end(), t.data.begin(), t.data.end());
  return out;
}

TEST(DpTrainerTest, UpdateHasTheGlobalShapesAndZeroUntrainedRows) {
  FakeLoader loader;
  Dataset data = MakeDataset(RightMissing(Sizes(64, 8)));
  JobSpec spec = DpSpec(0.5);
  Global global = GlobalFor(spec);
  auto result = MakeTrainer(data, loader, "", /*dp_test_seed=*/11)
                    ->Train("job1", spec, {"left"}, global.weights, 1);
  ASSERT_TRUE(result.ok()) << result.status();
  ASSERT_EQ(result->update.size(), global.weights.size());
  for (size_t i = 0; i < global.weights.size(); ++i) {
    EXPECT_EQ(result->update[i].name, global.weights[i].name);
    EXPECT_EQ(result->update[i].shape, global.weights[i].shape);
  }
  int heads = 0;
  for (const NamedTensor& t : result->update) {
    if (t.name.rfind(global.head_prefix, 0) != 0) continue;
    ++heads;
    EXPECT_GT(RowMass(t, 0), 0) << t.name;
    EXPECT_EQ(RowMass(t, 1), 0) << t.name << ": the noise of an untrained row was sent";
  }
  EXPECT_EQ(heads, 2);
  EXPECT_EQ(result->labels, std::vector<std::string>{"left"});
  // Poisson batches of expected size 16 over 3 steps: 48 expected, never exactly fixed.
  EXPECT_GT(result->num_samples, 10u);
  EXPECT_LT(result->num_samples, 100u);
  EXPECT_TRUE(std::isfinite(result->loss));
  EXPECT_GT(result->loss, 0);
}

TEST(DpTrainerTest, TestSeedReproducesAndSecureSeedDoesNot) {
  FakeLoader loader;
  Dataset data = MakeDataset(Sizes(48, 8));
  JobSpec spec = DpSpec(0.5, 2);
  Global global = GlobalFor(spec);
  const std::vector<std::string> labels = {"left", "right"};
  auto run = [&](uint64_t seed) {
    auto result =
        MakeTrainer(data, loader, "", seed)->Train("job1", spec, labels, global.weights, 1);
    EXPECT_TRUE(result.ok()) << result.status();
    return result.ok() ? Flatten(result->update) : std::vector<float>();
  };
  const std::vector<float> a = run(5), b = run(5), c = run(6);
  ASSERT_FALSE(a.empty());
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  EXPECT_NE(run(0), run(0));  // production: sampling and noise from the OS CSPRNG
}

TEST(DpTrainerTest, NoiseIsPresentAndScalesWithSigma) {
  FakeLoader loader;
  Dataset data = MakeDataset(Sizes(64, 8));
  const std::vector<std::string> labels = {"left", "right"};
  Global global = GlobalFor(DpSpec(0.5));
  auto train = [&](const JobSpec& spec) {
    auto result = MakeTrainer(data, loader, "", 3)->Train("job1", spec, labels, global.weights, 1);
    EXPECT_TRUE(result.ok()) << result.status();
    return result.ok() ? result->update : TensorList();
  };
  JobSpec plain = DpSpec(0.5);
  plain.mutable_dp()->set_enabled(false);
  const TensorList low = train(DpSpec(0.5)), high = train(DpSpec(4.0)), none = train(plain);
  ASSERT_FALSE(low.empty());
  ASSERT_FALSE(none.empty());
  EXPECT_NE(Flatten(low), Flatten(none));
  // Same test seed, so the same Poisson batches: only the noise differs. Per step the clipped
  // signal moves the weights by at most lr * C = 0.1; the noise by lr * sigma * C / 16 per
  // coordinate, over tens of thousands of coordinates.
  RecordProperty("update_norm2_sigma_0.5", std::to_string(SquaredNorm(low)));
  RecordProperty("update_norm2_sigma_4", std::to_string(SquaredNorm(high)));
  EXPECT_GT(SquaredNorm(high), 4 * SquaredNorm(low));
  // The clipped signal alone moves the weights by at most 3 * 0.1 in norm over the 3 steps.
  EXPECT_GT(SquaredNorm(low), 4 * 0.3 * 0.3);
}

TEST(DpTrainerTest, SiteModeKeepsTheHeadPrivate) {
  FakeLoader loader;
  Dataset data = MakeDataset(Sizes(48, 8));
  JobSpec spec = DpSpec(0.5, 2);
  spec.set_head_mode(HEAD_MODE_SITE);
  Global full = GlobalFor(spec);
  TensorList backbone;
  for (const NamedTensor& t : full.weights) {
    if (t.name.rfind(full.head_prefix, 0) != 0) backbone.push_back(t);
  }
  auto result =
      MakeTrainer(data, loader, "", 9)->Train("job-7", spec, {"left", "right"}, backbone, 1);
  ASSERT_TRUE(result.ok()) << result.status();
  ASSERT_EQ(result->update.size(), backbone.size());
  for (const NamedTensor& t : result->update) EXPECT_NE(t.name.rfind(full.head_prefix, 0), 0u);
  EXPECT_TRUE(result->labels.empty());
  EXPECT_GT(SquaredNorm(result->update), 0);
}

TEST(DpTrainerTest, UndecodableSamplesAreDroppedFromTheBatch) {
  FakeLoader loader;
  Dataset data = MakeDataset(WithBad(Sizes(20, 4), 20, 0));
  JobSpec spec = DpSpec(0.5, 4);
  spec.set_batch_size(40);  // q = 1: every sample is drawn at every step
  Global global = GlobalFor(spec);
  auto result =
      MakeTrainer(data, loader, "", 4)->Train("job1", spec, {"left", "right"}, global.weights, 1);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->num_samples, 4u * 20u);
  Dataset bad = MakeDataset(WithBad(Sizes(0, 4), 6, 0));
  spec.set_batch_size(6);
  auto failed = MakeTrainer(bad, loader, "", 4)->Train("job1", spec, {"left"}, global.weights, 1);
  EXPECT_EQ(failed.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(failed.status().message()), HasSubstr("decoded"));
}

// Each local step is told as it ends, plain and DP-SGD alike (a DP round has local_steps steps
// whatever its Poisson batches draw).
TEST(TrainerProgressTest, EachStepIsTold) {
  FakeLoader loader;
  Dataset data = MakeDataset(RightMissing(Sizes(64, 8)));
  for (const JobSpec& spec : {MakeSpec(HEAD_MODE_LABEL, 4, 16), DpSpec(1.0, 4)}) {
    Global global = GlobalFor(spec);
    std::vector<TrainProgress> told;
    auto result = MakeTrainer(data, loader, "", /*dp_test_seed=*/11)
                      ->Train("job1", spec, {"left"}, global.weights, 1,
                              [&](const TrainProgress& p) { told.push_back(p); });
    ASSERT_TRUE(result.ok()) << result.status();
    ASSERT_EQ(told.size(), 4u) << spec.dp().enabled();
    for (int s = 0; s < 4; ++s) {
      EXPECT_EQ(told[s].steps_done, s + 1);
      EXPECT_EQ(told[s].steps_total, 4);
    }
    EXPECT_EQ(told.back().samples, result->num_samples);
  }
}

}  // namespace
}  // namespace fl
