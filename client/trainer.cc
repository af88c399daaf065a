#include "client/trainer.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <optional>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "client/dicom.h"
#include "client/trainer_data.h"
#include "client/update.h"
#include "common/status.h"
#include "common/torch_pch.h"
#include "models/model.h"
#include "privacy/dp_plan.h"
#include "privacy/dp_sgd.h"
// Declarations only (no CUDA headers): safe with CPU and CUDA builds of LibTorch.
#include <torch/cuda.h>

namespace fl {
namespace {

constexpr int kDefaultBatchSize = 32;
constexpr int kDefaultLocalSteps = 10;
constexpr double kDefaultLearningRate = 0.01;
constexpr int kEvalBatchSize = 64;
absl::StatusOr<ModelSpec> ModelSpecFor(const JobSpec& spec) {
  if (spec.image_size() == 0) return absl::InvalidArgumentError("job image_size is 0");
  ModelSpec model;
  model.name = spec.model();
  model.in_channels = spec.in_channels() > 0 ? static_cast<int>(spec.in_channels()) : 1;
  model.image_size = static_cast<int>(spec.image_size());
  model.num_outputs = spec.labels_size();
  return model;
}

absl::StatusOr<std::unique_ptr<torch::optim::Optimizer>> MakeOptimizer(
    const LocalOptimizer& o, const std::vector<torch::Tensor>& params) {
  const double lr = o.learning_rate() > 0 ? o.learning_rate() : kDefaultLearningRate;
  if (o.learning_rate() < 0 || o.momentum() < 0 || o.weight_decay() < 0) {
    return absl::InvalidArgumentError(
        "local_optimizer learning_rate, momentum and weight_decay must not be negative");
  }
  if (o.name().empty() || o.name() == "sgd") {
    return std::make_unique<torch::optim::SGD>(
        params,
        torch::optim::SGDOptions(lr).momentum(o.momentum()).weight_decay(o.weight_decay()));
  }
  if (o.name() == "adam") {
    return std::make_unique<torch::optim::Adam>(
        params, torch::optim::AdamOptions(lr).weight_decay(o.weight_decay()));
  }
  return absl::InvalidArgumentError(
      absl::StrCat("local_optimizer.name \"", o.name(), "\" is neither \"sgd\" nor \"adam\""));
}

// Name of the first NVIDIA GPU as the driver reports it; "0" when unknown.
std::string CudaDeviceName() {
  std::error_code ec;
  for (const auto& entry :
       std::filesystem::directory_iterator("/proc/driver/nvidia/gpus", ec)) {
    std::ifstream in(entry.path() / "information");
    std::string line;
    while (std::getline(in, line)) {
      if (!absl::StartsWith(line, "Model:")) continue;
      std::string name = line.substr(6);
      name.erase(0, name.find_first_not_of(" \t"));
      if (!name.empty()) return name;
    }
  }
  return "0";
}

int ChannelsOf(const JobSpec& spec) {
  return spec.in_channels() > 0 ? static_cast<int>(spec.in_channels()) : 1;
}

absl::StatusOr<std::vector<float>> DecodeDicomPixels(const Sample& sample, int size) {
  ASSIGN_OR_RETURN(DicomImage image, DecodeDicom(sample.path, size));
  return std::move(image.pixels);
}

absl::StatusOr<torch::Device> PickDevice(const std::string& name) {
  try {
    if (name == "cpu") return torch::Device(torch::kCPU);
    if (name == "auto") {
      return torch::Device(torch::cuda::is_available() ? torch::kCUDA : torch::kCPU);
    }
    if (name == "cuda") {
      if (!torch::cuda::is_available()) {
        return absl::FailedPreconditionError(
            "device \"cuda\" asked for, but CUDA is not available (no GPU or a CPU-only LibTorch)");
      }
      return torch::Device(torch::kCUDA);
    }
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("probing CUDA: ", e.what_without_backtrace()));
  }
  return absl::InvalidArgumentError(
      absl::StrCat("device \"", name, "\" is not \"auto\", \"cpu\" or \"cuda\""));
}

struct StepStats {
  uint64_t samples = 0;
  int steps = 0;
  double loss_sum = 0;
  double mean_loss = 0;  // per step (non-private) or per sample (DP-SGD)
};

// The Poisson batches of one DP round, each split into micro-batches of at most `batch`
// indices: step s trains on micro[first[s]] .. micro[first[s + 1] - 1] (possibly none).
struct DpRound {
  std::vector<std::vector<int>> micro;
  std::vector<size_t> first;
  uint64_t drawn = 0;
};

absl::StatusOr<DpRound> DrawDpRound(int64_t n, const DpPlan& plan, int batch, uint64_t seed) {
  at::Generator generator = at::detail::createCPUGenerator(seed);
  DpRound round;
  for (uint64_t s = 0; s < plan.steps_per_round; ++s) {
    round.first.push_back(round.micro.size());
    ASSIGN_OR_RETURN(const std::vector<int64_t> drawn,
                     PoissonSample(n, plan.sample_rate, generator));
    round.drawn += drawn.size();
    for (size_t i = 0; i < drawn.size(); i += batch) {
      round.micro.emplace_back(drawn.begin() + i,
                               drawn.begin() + std::min(drawn.size(), i + batch));
    }
  }
  round.first.push_back(round.micro.size());
  return round;
}

// Per-sample BCE-with-logits summed over the sample's known targets (NaN: unknown, masked);
// [n]. Summed, not averaged, so that a sample's gradient does not grow as its labels go missing.
torch::Tensor PerSampleLoss(const torch::Tensor& logits, const torch::Tensor& targets) {
  namespace F = torch::nn::functional;
  TORCH_CHECK(logits.sizes() == targets.sizes(), "model output has shape ", logits.sizes(),
              ", not ", targets.sizes());
  torch::Tensor known = torch::isnan(targets).logical_not();
  return F::binary_cross_entropy_with_logits(
             logits, torch::where(known, targets, torch::zeros_like(targets)),
             F::BinaryCrossEntropyWithLogitsFuncOptions()
                 .weight(known.to(torch::kFloat32))
                 .reduction(torch::kNone))
      .sum(1);
}

class TorchTrainer : public LocalTrainer {
 public:
  TorchTrainer(Dataset data, TrainerOptions options, torch::Device device)
      : data_(std::move(data)),
        options_(std::move(options)),
        device_(device),
        cache_(options_.loader),
        heads_(options_.state_dir) {}

  absl::StatusOr<TrainResult> Train(const std::string& job_id, const JobSpec& spec,
                                    const std::vector<std::string>& train_labels,
                                    const TensorList& global, uint32_t round) override {
    const std::string what = absl::StrCat("training job ", job_id, " round ", round);
    try {
      auto result = TrainImpl(job_id, spec, train_labels, global, round);
      if (!result.ok()) return Annotate(result.status(), what);
      return result;
    } catch (const c10::Error& e) {
      return absl::InternalError(absl::StrCat(what, ": LibTorch: ", e.what_without_backtrace()));
    } catch (const std::exception& e) {
      return absl::InternalError(absl::StrCat(what, ": ", e.what()));
    }
  }

  absl::StatusOr<std::vector<LabelMetric>> Evaluate(const std::string& job_id,
                                                    const JobSpec& spec,
                                                    const std::vector<std::string>& train_labels,
                                                    const TensorList& weights) override {
    const std::string what = absl::StrCat("evaluating job ", job_id);
    try {
      auto metrics = EvaluateImpl(job_id, spec, train_labels, weights);
      if (!metrics.ok()) return Annotate(metrics.status(), what);
      return metrics;
    } catch (const c10::Error& e) {
      return absl::InternalError(absl::StrCat(what, ": LibTorch: ", e.what_without_backtrace()));
    } catch (const std::exception& e) {
      return absl::InternalError(absl::StrCat(what, ": ", e.what()));
    }
  }

  std::string Hardware() const override {
    if (device_.is_cuda()) return absl::StrCat("cuda:", CudaDeviceName());
    return absl::StrCat("cpu:", torch::get_num_threads(), " threads");
  }

 private:
  absl::StatusOr<TrainResult> TrainImpl(const std::string& job_id, const JobSpec& spec,
                                        const std::vector<std::string>& train_labels,
                                        const TensorList& global, uint32_t round);
  absl::StatusOr<std::vector<LabelMetric>> EvaluateImpl(
      const std::string& job_id, const JobSpec& spec,
      const std::vector<std::string>& train_labels, const TensorList& weights);
  absl::StatusOr<std::shared_ptr<ClassifierImpl>> BuildModel(const std::string& job_id,
                                                             const JobSpec& spec,
                                                             const TensorList& weights);
  absl::StatusOr<TensorList> PrivateHead(const std::string& job_id, ClassifierImpl& model,
                                         const TensorList& weights);
  absl::StatusOr<std::vector<std::vector<int>>> PlanRound(const JobSpec& spec, int steps,
                                                          uint64_t seed) const;
  absl::StatusOr<StepStats> TrainSteps(ClassifierImpl& model, torch::optim::Optimizer& optimizer,
                                       const JobSpec& spec, const LabelMap& labels,
                                       uint64_t seed);
  absl::StatusOr<StepStats> DpTrainSteps(ClassifierImpl& model,
                                         torch::optim::Optimizer& optimizer, const JobSpec& spec,
                                         const LabelMap& labels, uint64_t seed);
  absl::StatusOr<StepStats> RunDpSteps(ClassifierImpl& model, torch::optim::Optimizer& optimizer,
                                       DpSgdEngine& engine, const DpRound& round,
                                       BatchPrefetcher& batches, int size, int channels);
  torch::Tensor ToTargets(HostBatch& batch) const;
  absl::Status CheckCancelled() const;
  absl::StatusOr<StepStats> RunSteps(ClassifierImpl& model, torch::optim::Optimizer& optimizer,
                                     BatchPrefetcher& batches, int count, int size,
                                     int channels);
  HostBatch LoadBatch(Split split, const std::vector<int>& indices, int size,
                      const LabelMap& labels, std::optional<uint64_t> augment_seed) {
    return AssembleBatch(cache_, split, Samples(split), indices, size, labels.column,
                         augment_seed);
  }
  torch::Tensor ToImages(HostBatch& batch, int size, int channels) const;
  const std::vector<Sample>& Samples(Split split) const {
    return split == Split::kTrain ? data_.train : data_.test;
  }

  const Dataset data_;
  const TrainerOptions options_;
  const torch::Device device_;
  ImageCache cache_;
  HeadStore heads_;
};

torch::Tensor TorchTrainer::ToImages(HostBatch& batch, int size, int channels) const {
  torch::Tensor images =
      torch::from_blob(batch.pixels.data(), {batch.n, 1, size, size}, torch::kFloat32);
  if (channels > 1) images = images.expand({batch.n, channels, size, size}).contiguous();
  return images.to(device_, /*non_blocking=*/false, /*copy=*/true);
}

torch::Tensor TorchTrainer::ToTargets(HostBatch& batch) const {
  const int64_t num_labels = static_cast<int64_t>(batch.targets.size()) / batch.n;
  return torch::from_blob(batch.targets.data(), {batch.n, num_labels}, torch::kFloat32)
      .to(device_, /*non_blocking=*/false, /*copy=*/true);
}

absl::StatusOr<StepStats> TorchTrainer::RunDpSteps(ClassifierImpl& model,
                                                   torch::optim::Optimizer& optimizer,
                                                   DpSgdEngine& engine, const DpRound& round,
                                                   BatchPrefetcher& batches, int size,
                                                   int channels) {
  StepStats stats;
  model.train();
  for (size_t s = 0; s + 1 < round.first.size(); ++s) {
    RETURN_IF_ERROR(CheckCancelled());
    for (size_t k = round.first[s]; k < round.first[s + 1]; ++k) {
      HostBatch batch = batches.Next();
      RETURN_IF_ERROR(batch.status);
      stats.samples += batch.n;
      // A sample without a known target has a zero loss: nothing to accumulate.
      if (batch.n == 0 || batch.known_targets == 0) continue;
      RETURN_IF_ERROR(engine.AccumulateMicroBatch([&] {
        torch::Tensor losses =
            PerSampleLoss(model.forward(ToImages(batch, size, channels)), ToTargets(batch));
        stats.loss_sum += losses.detach().sum().item<double>();
        return losses;
      }));
    }
    // An empty batch still steps: the noise alone, so the batch size is not revealed.
    RETURN_IF_ERROR(engine.Step(optimizer));
    ++stats.steps;
  }
  return stats;
}

absl::Status TorchTrainer::CheckCancelled() const {
  if (options_.cancelled && options_.cancelled()) {
    return absl::CancelledError("training interrupted: the client is stopping");
  }
  return absl::OkStatus();
}

absl::StatusOr<StepStats> TorchTrainer::RunSteps(ClassifierImpl& model,
                                                 torch::optim::Optimizer& optimizer,
                                                 BatchPrefetcher& batches, int count, int size,
                                                 int channels) {
  namespace F = torch::nn::functional;
  StepStats stats;
  model.train();
  for (int s = 0; s < count; ++s) {
    RETURN_IF_ERROR(CheckCancelled());
    HostBatch batch = batches.Next();
    RETURN_IF_ERROR(batch.status);
    if (batch.n == 0 || batch.known_targets == 0) continue;  // nothing to learn from
    torch::Tensor targets = ToTargets(batch);
    const int64_t num_labels = targets.size(1);
    torch::Tensor known = torch::isnan(targets).logical_not();
    torch::Tensor logits = model.forward(ToImages(batch, size, channels));
    if (logits.sizes() != targets.sizes()) {
      return absl::InternalError(absl::StrCat("model output has shape ", c10::str(logits.sizes()),
                                              ", not [", batch.n, ", ", num_labels, "]"));
    }
    torch::Tensor loss =
        F::binary_cross_entropy_with_logits(
            logits, torch::where(known, targets, torch::zeros_like(targets)),
            F::BinaryCrossEntropyWithLogitsFuncOptions()
                .weight(known.to(torch::kFloat32))
                .reduction(torch::kSum)) /
        static_cast<double>(batch.known_targets);
    optimizer.zero_grad();
    loss.backward();
    optimizer.step();
    stats.loss_sum += loss.item<double>();
    stats.samples += batch.n;
    ++stats.steps;
  }
  return stats;
}

absl::StatusOr<TensorList> TorchTrainer::PrivateHead(const std::string& job_id,
                                                     ClassifierImpl& model,
                                                     const TensorList& weights) {
  ASSIGN_OR_RETURN(std::optional<TensorList> kept, heads_.Get(job_id));
  if (kept.has_value()) return *std::move(kept);
  // First use: the global model's head when it comes along, else the fresh one (created from
  // the job's seed, as the global model was).
  const std::string prefix = model.head_prefix();
  TensorList fresh = HeadOf(ExtractWeights(model), prefix);
  TensorList from_global = HeadOf(weights, prefix);
  return from_global.size() == fresh.size() ? from_global : fresh;
}

absl::StatusOr<std::shared_ptr<ClassifierImpl>> TorchTrainer::BuildModel(
    const std::string& job_id, const JobSpec& spec, const TensorList& weights) {
  ASSIGN_OR_RETURN(ModelSpec model_spec, ModelSpecFor(spec));
  ASSIGN_OR_RETURN(std::shared_ptr<ClassifierImpl> model, CreateModel(model_spec, spec.seed()));
  if (!SiteMode(spec)) {
    RETURN_IF_ERROR(Annotate(LoadWeights(*model, weights), "loading the global weights"));
  } else {
    ASSIGN_OR_RETURN(TensorList head, PrivateHead(job_id, *model, weights));
    const std::string prefix = model->head_prefix();
    TensorList full = ExtractWeights(*model);
    for (NamedTensor& t : full) {
      const bool is_head = IsHead(t.name, prefix);
      const NamedTensor* source = FindTensor(is_head ? head : weights, t.name);
      if (source == nullptr) {
        return absl::InvalidArgumentError(absl::StrCat(
            is_head ? "the private head" : "the global weights", " lack tensor ", t.name));
      }
      t = *source;
    }
    RETURN_IF_ERROR(Annotate(LoadWeights(*model, full), "loading backbone and private head"));
  }
  model->to(device_);
  return model;
}

absl::StatusOr<std::vector<std::vector<int>>> TorchTrainer::PlanRound(const JobSpec& spec,
                                                                      int steps,
                                                                      uint64_t seed) const {
  const int size = static_cast<int>(spec.image_size());
  std::vector<int> usable;
  for (int i = 0; i < static_cast<int>(data_.train.size()); ++i) {
    if (!cache_.KnownBad(Split::kTrain, i, size)) usable.push_back(i);
  }
  if (usable.empty()) {
    return absl::FailedPreconditionError("none of the train split's images can be decoded");
  }
  const int batch = std::min<int>(spec.batch_size() > 0 ? spec.batch_size() : kDefaultBatchSize,
                                  usable.size());
  return PlanTrainBatches(std::move(usable), batch, steps, seed);
}

absl::StatusOr<StepStats> TorchTrainer::TrainSteps(ClassifierImpl& model,
                                                   torch::optim::Optimizer& optimizer,
                                                   const JobSpec& spec, const LabelMap& labels,
                                                   uint64_t seed) {
  const int size = static_cast<int>(spec.image_size());
  const int steps = spec.local_steps() > 0 ? spec.local_steps() : kDefaultLocalSteps;
  ASSIGN_OR_RETURN(const std::vector<std::vector<int>> plan, PlanRound(spec, steps, seed));
  BatchPrefetcher batches(
      steps,
      [&](int k) {
        return LoadBatch(Split::kTrain, plan[k], size, labels, seed ^ ((k + 1) * 0x9E3779B9ull));
      },
      options_.loader_threads, 2 * options_.loader_threads);
  ASSIGN_OR_RETURN(StepStats stats,
                   RunSteps(model, optimizer, batches, steps, size, ChannelsOf(spec)));
  if (stats.steps == 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "no step possible: no sampled train image decoded with a known value of the train "
        "labels (", cache_.failures(), " images undecodable)"));
  }
  if (!std::isfinite(stats.loss_sum)) {
    return absl::InternalError("training diverged: the loss is not finite");
  }
  stats.mean_loss = stats.loss_sum / stats.steps;
  return stats;
}

// DP-SGD with the plan the daemon recorded in its ledger (PlanDp over the whole train split).
// Sampling is over the whole train split; an undecodable sample that is drawn is dropped from
// its batch (the loader skips it). That slightly changes the sampling (such a sample acts as one
// with a zero gradient), which the accounting with q over the whole split still covers.
absl::StatusOr<StepStats> TorchTrainer::DpTrainSteps(ClassifierImpl& model,
                                                     torch::optim::Optimizer& optimizer,
                                                     const JobSpec& spec, const LabelMap& labels,
                                                     uint64_t seed) {
  const int64_t n = static_cast<int64_t>(data_.train.size());
  ASSIGN_OR_RETURN(const DpPlan plan, PlanDp(spec, n));
  const bool test_seed = options_.dp_test_seed != 0;
  uint64_t sample_seed = options_.dp_test_seed ^ seed;
  if (!test_seed) {
    ASSIGN_OR_RETURN(sample_seed, SecureSeed());
  }
  DpSgdOptions dp;
  dp.clip_norm = spec.dp().clip_norm();
  dp.noise_multiplier = plan.noise_multiplier;
  dp.expected_batch_size = plan.sample_rate * n;
  dp.secure_noise = !test_seed;
  dp.test_seed = sample_seed * 0x9E3779B97F4A7C15ull + 1;  // noise apart from sampling
  ASSIGN_OR_RETURN(std::unique_ptr<DpSgdEngine> engine, DpSgdEngine::Create(model, dp));
  const int batch = spec.batch_size() > 0 ? spec.batch_size() : kDefaultBatchSize;
  ASSIGN_OR_RETURN(const DpRound round, DrawDpRound(n, plan, batch, sample_seed));
  const int size = static_cast<int>(spec.image_size());
  BatchPrefetcher batches(
      static_cast<int>(round.micro.size()),
      [&](int k) {
        return LoadBatch(Split::kTrain, round.micro[k], size, labels,
                         seed ^ ((k + 1) * 0x9E3779B9ull));
      },
      options_.loader_threads, 2 * options_.loader_threads);
  ASSIGN_OR_RETURN(StepStats stats, RunDpSteps(model, optimizer, *engine, round, batches, size,
                                               ChannelsOf(spec)));
  if (round.drawn > 0 && stats.samples == 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "none of the ", round.drawn, " sampled train images decoded (", cache_.failures(),
        " images undecodable)"));
  }
  if (!std::isfinite(stats.loss_sum)) {
    return absl::InternalError("training diverged: the loss is not finite");
  }
  stats.mean_loss = stats.samples > 0 ? stats.loss_sum / stats.samples : 0.0;
  return stats;
}

absl::StatusOr<TrainResult> TorchTrainer::TrainImpl(const std::string& job_id,
                                                    const JobSpec& spec,
                                                    const std::vector<std::string>& train_labels,
                                                    const TensorList& global, uint32_t round) {
  if (data_.train.empty()) {
    return absl::FailedPreconditionError("the train split is empty: no sample to train on");
  }
  ASSIGN_OR_RETURN(LabelMap labels, MapLabels(spec, train_labels, data_.label_names));
  ASSIGN_OR_RETURN(std::shared_ptr<ClassifierImpl> model, BuildModel(job_id, spec, global));
  ASSIGN_OR_RETURN(std::unique_ptr<torch::optim::Optimizer> optimizer,
                   MakeOptimizer(spec.local_optimizer(), model->parameters()));
  const uint64_t seed = RoundSeed(job_id, spec.seed(), round);
  ASSIGN_OR_RETURN(StepStats stats,
                   spec.dp().enabled() ? DpTrainSteps(*model, *optimizer, spec, labels, seed)
                                       : TrainSteps(*model, *optimizer, spec, labels, seed));
  // Label mode: ComputeUpdate zeroes the head rows of labels not trained here. With DP-SGD the
  // engine noised those rows too; they are rows whose noise is simply not sent.
  const std::string prefix = model->head_prefix();
  TensorList local = ExtractWeights(*model);
  TrainResult result;
  ASSIGN_OR_RETURN(result.update, ComputeUpdate(global, local, SiteMode(spec), prefix, labels));
  if (SiteMode(spec)) {
    RETURN_IF_ERROR(heads_.Put(job_id, HeadOf(local, prefix)));
  } else {
    result.labels = train_labels;
  }
  result.num_samples = stats.samples;
  result.loss = stats.mean_loss;
  return result;
}

absl::StatusOr<std::vector<LabelMetric>> TorchTrainer::EvaluateImpl(
    const std::string& job_id, const JobSpec& spec, const std::vector<std::string>& train_labels,
    const TensorList& weights) {
  if (data_.test.empty()) {
    return absl::FailedPreconditionError("the test split is empty: no sample to evaluate on");
  }
  ASSIGN_OR_RETURN(LabelMap labels, MapLabels(spec, train_labels, data_.label_names));
  ASSIGN_OR_RETURN(std::shared_ptr<ClassifierImpl> model, BuildModel(job_id, spec, weights));
  model->eval();
  torch::NoGradGuard no_grad;
  const int size = static_cast<int>(spec.image_size());
  std::vector<std::vector<int>> plan;
  for (int i = 0; i < static_cast<int>(data_.test.size()); i += kEvalBatchSize) {
    plan.emplace_back(std::min<int>(kEvalBatchSize, data_.test.size() - i));
    std::iota(plan.back().begin(), plan.back().end(), i);
  }
  BatchPrefetcher batches(
      plan.size(),
      [&](int k) { return LoadBatch(Split::kTest, plan[k], size, labels, std::nullopt); },
      options_.loader_threads, 2 * options_.loader_threads);
  ScoreTable table(labels.column.size());
  for (size_t k = 0; k < plan.size(); ++k) {
    HostBatch batch = batches.Next();
    RETURN_IF_ERROR(batch.status);
    if (batch.n == 0) continue;
    torch::Tensor probs = torch::sigmoid(model->forward(ToImages(batch, size, ChannelsOf(spec))));
    probs = probs.to(torch::kCPU).contiguous();
    if (probs.dim() != 2) return absl::InternalError("model output is not a matrix");
    RETURN_IF_ERROR(table.Add(batch, probs.data_ptr<float>(), probs.size(0), probs.size(1)));
  }
  if (table.images == 0) {
    return absl::FailedPreconditionError("none of the test split's images can be decoded");
  }
  return table.Metrics(spec, train_labels);
}

}  // namespace

absl::StatusOr<std::unique_ptr<LocalTrainer>> CreateLocalTrainer(const Dataset& data,
                                                                 const TrainerOptions& options) {
  for (const std::vector<Sample>* split : {&data.train, &data.test}) {
    for (const Sample& sample : *split) {
      if (sample.labels.size() != data.label_names.size()) {
        return absl::InvalidArgumentError(
            absl::StrCat("sample ", sample.path, " has ", sample.labels.size(),
                         " label values for ", data.label_names.size(), " label columns"));
      }
    }
  }
  ASSIGN_OR_RETURN(torch::Device device, PickDevice(options.device));
  TrainerOptions resolved = options;
  if (!resolved.loader) resolved.loader = DecodeDicomPixels;
  if (resolved.loader_threads < 1) resolved.loader_threads = 1;
  return std::unique_ptr<LocalTrainer>(
      std::make_unique<TorchTrainer>(data, std::move(resolved), device));
}

}  // namespace fl
