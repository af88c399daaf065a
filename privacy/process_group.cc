#include "privacy/process_group.h"

#include <chrono>
#include <exception>
#include <utility>
#include <vector>

#define USE_C10D_GLOO 1  // Debian's LibTorch is built with Gloo (libgloo.so.0)
#include <torch/csrc/distributed/c10d/FileStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>

#include "absl/strings/str_cat.h"

namespace fl {
namespace {

using torch::Tensor;

// c10d throws; its messages say what timed out or broke.
absl::Status GroupError(const std::string& what, const std::exception& e) {
  const std::string message = e.what();
  const std::string text = absl::StrCat(what, ": ", message.substr(0, message.find('\n')));
  if (message.find("imeout") != std::string::npos ||
      message.find("imed out") != std::string::npos) {
    return absl::DeadlineExceededError(text);
  }
  return absl::UnavailableError(text);
}

class GlooReducer : public GradientReducer {
 public:
  GlooReducer(c10::intrusive_ptr<c10d::ProcessGroupGloo> group, int rank, int world_size)
      : group_(std::move(group)), rank_(rank), world_size_(world_size) {}

  int rank() const override { return rank_; }
  int world_size() const override { return world_size_; }

  // One all-reduce over the tensors laid end to end (c10d's allreduce of a list means one
  // tensor on several devices, not several tensors).
  absl::Status SumInPlace(std::vector<Tensor>& tensors) override {
    if (tensors.empty()) return absl::OkStatus();
    try {
      torch::NoGradGuard no_grad;
      std::vector<Tensor> flat;
      flat.reserve(tensors.size());
      for (const Tensor& t : tensors) flat.push_back(t.detach().reshape({-1}));
      std::vector<Tensor> buffer = {torch::cat(flat)};
      group_->allreduce(buffer)->wait();
      int64_t at = 0;
      for (Tensor& t : tensors) {
        t = buffer[0].narrow(0, at, t.numel()).view(t.sizes()).clone();
        at += t.numel();
      }
      return absl::OkStatus();
    } catch (const std::exception& e) {
      return GroupError(absl::StrCat("summing the gradients over ", world_size_,
                                     " processes (this is rank ", rank_, ")"),
                        e);
    }
  }

 private:
  c10::intrusive_ptr<c10d::ProcessGroupGloo> group_;
  const int rank_;
  const int world_size_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<GradientReducer>> JoinGlooGroup(const ProcessGroupOptions& options) {
  if (options.store_path.empty()) {
    return absl::InvalidArgumentError("process group: no rendezvous file");
  }
  if (options.world_size < 1 || options.rank < 0 || options.rank >= options.world_size) {
    return absl::InvalidArgumentError(absl::StrCat("process group: rank ", options.rank,
                                                   " is outside [0, ", options.world_size, ")"));
  }
  const auto timeout = std::chrono::milliseconds(absl::ToInt64Milliseconds(options.timeout));
  try {
    auto store = c10::make_intrusive<c10d::FileStore>(options.store_path, options.world_size);
    store->setTimeout(timeout);
    auto group_options = c10d::ProcessGroupGloo::Options::create(timeout);
    group_options->devices.push_back(
        c10d::ProcessGroupGloo::createDeviceForHostname(options.hostname));
    group_options->threads = 1;
    auto group = c10::make_intrusive<c10d::ProcessGroupGloo>(store, options.rank,
                                                             options.world_size, group_options);
    return std::make_unique<GlooReducer>(std::move(group), options.rank, options.world_size);
  } catch (const std::exception& e) {
    return GroupError(absl::StrCat("joining the process group of ", options.world_size, " through ",
                                   options.store_path, " as rank ", options.rank),
                      e);
  }
}

}  // namespace fl
