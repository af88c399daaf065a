// Data-parallel DP-SGD over real processes: this test binary starts itself again as the ranks of
// a Gloo group (loopback, a rendezvous file in a fresh folder), each training on its shard; the
// parent compares what they wrote with one process training on all the data.
#include "privacy/process_group.h"

#include <chrono>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/safetensors.h"
#include "common/status.h"
#include "common/test_dir.h"
#include "common/test_workers.h"
#include "privacy/process_group_test_util.h"
#include "common/torch_pch.h"
#include "gtest/gtest.h"
#include "models/dp_layers.h"
#include "privacy/dp_sgd.h"

namespace fl {
namespace {

using torch::Tensor;
namespace nn = torch::nn;

constexpr char kWorkerEnv[] = "FL_PROCESS_GROUP_WORKER";  // WorkerValue with MODE,OUT
constexpr int kSamples = 12, kSteps = 3;
constexpr uint64_t kNoiseSeed = 1234;

// "train": a small net, three DP steps on the rank's shard of 12 samples (sigma 0.5, C 1, B 12).
// "noise": a net of 100,100 zero parameters, one DP step without samples (sigma 1, C 1, B 1): the
// parameters are then minus the noise.
struct TrainRun {
  nn::Sequential net;
  Tensor x, y;
  DpSgdOptions options;
  double lr;
};

TrainRun MakeRun(const std::string& mode) {
  TrainRun run;
  torch::manual_seed(7);
  DpSgdOptions& o = run.options;
  o.clip_norm = 1.0;
  o.secure_noise = false;
  o.test_seed = kNoiseSeed;
  if (mode == "train") {
    run.net = nn::Sequential(DPLinear(8, 16), nn::ReLU(), DPLinear(16, 3));
    run.x = torch::randn({kSamples, 8});
    run.y = (torch::rand({kSamples, 3}) > 0.5).to(torch::kFloat);
    o.noise_multiplier = 0.5;
    o.expected_batch_size = kSamples;
    run.lr = 0.5;
  } else {
    run.net = nn::Sequential(DPLinear(1000, 100));
    torch::NoGradGuard no_grad;
    for (auto& p : run.net->parameters()) p.zero_();
    o.noise_multiplier = 1.0;
    o.expected_batch_size = 1;
    run.lr = 1.0;
  }
  return run;
}

// Trains `run` on samples [begin, end) (none in "noise" mode) with `reducer`.
absl::Status Train(TrainRun& run, int64_t begin, int64_t end, GradientReducer* reducer) {
  run.options.reducer = reducer;
  ASSIGN_OR_RETURN(std::unique_ptr<DpSgdEngine> engine, DpSgdEngine::Create(*run.net, run.options));
  torch::optim::SGD sgd(run.net->parameters(), torch::optim::SGDOptions(run.lr));
  const int steps = run.x.defined() ? kSteps : 1;
  for (int s = 0; s < steps; ++s) {
    if (run.x.defined()) {
      const Tensor x = run.x.slice(0, begin, end), y = run.y.slice(0, begin, end);
      RETURN_IF_ERROR(engine->AccumulateMicroBatch([&] {
        return torch::nn::functional::binary_cross_entropy_with_logits(
                   run.net->forward(x), y,
                   torch::nn::functional::BinaryCrossEntropyWithLogitsFuncOptions().reduction(
                       torch::kNone))
            .sum(1);
      }));
    }
    RETURN_IF_ERROR(engine->Step(sgd));
  }
  return absl::OkStatus();
}

TensorList Parameters(nn::Sequential& net) {
  TensorList out;
  for (const auto& item : net->named_parameters()) {
    const Tensor t = item.value().detach().contiguous();
    out.push_back({item.key(), t.sizes().vec(),
                   std::vector<float>(t.data_ptr<float>(), t.data_ptr<float>() + t.numel())});
  }
  return out;
}

// A worker: joins the group, trains its shard, writes its parameters to OUT.
TEST(ProcessGroupWorker, DISABLED_Run) {
  std::vector<std::string> f;  // MODE, OUT
  auto reducer = JoinWorkerGroup(kWorkerEnv, &f);
  ASSERT_TRUE(reducer.ok()) << reducer.status();
  ASSERT_EQ(f.size(), 2u);
  TrainRun run = MakeRun(f[0]);
  const int rank = (*reducer)->rank();
  const int64_t shard = kSamples / (*reducer)->world_size();
  ASSERT_TRUE(Train(run, rank * shard, (rank + 1) * shard, reducer->get()).ok());
  ASSERT_TRUE(WriteSafetensors(f[1], Parameters(run.net)).ok());
}

// Runs `world` ranks in `mode`; returns the parameters each wrote.
std::vector<TensorList> RunRanks(const std::string& mode, int world) {
  const std::string dir = FreshTestDir(mode);
  std::vector<std::string> values;
  for (int rank = 0; rank < world; ++rank) {
    values.push_back(WorkerValue(rank, world, dir + "/rendezvous",
                                 absl::StrCat(mode, ",", dir, "/rank", rank, ".safetensors")));
  }
  RunWorkers("ProcessGroupWorker.DISABLED_Run", kWorkerEnv, values);
  std::vector<TensorList> out;
  for (int rank = 0; rank < world; ++rank) {
    auto params = ReadSafetensors(absl::StrCat(dir, "/rank", rank, ".safetensors"));
    EXPECT_TRUE(params.ok()) << params.status();
    if (params.ok()) out.push_back(*std::move(params));
  }
  return out;
}

float MaxAbsDiff(const TensorList& a, const TensorList& b) {
  float worst = 0;
  for (size_t t = 0; t < a.size(); ++t) {
    for (size_t i = 0; i < a[t].data.size(); ++i) {
      worst = std::max(worst, std::abs(a[t].data[i] - b[t].data[i]));
    }
  }
  return worst;
}

// Two processes, each with half the samples, take the same steps as one process with all of them
// (the same noise seed): the same model within float tolerance, and the ranks agree bitwise.
TEST(ProcessGroupTest, TwoRanksTrainAsOneProcessOverTheUnionOfTheirShards) {
  const std::vector<TensorList> ranks = RunRanks("train", 2);
  ASSERT_EQ(ranks.size(), 2u);
  TrainRun alone = MakeRun("train");
  const TensorList before = Parameters(alone.net);
  ASSERT_TRUE(Train(alone, 0, kSamples, nullptr).ok());
  const TensorList reference = Parameters(alone.net);
  ASSERT_EQ(ranks[0].size(), reference.size());
  EXPECT_EQ(MaxAbsDiff(ranks[0], ranks[1]), 0.0f);
  EXPECT_LT(MaxAbsDiff(ranks[0], reference), 1e-5f);
  EXPECT_GT(MaxAbsDiff(before, reference), 1e-2f);  // the steps did move the model
}

// The noise is added once: with no samples, the step is minus the noise, whose variance over
// 100,100 parameters is sigma^2 C^2 = 1 (two ranks each adding noise would give 2), and it is
// the noise one process draws from the same seed.
TEST(ProcessGroupTest, NoiseIsAddedOnceOverTheRanks) {
  const std::vector<TensorList> ranks = RunRanks("noise", 2);
  ASSERT_EQ(ranks.size(), 2u);
  double sum = 0, squares = 0;
  size_t n = 0;
  for (const NamedTensor& t : ranks[0]) {
    for (float v : t.data) {
      sum += v;
      squares += double{v} * v;
      ++n;
    }
  }
  ASSERT_EQ(n, 100100u);
  const double mean = sum / n, variance = squares / n - mean * mean;
  EXPECT_NEAR(variance, 1.0, 0.03);
  TrainRun alone = MakeRun("noise");
  ASSERT_TRUE(Train(alone, 0, 0, nullptr).ok());
  EXPECT_EQ(MaxAbsDiff(ranks[0], Parameters(alone.net)), 0.0f);
  EXPECT_EQ(MaxAbsDiff(ranks[0], ranks[1]), 0.0f);
}

// A rank whose peers never come fails within its timeout, naming the rendezvous file.
TEST(ProcessGroupTest, ARankAloneFailsWithinItsTimeout) {
  ProcessGroupOptions options;
  options.store_path = FreshTestDir("alone") + "/rendezvous";
  options.rank = 0;
  options.world_size = 2;
  options.timeout = absl::Seconds(2);
  const auto start = std::chrono::steady_clock::now();
  auto reducer = JoinGlooGroup(options);
  ASSERT_FALSE(reducer.ok());
  EXPECT_TRUE(absl::IsDeadlineExceeded(reducer.status()) || absl::IsUnavailable(reducer.status()))
      << reducer.status();
  EXPECT_NE(reducer.status().message().find(options.store_path), std::string::npos)
      << reducer.status();
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(30));
  options.rank = 2;
  EXPECT_EQ(JoinGlooGroup(options).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace fl
