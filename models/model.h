// Model registry: the architectures jobs train, by name (ModelSpec.name): classifiers for
// radiographs with one output per label of the job's label space (tinycnn, smallcnn, mediumcnn,
// resnet9, resnet18, resnet50), the convolutional autoencoder (autoencoder) and latent diffusion's
// KL-VAE and denoiser UNet (kl_vae, latent_unet: models/diffusion.h). Parameter names
// match the equivalent PyTorch module (torchvision's ResNet with GroupNorm for the ResNet family),
// so exported safetensors load in PyTorch directly.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/tensor.h"
#include "common/torch_pch.h"
#include "models/spec.h"

namespace fl {

// A model of the registry. Classifiers map [N, C, H, W] float images to [N, num_outputs] logits;
// the autoencoder maps them to their reconstruction, [N, C, H, W] in [0, 1]; kl_vae to its
// deterministic reconstruction; latent_unet's forward throws (it takes t and a condition too:
// LatentUNetImpl::Denoise).
class ModelImpl : public torch::nn::Module {
 public:
  virtual torch::Tensor forward(torch::Tensor x) = 0;
  // Prefix of the parameters of the label head (one output row per label), e.g. "fc."; empty
  // when the model has no label head.
  virtual std::string head_prefix() const { return ""; }
};

// Creates a freshly initialised model, deterministically from `seed`.
absl::StatusOr<std::shared_ptr<ModelImpl>> CreateModel(const ModelSpec& spec, uint64_t seed);

// Names the registry knows, for error messages and `flctl` help.
std::vector<std::string> ModelNames();

// All parameters then all buffers, with their PyTorch names, copied to CPU float32.
TensorList ExtractWeights(torch::nn::Module& model);

// Copies `weights` into the model's parameters/buffers by name; every name and shape must match.
absl::Status LoadWeights(torch::nn::Module& model, const TensorList& weights);

}  // namespace fl
