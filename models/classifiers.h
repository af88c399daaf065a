// Internal to fl_models: the classifier architectures behind the registry
// (models/model.h). Parameter names follow the PyTorch modules given in
// tests/interop/check_model.py.
#pragma once

#include <cstdint>
#include <memory>

#include "models/model.h"

namespace fl {
namespace models_internal {

// 4 x [conv3x3 (no bias) - GroupNorm(8) - ReLU - maxpool2], channels
// 16-32-64-64, global average pool, `fc`. Names: features.{0,4,8,12}.weight
// (convs), features.{1,5,9,13}.{weight,bias} (GroupNorm), fc.{weight,bias}.
// REQUIRES: image_size >= 16.
std::shared_ptr<ModelImpl> MakeSmallCnn(const ModelSpec& spec);
// SmallCnn's design at channels 8-16-32-32 (about 15k parameters): the fewer the parameters,
// the less DP-SGD's noise (spread over every one of them) costs; for the DP study.
std::shared_ptr<ModelImpl> MakeTinyCnn(const ModelSpec& spec);
// SmallCnn's design with five wider stages: about 1M parameters, for load tests and 128 px.
std::shared_ptr<ModelImpl> MakeMediumCnn(const ModelSpec& spec);

// ResNet-9 of the DP chest-radiograph work: conv3x3-GroupNorm(32)-Mish blocks,
//   prep (64), layer1 (128, maxpool) + res1 (two 128 blocks, residual),
//   layer2 (256, maxpool), layer3 (512, maxpool) + res2 (two 512 blocks,
//   residual), concat(adaptive max pool, adaptive avg pool) -> fc Linear(1024,
//   num_outputs).
// Names: prep.0.weight, prep.1.{weight,bias}, layer1.0/1, res1.{0,1}.{0,1},
// layer2.0/1, layer3.0/1, res2.{0,1}.{0,1}, fc.{weight,bias}. REQUIRES:
// image_size >= 8.
std::shared_ptr<ModelImpl> MakeResNet9(const ModelSpec& spec);

// torchvision's ResNet-18 (depth 18) or ResNet-50 (depth 50) with GroupNorm(32,
// c) in place of every BatchNorm and conv1 taking spec.input.channels. REQUIRES:
// depth is 18 or 50, image_size >= 32.
std::shared_ptr<ModelImpl> MakeResNet(const ModelSpec& spec, int depth);

// A convolutional autoencoder (the autoencoder workload): per width w of spec.widths an encoder
// stage conv3x3 stride 2 - GroupNorm - SiLU, then conv1x1 to spec.latent_channels; the decoder
// mirrors it: conv3x3 to the last width, then per stage nearest x2 upsampling - conv3x3 -
// GroupNorm - SiLU, and conv3x3 to the input channels with a sigmoid (pixels in [0, 1]).
// Names: encoder.{0,3,6,..}.{weight,bias} (convs), encoder.{1,4,..}.{weight,bias} (GroupNorm),
// decoder.* likewise (the upsampling layers hold no tensors).
std::shared_ptr<ModelImpl> MakeAutoencoder(const ModelSpec& spec);
// OK when spec.widths and latent_channels are usable and the input side divides by
// 2^widths.size().
absl::Status CheckAutoencoderSpec(const ModelSpec& spec);
// OK when the spec can build a KlVaeImpl / LatentUNetImpl (models/diffusion.h): 1 to 6
// positive widths, latent_channels >= 1 (the VAE), an embedding width >= 16 divisible by 8 and
// findings >= 0 (the UNet), and the input side divisible by 2^(widths - 1).
absl::Status CheckKlVaeSpec(const ModelSpec& spec);
absl::Status CheckLatentUNetSpec(const ModelSpec& spec);

// Every model is built from the DP-aware layers of models/dp_layers.h (same
// parameter names and shapes as torch::nn::Conv2d / Linear / GroupNorm).

// Re-initialises every DPConv2d (Kaiming normal, fan_out, ReLU gain; bias as
// PyTorch's default), DPLinear (PyTorch's default uniform) and DPGroupNorm (weight
// 1, bias 0) of `model` from a private generator seeded with `seed`: the result
// depends on `seed` only, never on the global RNG.
void InitWeights(torch::nn::Module& model, uint64_t seed);

}  // namespace models_internal
}  // namespace fl
