// fl-bench dp: one training step of the same model without and with DP-SGD (privacy/dp_sgd.h),
// time and peak memory: a classifier on images, or (--model latent_unet) the latent diffusion
// denoiser on latents with its per-sample diffusion loss, and then its DDIM sampling throughput.
// Peak memory is measured in forked children (one per mode) before the parent touches LibTorch,
// so each child's process peak belongs to one mode only.
#include <dlfcn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "bench/bench_util.h"
#include "bench/benches.h"
#include "common/memory.h"
#include "common/status.h"
#include "common/torch_pch.h"
#include "models/diffusion.h"
#include "models/model.h"
#include "models/spec.h"
#include "privacy/dp_sgd.h"
#include "torch/csrc/autograd/profiler_legacy.h"
#include "torch/cuda.h"

namespace fl::bench {
namespace {

struct DpBenchConfig {
  std::string model = "resnet18";
  std::string profile;  // folder for per-op traces of one step each, if set
  int64_t size = 0, batch = 0, steps = 5;
  GradSampleMode norms = GradSampleMode::kAuto;
  // CUDA: matrix products (cuBLAS) may use TF32 tensor cores, as LibTorch's cuDNN convolutions
  // do by default. Applies to both kinds of step.
  bool tf32 = false;
};

// A model, its inputs and both kinds of step, on CUDA when available.
class StepRunner {
 public:
  static absl::StatusOr<std::unique_ptr<StepRunner>> Create(const DpBenchConfig& config) {
    ASSIGN_OR_RETURN(std::shared_ptr<ModelImpl> model, CreateModel(SpecOf(config), 1));
    auto runner = std::unique_ptr<StepRunner>(new StepRunner(std::move(model), config));
    DpSgdOptions options;
    options.clip_norm = 1.0;
    options.noise_multiplier = 1.0;
    options.expected_batch_size = static_cast<double>(config.batch);
    options.norm_mode = config.norms;
    ASSIGN_OR_RETURN(runner->engine_, DpSgdEngine::Create(*runner->model_, options));
    return runner;
  }

  absl::Status Step(bool dp) {
    try {
      if (dp) {
        RETURN_IF_ERROR(engine_->AccumulateMicroBatch([this] { return Loss().sum(1); }));
        RETURN_IF_ERROR(engine_->Step(opt_));
      } else {
        opt_.zero_grad();
        Loss().sum(1).mean().backward();
        opt_.step();
      }
      if (device_.is_cuda()) torch::cuda::synchronize();
      return absl::OkStatus();
    } catch (const std::exception& e) {
      return absl::InternalError(absl::StrCat("training step: ", e.what()));
    }
  }

  bool cuda() const { return device_.is_cuda(); }

  // The denoiser's DDIM sampling of `n` latents in `steps` steps with guidance 2 (two UNet
  // passes per step): seconds.
  absl::StatusOr<double> TimeSampling(int64_t n, int64_t steps) {
    auto* unet = dynamic_cast<LatentUNetImpl*>(model_.get());
    if (unet == nullptr) return absl::InvalidArgumentError("not a latent_unet");
    DdimOptions options;
    options.steps = steps;
    options.guidance_scale = 2;
    const auto start = std::chrono::steady_clock::now();
    ASSIGN_OR_RETURN(torch::Tensor z, DdimSample(*unet, schedule_, condition_.slice(0, 0, n),
                                                 {n, x_.size(1), x_.size(2), x_.size(3)}, options));
    if (device_.is_cuda()) torch::cuda::synchronize();
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  }

  // The model of the bench: a classifier with 8 outputs on 1-channel images of the size, or the
  // denoiser on latents of that side (4 channels on the CPU, Medfusion's 8 on CUDA; widths 32,
  // 64 on the CPU, the paper's 256, 256, 512, 1024 on CUDA) conditioned on 8 findings.
  static ModelSpec SpecOf(const DpBenchConfig& config) {
    const int side = static_cast<int>(config.size);
    if (config.model != "latent_unet") return ClassifierSpec(config.model, 1, side, 8);
    return torch::cuda::is_available() ? LatentUNetSpec(8, side, {256, 256, 512, 1024}, 1024, 8)
                                       : LatentUNetSpec(4, side, {32, 64}, 128, 8);
  }

 private:
  StepRunner(std::shared_ptr<ModelImpl> model, const DpBenchConfig& config)
      : device_(torch::cuda::is_available() ? torch::kCUDA : torch::kCPU),
        model_(std::move(model)),
        opt_(model_->parameters(), 0.01) {
    at::globalContext().setAllowTF32CuBLAS(config.tf32);
    model_->to(device_);
    torch::manual_seed(0);
    const int64_t channels = SpecOf(config).input.channels;
    x_ = torch::randn({config.batch, channels, config.size, config.size}).to(device_);
    y_ = torch::randint(0, 2, {config.batch, 8}).to(torch::kFloat32).to(device_);
    condition_ = torch::randint(0, 3, {config.batch, 8}, torch::kInt64).to(device_);
  }

  // Per-sample losses [N, outputs] (summed per sample by the caller).
  torch::Tensor Loss() {
    if (auto* unet = dynamic_cast<LatentUNetImpl*>(model_.get())) {
      return DiffusionPerSampleLoss(*unet, schedule_, x_, condition_, generator_).unsqueeze(1);
    }
    namespace F = torch::nn::functional;
    return F::binary_cross_entropy_with_logits(
        model_->forward(x_), y_,
        F::BinaryCrossEntropyWithLogitsFuncOptions().reduction(torch::kNone));
  }

  torch::Device device_;
  std::shared_ptr<ModelImpl> model_;
  torch::optim::SGD opt_;
  std::unique_ptr<DpSgdEngine> engine_;
  torch::Tensor x_, y_, condition_;
  NoiseSchedule schedule_ = ScaledLinearSchedule();
  at::Generator generator_ = at::detail::createCPUGenerator(7);
};

// Bytes in use on the current CUDA device (driver view, so the caching allocator's reserve
// counts), or -1 if the CUDA runtime is not loaded.
int64_t CudaBytesInUse() {
  using MemGetInfo = int (*)(size_t*, size_t*);
  auto fn = reinterpret_cast<MemGetInfo>(dlsym(RTLD_DEFAULT, "cudaMemGetInfo"));
  size_t free_bytes = 0, total = 0;
  if (fn == nullptr || fn(&free_bytes, &total) != 0) return -1;
  return static_cast<int64_t>(total - free_bytes);
}

// In a child, CPU: the growth of the process's peak resident memory (VmHWM, reset through
// /proc/self/clear_refs) over two steps, above the memory once the model and its batch exist, in
// bytes; -1 on failure. Freed memory is kept for reuse (RetainFreedMemory), so the peak of the
// first step, with its one-time allocations, stands.
int64_t MeasurePeakGrowth(const DpBenchConfig& config, bool dp) {
  auto runner = StepRunner::Create(config);
  if (!runner.ok()) return -1;
  std::ofstream("/proc/self/clear_refs") << "5";
  auto base = ProcStatusBytes("VmRSS");
  if (!base.ok() || !(*runner)->Step(dp).ok() || !(*runner)->Step(dp).ok()) return -1;
  auto peak = ProcStatusBytes("VmHWM");
  return peak.ok() ? static_cast<int64_t>(*peak) - static_cast<int64_t>(*base) : -1;
}

// In a child, CUDA: device memory in use (the caching allocator keeps what the peak needed)
// after two steps minus before the model existed, in bytes; -1 on failure.
int64_t MeasureCudaGrowth(const DpBenchConfig& config, bool dp) {
  torch::ones({1}, torch::kCUDA);  // creates the context
  const int64_t before = CudaBytesInUse();
  auto runner = StepRunner::Create(config);
  if (before < 0 || !runner.ok() || !(*runner)->Step(dp).ok() || !(*runner)->Step(dp).ok()) {
    return -1;
  }
  const int64_t after = CudaBytesInUse();
  return after < 0 ? -1 : after - before;
}

// Forks a child that measures one mode; -1 if it failed.
int64_t PeakGrowthInChild(const DpBenchConfig& config, bool dp) {
  int fds[2];
  if (pipe(fds) != 0) return -1;
  const pid_t pid = fork();
  if (pid == 0) {
    close(fds[0]);
    const int64_t growth =
        torch::cuda::is_available() ? MeasureCudaGrowth(config, dp) : MeasurePeakGrowth(config, dp);
    const ssize_t written = write(fds[1], &growth, sizeof(growth));
    _exit(written == sizeof(growth) ? 0 : 1);
  }
  close(fds[1]);
  int64_t growth = -1;
  if (pid < 0 || read(fds[0], &growth, sizeof(growth)) != sizeof(growth)) growth = -1;
  close(fds[0]);
  if (pid > 0) waitpid(pid, nullptr, 0);
  return growth;
}

// Seconds per step for `steps` timed steps after one warm-up: {best, median}.
absl::StatusOr<std::pair<double, double>> TimeSteps(StepRunner& runner, bool dp, int64_t steps) {
  RETURN_IF_ERROR(runner.Step(dp));
  std::vector<double> times;
  for (int64_t i = 0; i < steps; ++i) {
    const auto start = std::chrono::steady_clock::now();
    RETURN_IF_ERROR(runner.Step(dp));
    times.push_back(
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  std::sort(times.begin(), times.end());
  return std::make_pair(times.front(), times[times.size() / 2]);
}

// Writes LibTorch profiler traces (Chrome trace JSON) of one step of each kind to
// DIR/plain.json and DIR/dp.json; bench/op_profile.py sums them per op. On CUDA, run with
// CUDA_LAUNCH_BLOCKING=1 so that an op's time includes its kernels.
absl::Status ProfileSteps(StepRunner& runner, const std::string& dir) {
  for (const bool dp : {false, true}) {
    const std::string path = absl::StrCat(dir, dp ? "/dp.json" : "/plain.json");
    {
      torch::autograd::profiler::RecordProfile profile(path);
      RETURN_IF_ERROR(runner.Step(dp));
    }
    std::printf("wrote %s\n", path.c_str());
  }
  return absl::OkStatus();
}

const char* NormsName(GradSampleMode mode) {
  switch (mode) {
    case GradSampleMode::kGhost:
      return "ghost";
    case GradSampleMode::kMaterialise:
      return "materialise";
    default:
      return "auto (cheaper per layer)";
  }
}

// The options as given; size and batch 0 take the device's default.
struct DpBenchArgs {
  DpBenchConfig config;
  std::string norms = "auto";
  std::string tf32 = "off";
};

DpBenchConfig ConfigFor(const DpBenchArgs& args, bool cuda) {
  DpBenchConfig config = args.config;
  const bool unet = config.model == "latent_unet";  // sizes of the latents (image / 8)
  if (config.size == 0) config.size = unet ? (cuda ? 32 : 16) : (cuda ? 224 : 128);
  if (config.batch == 0) config.batch = cuda ? 64 : 32;
  config.norms = args.norms == "ghost"         ? GradSampleMode::kGhost
                 : args.norms == "materialise" ? GradSampleMode::kMaterialise
                                               : GradSampleMode::kAuto;
  config.tf32 = args.tf32 == "on";
  return config;
}

absl::Status RunDpBench(const DpBenchArgs& args) {
  // Children first: the parent must not have started LibTorch's thread pools or CUDA when it
  // forks. A child also tells whether CUDA is there, for the device-dependent defaults.
  RetainFreedMemory();  // as fl-client does: steps reuse memory instead of faulting in pages
  bool cuda = false;
  const pid_t pid = fork();
  if (pid == 0) _exit(torch::cuda::is_available() ? 1 : 0);
  int wstatus = 0;
  if (pid > 0 && waitpid(pid, &wstatus, 0) == pid && WIFEXITED(wstatus)) {
    cuda = WEXITSTATUS(wstatus) == 1;
  }
  const DpBenchConfig config = ConfigFor(args, cuda);
  const int64_t growth[2] = {PeakGrowthInChild(config, false), PeakGrowthInChild(config, true)};

  ASSIGN_OR_RETURN(std::unique_ptr<StepRunner> runner, StepRunner::Create(config));
  std::printf("fl-bench dp: %s, %lld px, batch %lld, %s%s, norms %s, %lld timed steps\n",
              config.model.c_str(), static_cast<long long>(config.size),
              static_cast<long long>(config.batch), runner->cuda() ? "CUDA" : "CPU",
              runner->cuda() && config.tf32 ? " (TF32 matmuls)" : "", NormsName(config.norms),
              static_cast<long long>(config.steps));
  ASSIGN_OR_RETURN(auto plain, TimeSteps(*runner, false, config.steps));
  ASSIGN_OR_RETURN(auto dp, TimeSteps(*runner, true, config.steps));
  std::printf("non-private step: best %.1f ms, median %.1f ms\n", plain.first * 1e3,
              plain.second * 1e3);
  std::printf("DP-SGD step:      best %.1f ms, median %.1f ms\n", dp.first * 1e3, dp.second * 1e3);
  if (!config.profile.empty()) RETURN_IF_ERROR(ProfileSteps(*runner, config.profile));
  double memory_ratio = -1;
  if (growth[0] > 0 && growth[1] >= 0) {
    memory_ratio = static_cast<double>(growth[1]) / static_cast<double>(growth[0]);
    std::printf("peak memory growth over two steps: non-private %.1f MiB, DP %.1f MiB\n",
                growth[0] / double(kMib), growth[1] / double(kMib));
  } else {
    std::printf("peak memory: not measured (-1)\n");
  }
  if (config.model == "latent_unet") {
    const int64_t n = std::min<int64_t>(config.batch, 16), k = 50;
    ASSIGN_OR_RETURN(double seconds, runner->TimeSampling(n, k));
    std::printf("DDIM sampling: %lld latents x %lld steps (guidance 2) in %.2f s: %.2f samples/s\n",
                static_cast<long long>(n), static_cast<long long>(k), seconds, n / seconds);
    PrintKeyValues({{"dp_step_ratio", dp.first / plain.first},
                    {"peak_memory_ratio", memory_ratio},
                    {"samples_per_second_50_steps", n / seconds}});
    return absl::OkStatus();
  }
  PrintKeyValues({{"dp_step_ratio", dp.first / plain.first}, {"peak_memory_ratio", memory_ratio}});
  return absl::OkStatus();
}

}  // namespace

BenchRun SetUpDpBench(CLI::App& app) {
  auto args = std::make_shared<DpBenchArgs>();
  DpBenchConfig& c = args->config;
  app.add_option("--model", c.model,
                 "registry classifier, or latent_unet (the diffusion denoiser)");
  app.add_option("--size", c.size, "image side in pixels")
      ->check(CLI::PositiveNumber)
      ->default_str("128 on CPU, 224 on CUDA; latent_unet: latent side 16 / 32");
  app.add_option("--batch", c.batch, "expected batch size")
      ->check(CLI::PositiveNumber)
      ->default_str("32 on CPU, 64 on CUDA");
  app.add_option("--steps", c.steps, "timed steps")->check(CLI::PositiveNumber);
  app.add_option("--profile", c.profile, "folder for per-op traces of one step each");
  app.add_option("--norms", args->norms,
                 "per-sample gradient norms: auto (the cheaper per "
                 "layer), ghost or materialise")
      ->check(CLI::IsMember({"auto", "ghost", "materialise"}));
  app.add_option("--tf32", args->tf32, "CUDA: matrix products may use TF32 tensor cores")
      ->check(CLI::IsMember({"on", "off"}));
  return [args] { return RunDpBench(*args); };
}

}  // namespace fl::bench
