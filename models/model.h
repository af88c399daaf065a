// Model registry: classifiers for radiographs with one output per label of the job's label space.
// Parameter names match the equivalent PyTorch module (torchvision's ResNet with GroupNorm for the
// ResNet family), so exported safetensors load in PyTorch directly.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/tensor.h"
#include "common/torch_pch.h"

namespace fl {

struct ModelSpec {
  std::string name;        // "smallcnn", "resnet9", "resnet18", "resnet50"
  int in_channels = 1;
  int image_size = 224;
  int num_outputs = 1;     // size of the job's label space
};

// A classifier: forward maps [N, C, H, W] float images to [N, num_outputs] logits.
class ClassifierImpl : public torch::nn::Module {
 public:
  virtual torch::Tensor forward(torch::Tensor x) = 0;
  // Prefix of the parameters of the label head (one output row per label), e.g. "fc.".
  virtual std::string head_prefix() const = 0;
};

// Creates a freshly initialised model, deterministically from `seed`.
absl::StatusOr<std::shared_ptr<ClassifierImpl>> CreateModel(const ModelSpec& spec, uint64_t seed);

// Names the registry knows, for error messages and `flctl` help.
std::vector<std::string> ModelNames();

// All parameters then all buffers, with their PyTorch names, copied to CPU float32.
TensorList ExtractWeights(torch::nn::Module& model);

// Copies `weights` into the model's parameters/buffers by name; every name and shape must match.
absl::Status LoadWeights(torch::nn::Module& model, const TensorList& weights);

}  // namespace fl
