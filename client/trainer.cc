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
#include "client/workload.h"
#include "common/status.h"
#include "common/torch_pch.h"
#include "models/diffusion.h"
#include "models/model.h"
#include "models/spec.h"
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
// Sets the workload's generator apart from the round's other seeds.
constexpr uint64_t kWorkloadSeedSalt = 0x5851F42D4C957F2Dull;
absl::StatusOr<std::unique_ptr<torch::optim::Optimizer>> MakeOptimizer(
    const LocalOptimizer& o, const std::vector<torch::Tensor>& params) {
  const double lr = o.learning_rate() > 0 ? o.learning_rate() : kDefaultLearningRate;
  if (o.learning_rate() < 0 || o.momentum() < 0 || o.weight_decay() < 0) {
    return absl::InvalidArgumentError(
        "local_optimizer learning_rate, momentum and weight_decay must not be negative");
  }
  if (o.name().empty() || o.name() == "sgd") {
    return std::make_unique<torch::optim::SGD>(
        params, torch::optim::SGDOptions(lr).momentum(o.momentum()).weight_decay(o.weight_decay()));
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
  for (const auto& entry : std::filesystem::directory_iterator("/proc/driver/nvidia/gpus", ec)) {
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

class TorchTrainer : public LocalTrainer {
 public:
  TorchTrainer(Dataset data, TrainerOptions options, torch::Device device)
      : data_(std::move(data)),
        options_(std::move(options)),
        device_(device),
        cache_(options_.loader),
        heads_(options_.state_dir) {}

  using LocalTrainer::Train;
  absl::StatusOr<TrainResult> Train(const std::string& job_id, const JobSpec& spec,
                                    const std::vector<std::string>& train_labels,
                                    const TensorList& global, uint32_t round,
                                    const TrainProgressFn& progress) override {
    const std::string what = absl::StrCat("training job ", job_id, " round ", round);
    try {
      auto result = TrainImpl(job_id, spec, train_labels, global, round, progress);
      if (!result.ok()) return Annotate(result.status(), what);
      return result;
    } catch (const c10::Error& e) {
      return absl::InternalError(absl::StrCat(what, ": LibTorch: ", e.what_without_backtrace()));
    } catch (const std::exception& e) {
      return absl::InternalError(absl::StrCat(what, ": ", e.what()));
    }
  }

  absl::StatusOr<MetricsReport> Evaluate(const std::string& job_id, const JobSpec& spec,
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
                                        const TensorList& global, uint32_t round,
                                        const TrainProgressFn& progress);
  absl::StatusOr<MetricsReport> EvaluateImpl(const std::string& job_id, const JobSpec& spec,
                                             const std::vector<std::string>& train_labels,
                                             const TensorList& weights);
  absl::StatusOr<std::shared_ptr<ModelImpl>> BuildModel(const std::string& job_id,
                                                        const JobSpec& spec,
                                                        const TensorList& weights);
  absl::StatusOr<TensorList> PrivateHead(const std::string& job_id, ModelImpl& model,
                                         const TensorList& weights);
  absl::StatusOr<std::vector<std::vector<int>>> PlanRound(const JobSpec& spec, int steps,
                                                          uint64_t seed) const;
  // The job's frozen autoencoder when its workload needs one, else null.
  absl::StatusOr<std::shared_ptr<KlVaeImpl>> FrozenAutoencoder(const JobSpec& spec);
  absl::StatusOr<StepStats> TrainSteps(ModelImpl& model, torch::optim::Optimizer& optimizer,
                                       StepContext& context, const LabelMap& labels, uint64_t seed,
                                       const TrainProgressFn& progress);
  absl::StatusOr<StepStats> DpTrainSteps(ModelImpl& model, torch::optim::Optimizer& optimizer,
                                         StepContext& context, const LabelMap& labels,
                                         uint64_t seed, const TrainProgressFn& progress);
  absl::StatusOr<StepStats> RunDpSteps(ModelImpl& model, torch::optim::Optimizer& optimizer,
                                       DpSgdEngine& engine, const DpRound& round,
                                       BatchPrefetcher& batches, StepContext& context,
                                       const TrainProgressFn& progress);
  absl::Status CheckCancelled() const;
  absl::StatusOr<StepStats> RunSteps(ModelImpl& model, torch::optim::Optimizer& optimizer,
                                     BatchPrefetcher& batches, int count, StepContext& context,
                                     const TrainProgressFn& progress);
  HostBatch LoadBatch(Split split, const std::vector<int>& indices, int size,
                      const LabelMap& labels, std::optional<uint64_t> augment_seed) {
    return AssembleBatch(cache_, split, Samples(split), indices, size, labels.column, augment_seed);
  }
  // The batch on the training device, images expanded to the job's channels.
  DeviceBatch ToDevice(HostBatch& batch, const JobSpec& spec) const;
  const std::vector<Sample>& Samples(Split split) const {
    return split == Split::kTrain ? data_.train : data_.test;
  }

  const Dataset data_;
  const TrainerOptions options_;
  const torch::Device device_;
  ImageCache cache_;
  HeadStore heads_;
};

DeviceBatch TorchTrainer::ToDevice(HostBatch& batch, const JobSpec& spec) const {
  const int size = static_cast<int>(spec.image_size());
  const int channels = ChannelsOf(spec);
  DeviceBatch out;
  out.n = batch.n;
  out.known_targets = batch.known_targets;
  torch::Tensor images =
      torch::from_blob(batch.pixels.data(), {batch.n, 1, size, size}, torch::kFloat32);
  if (channels > 1) images = images.expand({batch.n, channels, size, size}).contiguous();
  out.images = images.to(device_, /*non_blocking=*/false, /*copy=*/true);
  if (batch.n > 0 && !batch.targets.empty()) {
    const int64_t num_labels = static_cast<int64_t>(batch.targets.size()) / batch.n;
    out.targets = torch::from_blob(batch.targets.data(), {batch.n, num_labels}, torch::kFloat32)
                      .to(device_, /*non_blocking=*/false, /*copy=*/true);
  }
  return out;
}

absl::StatusOr<StepStats> TorchTrainer::RunDpSteps(ModelImpl& model,
                                                   torch::optim::Optimizer& optimizer,
                                                   DpSgdEngine& engine, const DpRound& round,
                                                   BatchPrefetcher& batches, StepContext& context,
                                                   const TrainProgressFn& progress) {
  const JobSpec& spec = context.spec;
  const Workload& workload = WorkloadFor(spec);
  StepStats stats;
  model.train();
  for (size_t s = 0; s + 1 < round.first.size(); ++s) {
    RETURN_IF_ERROR(CheckCancelled());
    for (size_t k = round.first[s]; k < round.first[s + 1]; ++k) {
      HostBatch batch = batches.Next();
      RETURN_IF_ERROR(batch.status);
      stats.samples += batch.n;
      // E.g. a sample without a known target has a zero loss: nothing to accumulate.
      if (!workload.Learnable(batch)) continue;
      RETURN_IF_ERROR(engine.AccumulateMicroBatch([&] {
        const DeviceBatch on_device = ToDevice(batch, spec);
        torch::Tensor losses = workload.TrainPerSampleLoss(model, on_device, context);
        stats.loss_sum += losses.detach().sum().item<double>();
        return losses;
      }));
    }
    // An empty batch still steps: the noise alone, so the batch size is not revealed.
    RETURN_IF_ERROR(engine.Step(optimizer));
    ++stats.steps;
    if (progress) progress({stats.steps, static_cast<int>(round.first.size()) - 1, stats.samples});
  }
  return stats;
}

absl::Status TorchTrainer::CheckCancelled() const {
  if (options_.cancelled && options_.cancelled()) {
    return absl::CancelledError("training interrupted: the client is stopping");
  }
  return absl::OkStatus();
}

absl::StatusOr<StepStats> TorchTrainer::RunSteps(ModelImpl& model,
                                                 torch::optim::Optimizer& optimizer,
                                                 BatchPrefetcher& batches, int count,
                                                 StepContext& context,
                                                 const TrainProgressFn& progress) {
  const JobSpec& spec = context.spec;
  const Workload& workload = WorkloadFor(spec);
  StepStats stats;
  model.train();
  for (int s = 0; s < count; ++s) {
    RETURN_IF_ERROR(CheckCancelled());
    HostBatch batch = batches.Next();
    RETURN_IF_ERROR(batch.status);
    if (!workload.Learnable(batch)) continue;  // nothing to learn from
    const DeviceBatch on_device = ToDevice(batch, spec);
    torch::Tensor loss = workload.TrainStepLoss(model, on_device, context);
    optimizer.zero_grad();
    loss.backward();
    optimizer.step();
    stats.loss_sum += loss.item<double>();
    stats.samples += batch.n;
    ++stats.steps;
    if (progress) progress({s + 1, count, stats.samples});
  }
  return stats;
}

absl::StatusOr<TensorList> TorchTrainer::PrivateHead(const std::string& job_id, ModelImpl& model,
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

absl::StatusOr<std::shared_ptr<ModelImpl>> TorchTrainer::BuildModel(const std::string& job_id,
                                                                    const JobSpec& spec,
                                                                    const TensorList& weights) {
  ASSIGN_OR_RETURN(ModelSpec model_spec, ModelSpecFor(spec));
  ASSIGN_OR_RETURN(std::shared_ptr<ModelImpl> model, CreateModel(model_spec, spec.seed()));
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

absl::StatusOr<std::shared_ptr<KlVaeImpl>> TorchTrainer::FrozenAutoencoder(const JobSpec& spec) {
  if (!WorkloadFor(spec).NeedsFrozenAutoencoder()) return nullptr;
  const std::string& job = spec.diffusion().autoencoder_job();
  if (!options_.frozen_models) {
    return absl::FailedPreconditionError(
        absl::StrCat("this site has no way to get the frozen autoencoder of job ", job));
  }
  ASSIGN_OR_RETURN(FrozenModel frozen, options_.frozen_models(job));
  ASSIGN_OR_RETURN(ModelSpec vae_spec, FrozenAutoencoderSpec(spec, frozen.spec));
  ASSIGN_OR_RETURN(std::shared_ptr<ModelImpl> model, CreateModel(vae_spec, frozen.spec.seed()));
  RETURN_IF_ERROR(Annotate(LoadWeights(*model, frozen.weights),
                           absl::StrCat("loading the frozen autoencoder of job ", job)));
  auto vae = std::dynamic_pointer_cast<KlVaeImpl>(model);
  if (vae == nullptr) return absl::InternalError("the kl_vae registry entry is not a KlVaeImpl");
  for (torch::Tensor& p : vae->parameters()) p.requires_grad_(false);
  vae->eval();
  vae->to(device_);
  return vae;
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
  const int batch =
      std::min<int>(spec.batch_size() > 0 ? spec.batch_size() : kDefaultBatchSize, usable.size());
  return PlanTrainBatches(std::move(usable), batch, steps, seed);
}

absl::StatusOr<StepStats> TorchTrainer::TrainSteps(ModelImpl& model,
                                                   torch::optim::Optimizer& optimizer,
                                                   StepContext& context, const LabelMap& labels,
                                                   uint64_t seed, const TrainProgressFn& progress) {
  const JobSpec& spec = context.spec;
  const int size = static_cast<int>(spec.image_size());
  const int steps = spec.local_steps() > 0 ? spec.local_steps() : kDefaultLocalSteps;
  ASSIGN_OR_RETURN(const std::vector<std::vector<int>> plan, PlanRound(spec, steps, seed));
  BatchPrefetcher batches(
      steps,
      [&](int k) {
        return LoadBatch(Split::kTrain, plan[k], size, labels, seed ^ ((k + 1) * 0x9E3779B9ull));
      },
      options_.loader_threads, 2 * options_.loader_threads);
  ASSIGN_OR_RETURN(StepStats stats, RunSteps(model, optimizer, batches, steps, context, progress));
  if (stats.steps == 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("no step possible: no sampled train image decoded",
                     HasLabelHead(spec) ? " with a known value of the train labels" : "", " (",
                     cache_.failures(), " images undecodable)"));
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
absl::StatusOr<StepStats> TorchTrainer::DpTrainSteps(ModelImpl& model,
                                                     torch::optim::Optimizer& optimizer,
                                                     StepContext& context, const LabelMap& labels,
                                                     uint64_t seed,
                                                     const TrainProgressFn& progress) {
  const JobSpec& spec = context.spec;
  // With several processes (options_.reducer) this one holds a shard of the site's split: the
  // plan is over the whole split, the sampling over the shard at the same q.
  const int64_t shard = static_cast<int64_t>(data_.train.size());
  GradientReducer* reducer = options_.reducer;
  const int64_t n = reducer != nullptr ? options_.site_train_size : shard;
  if (n < shard) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the site's train split (", n, ") is smaller than this process's shard (", shard, ")"));
  }
  ASSIGN_OR_RETURN(const DpPlan plan, PlanDp(spec, n));
  const bool test_seed = options_.dp_test_seed != 0;
  // Each rank samples its shard independently (a rank's test seed is apart from the others').
  const uint64_t rank = reducer != nullptr ? static_cast<uint64_t>(reducer->rank()) : 0;
  uint64_t sample_seed = options_.dp_test_seed ^ seed ^ (rank * 0xD1B54A32D192ED03ull);
  if (!test_seed) {
    ASSIGN_OR_RETURN(sample_seed, SecureSeed());
  }
  DpSgdOptions dp;
  dp.clip_norm = spec.dp().clip_norm();
  dp.noise_multiplier = plan.noise_multiplier;
  dp.expected_batch_size = plan.sample_rate * n;
  dp.secure_noise = !test_seed;
  dp.test_seed = sample_seed * 0x9E3779B97F4A7C15ull + 1;  // noise apart from sampling
  dp.reducer = reducer;
  ASSIGN_OR_RETURN(std::unique_ptr<DpSgdEngine> engine, DpSgdEngine::Create(model, dp));
  const int batch = spec.batch_size() > 0 ? spec.batch_size() : kDefaultBatchSize;
  ASSIGN_OR_RETURN(const DpRound round, DrawDpRound(shard, plan, batch, sample_seed));
  const int size = static_cast<int>(spec.image_size());
  BatchPrefetcher batches(
      static_cast<int>(round.micro.size()),
      [&](int k) {  // augmented by step, not micro-batch: alike however the step is split
        const size_t step =
            std::upper_bound(round.first.begin(), round.first.end(), static_cast<size_t>(k)) -
            round.first.begin() - 1;
        return LoadBatch(Split::kTrain, round.micro[k], size, labels,
                         seed ^ ((step + 1) * 0x9E3779B9ull));
      },
      options_.loader_threads, 2 * options_.loader_threads);
  ASSIGN_OR_RETURN(StepStats stats,
                   RunDpSteps(model, optimizer, *engine, round, batches, context, progress));
  if (round.drawn > 0 && stats.samples == 0) {
    return absl::FailedPreconditionError(absl::StrCat("none of the ", round.drawn,
                                                      " sampled train images decoded (",
                                                      cache_.failures(), " images undecodable)"));
  }
  if (!std::isfinite(stats.loss_sum)) {
    return absl::InternalError("training diverged: the loss is not finite");
  }
  stats.mean_loss = stats.samples > 0 ? stats.loss_sum / stats.samples : 0.0;
  return stats;
}

absl::StatusOr<TrainResult> TorchTrainer::TrainImpl(const std::string& job_id, const JobSpec& spec,
                                                    const std::vector<std::string>& train_labels,
                                                    const TensorList& global, uint32_t round,
                                                    const TrainProgressFn& progress) {
  if (data_.train.empty()) {
    return absl::FailedPreconditionError("the train split is empty: no sample to train on");
  }
  if (options_.reducer != nullptr && !spec.dp().enabled()) {
    return absl::UnimplementedError(
        "training over several processes is built for DP-SGD jobs only so far");
  }
  ASSIGN_OR_RETURN(LabelMap labels, MapLabels(spec, train_labels, data_.label_names));
  ASSIGN_OR_RETURN(std::shared_ptr<ModelImpl> model, BuildModel(job_id, spec, global));
  ASSIGN_OR_RETURN(std::unique_ptr<torch::optim::Optimizer> optimizer,
                   MakeOptimizer(spec.local_optimizer(), model->parameters()));
  const uint64_t seed = RoundSeed(job_id, spec.seed(), round);
  ASSIGN_OR_RETURN(std::shared_ptr<KlVaeImpl> frozen, FrozenAutoencoder(spec));
  StepContext context{spec, at::detail::createCPUGenerator(seed ^ kWorkloadSeedSalt), frozen};
  ASSIGN_OR_RETURN(StepStats stats,
                   spec.dp().enabled()
                       ? DpTrainSteps(*model, *optimizer, context, labels, seed, progress)
                       : TrainSteps(*model, *optimizer, context, labels, seed, progress));
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

absl::StatusOr<MetricsReport> TorchTrainer::EvaluateImpl(
    const std::string& job_id, const JobSpec& spec, const std::vector<std::string>& train_labels,
    const TensorList& weights) {
  if (data_.test.empty()) {
    return absl::FailedPreconditionError("the test split is empty: no sample to evaluate on");
  }
  ASSIGN_OR_RETURN(LabelMap labels, MapLabels(spec, train_labels, data_.label_names));
  ASSIGN_OR_RETURN(std::shared_ptr<ModelImpl> model, BuildModel(job_id, spec, weights));
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
  const Workload& workload = WorkloadFor(spec);
  std::unique_ptr<Evaluation> evaluation = workload.StartEvaluation(spec, train_labels);
  ASSIGN_OR_RETURN(std::shared_ptr<KlVaeImpl> frozen, FrozenAutoencoder(spec));
  // The same draws in every evaluation of the job, so that rounds compare.
  StepContext context{spec, at::detail::createCPUGenerator(RoundSeed(job_id, spec.seed(), 0)),
                      frozen};
  int64_t decoded = 0;
  for (size_t k = 0; k < plan.size(); ++k) {
    HostBatch batch = batches.Next();
    RETURN_IF_ERROR(batch.status);
    if (batch.n == 0) continue;
    decoded += batch.n;
    const DeviceBatch on_device = ToDevice(batch, spec);
    RETURN_IF_ERROR(
        evaluation->Add(on_device, batch, workload.EvalOutput(*model, on_device, context)));
  }
  if (decoded == 0) {
    return absl::FailedPreconditionError("none of the test split's images can be decoded");
  }
  return evaluation->Finish();
}

}  // namespace

absl::StatusOr<std::unique_ptr<LocalTrainer>> CreateLocalTrainer(const Dataset& data,
                                                                 const TrainerOptions& options) {
  for (const std::vector<Sample>* split : {&data.train, &data.test}) {
    for (const Sample& sample : *split) {
      if (sample.labels.size() != data.label_names.size()) {
        return absl::InvalidArgumentError(absl::StrCat("sample ", sample.path, " has ",
                                                       sample.labels.size(), " label values for ",
                                                       data.label_names.size(), " label columns"));
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
