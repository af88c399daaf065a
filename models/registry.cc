#include <cstring>
#include <functional>
#include <map>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status.h"
#include "common/torch_pch.h"
#include "models/classifiers.h"
#include "models/diffusion.h"
#include "models/model.h"

namespace fl {
namespace {

using models_internal::CheckAutoencoderSpec;
using models_internal::CheckKlVaeSpec;
using models_internal::CheckLatentUNetSpec;
using models_internal::MakeAutoencoder;
using models_internal::MakeMediumCnn;
using models_internal::MakeResNet;
using models_internal::MakeResNet9;
using models_internal::MakeSmallCnn;
using models_internal::MakeTinyCnn;

struct RegistryEntry {
  const char* name;
  int min_image_size;  // smallest input side the architecture's pooling allows
  std::function<std::shared_ptr<ModelImpl>(const ModelSpec&)> make;
  // The checks of a model that is not a classifier (none for classifiers: num_outputs >= 1).
  absl::Status (*check)(const ModelSpec&) = nullptr;
};

const std::vector<RegistryEntry>& Registry() {
  static const auto* registry = new std::vector<RegistryEntry>{
      {"tinycnn", 16, MakeTinyCnn},
      {"smallcnn", 16, MakeSmallCnn},
      {"mediumcnn", 32, MakeMediumCnn},
      {"resnet9", 8, MakeResNet9},
      {"resnet18", 32, [](const ModelSpec& s) { return MakeResNet(s, 18); }},
      {"resnet50", 32, [](const ModelSpec& s) { return MakeResNet(s, 50); }},
      {"autoencoder", 8, MakeAutoencoder, CheckAutoencoderSpec},
      {"kl_vae", 4, [](const ModelSpec& s) { return std::make_shared<KlVaeImpl>(s); },
       CheckKlVaeSpec},
      {"latent_unet", 1, [](const ModelSpec& s) { return std::make_shared<LatentUNetImpl>(s); },
       CheckLatentUNetSpec},
  };
  return *registry;
}

absl::Status ValidateSpec(const ModelSpec& spec, const RegistryEntry& entry) {
  if (spec.input.channels < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("model ", spec.name, ": in_channels must be >= 1, got ", spec.input.channels));
  }
  const int side = spec.input.square_side();
  if (side == 0) {
    return absl::InvalidArgumentError(absl::StrCat("model ", spec.name,
                                                   ": takes a square 2D image, not an input of ",
                                                   spec.input.rank(), " spatial sides"));
  }
  if (side < entry.min_image_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        "model ", spec.name, ": image_size must be >= ", entry.min_image_size, ", got ", side));
  }
  if (entry.check != nullptr) return entry.check(spec);
  if (spec.num_outputs < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("model ", spec.name, ": num_outputs must be >= 1, got ", spec.num_outputs));
  }
  return absl::OkStatus();
}

std::string ShapeString(c10::IntArrayRef shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ","), "]");
}

// The model's parameters then buffers by name, as ExtractWeights orders them.
std::vector<std::pair<std::string, torch::Tensor>> NamedTensors(torch::nn::Module& model) {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (const auto& item : model.named_parameters(/*recurse=*/true)) {
    out.emplace_back(item.key(), item.value());
  }
  for (const auto& item : model.named_buffers(/*recurse=*/true)) {
    out.emplace_back(item.key(), item.value());
  }
  return out;
}

// Checks every name and shape of `weights` against the model before anything is
// written.
absl::Status CheckCompatible(const std::vector<std::pair<std::string, torch::Tensor>>& targets,
                             const std::map<std::string, const NamedTensor*>& by_name) {
  for (const auto& [name, tensor] : targets) {
    auto it = by_name.find(name);
    if (it == by_name.end()) {
      return absl::InvalidArgumentError(absl::StrCat("weights lack tensor ", name));
    }
    const NamedTensor& w = *it->second;
    if (!tensor.sizes().equals(w.shape)) {
      return absl::InvalidArgumentError(absl::StrCat("tensor ", name, ": model shape ",
                                                     ShapeString(tensor.sizes()),
                                                     ", weights shape ", ShapeString(w.shape)));
    }
    if (static_cast<int64_t>(w.data.size()) != w.numel()) {
      return absl::InvalidArgumentError(absl::StrCat("tensor ", name, ": ", w.data.size(),
                                                     " values for shape ", ShapeString(w.shape)));
    }
  }
  return absl::OkStatus();
}

}  // namespace

std::vector<std::string> ModelNames() {
  std::vector<std::string> names;
  for (const RegistryEntry& entry : Registry()) names.emplace_back(entry.name);
  return names;
}

absl::StatusOr<std::shared_ptr<ModelImpl>> CreateModel(const ModelSpec& spec, uint64_t seed) {
  const RegistryEntry* entry = nullptr;
  for (const RegistryEntry& e : Registry()) {
    if (spec.name == e.name) entry = &e;
  }
  if (entry == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(
        "unknown model \"", spec.name, "\"; known: ", absl::StrJoin(ModelNames(), ", ")));
  }
  RETURN_IF_ERROR(ValidateSpec(spec, *entry));
  try {
    std::shared_ptr<ModelImpl> model = entry->make(spec);
    models_internal::InitWeights(*model, seed);
    return model;
  } catch (const c10::Error& e) {
    return absl::InternalError(
        absl::StrCat("creating model ", spec.name, ": ", e.what_without_backtrace()));
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("creating model ", spec.name, ": ", e.what()));
  }
}

TensorList ExtractWeights(torch::nn::Module& model) {
  torch::NoGradGuard no_grad;
  TensorList out;
  for (const auto& [name, tensor] : NamedTensors(model)) {
    torch::Tensor cpu = tensor.detach().to(torch::kCPU, torch::kFloat32).contiguous();
    NamedTensor t;
    t.name = name;
    t.shape.assign(cpu.sizes().begin(), cpu.sizes().end());
    t.data.resize(static_cast<size_t>(cpu.numel()));
    if (!t.data.empty()) std::memcpy(t.data.data(), cpu.data_ptr<float>(), t.byte_size());
    out.push_back(std::move(t));
  }
  return out;
}

absl::Status LoadWeights(torch::nn::Module& model, const TensorList& weights) {
  std::map<std::string, const NamedTensor*> by_name;
  for (const NamedTensor& w : weights) {
    if (!by_name.emplace(w.name, &w).second) {
      return absl::InvalidArgumentError(absl::StrCat("weights hold tensor ", w.name, " twice"));
    }
  }
  try {
    std::vector<std::pair<std::string, torch::Tensor>> targets = NamedTensors(model);
    RETURN_IF_ERROR(CheckCompatible(targets, by_name));
    if (targets.size() != by_name.size()) {
      std::set<std::string> known;
      for (const auto& target : targets) known.insert(target.first);
      for (const NamedTensor& w : weights) {
        if (!known.count(w.name)) {
          return absl::InvalidArgumentError(absl::StrCat("model has no tensor ", w.name));
        }
      }
    }
    torch::NoGradGuard no_grad;
    for (auto& [name, tensor] : targets) {
      const NamedTensor& w = *by_name.at(name);
      torch::Tensor src = torch::from_blob(const_cast<float*>(w.data.data()), w.shape,
                                           torch::TensorOptions().dtype(torch::kFloat32));
      tensor.copy_(src);
    }
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("loading weights: ", e.what_without_backtrace()));
  }
  return absl::OkStatus();
}

}  // namespace fl
