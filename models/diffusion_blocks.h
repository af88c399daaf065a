// Internal to fl_models: the building blocks shared by the latent diffusion models
// (models/diffusion.h). Not an API.
#pragma once

#include <cstdint>
#include <memory>

#include "common/torch_pch.h"
#include "models/dp_layers.h"

namespace fl {
namespace models_internal {

// The largest group count of at most `max_groups` that divides `channels`.
int64_t GroupsFor(int64_t channels, int64_t max_groups);

// Nearest-neighbour upsampling by 2 of [N, C, H, W].
torch::Tensor UpsampleNearest2(const torch::Tensor& x);

// GroupNorm-SiLU-conv3x3, (+ SiLU-Linear of the embedding, broadcast over positions),
// GroupNorm-SiLU-conv3x3, plus the input (through a 1x1 conv when in != out). Names: norm1,
// conv1, emb_proj (when emb_width > 0), norm2, conv2, skip (when in != out).
class LatentResBlockImpl : public torch::nn::Module {
 public:
  LatentResBlockImpl(int64_t in, int64_t out, int64_t emb_width, int64_t max_groups);
  // emb: [N, emb_width]; REQUIRES: defined iff emb_width > 0.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& emb = {});

 private:
  DPGroupNorm norm1_{nullptr}, norm2_{nullptr};
  DPConv2d conv1_{nullptr}, conv2_{nullptr};
  DPLinear emb_proj_{nullptr};
  DPConv2d skip_{nullptr};
};

// One resolution level: a conv3x3 (`stride` 2 going down; stride 1 after an upsampling going
// up) from `in` to `out` channels, then a residual block from `block_in` to `out` channels
// (block_in > out when a skip is concatenated). Names: conv, block.
class LevelImpl : public torch::nn::Module {
 public:
  LevelImpl(int64_t in, int64_t out, int64_t stride, int64_t block_in, int64_t emb_width,
            int64_t max_groups);

  DPConv2d conv{nullptr};
  std::shared_ptr<LatentResBlockImpl> block;
};

}  // namespace models_internal
}  // namespace fl
