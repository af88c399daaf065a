// DP-aware layers: drop-in replacements for torch::nn::Conv2d, Conv3d, Linear,
// GroupNorm, LayerNorm, InstanceNorm2d/3d and Embedding whose backward can hand per-sample gradient
// information to a GradSampleTape instead of accumulating the batch gradient.
//
// LibTorch modules have no forward/backward hooks, so each layer's forward runs
// a custom autograd function. With no tape active, forward, backward and the
// gradients written to .grad are those of the plain layer. While a tape is
// active on the thread that runs the forward pass, the backward still returns
// the input gradient, but leaves weight/bias .grad untouched and appends a
// GradSampleRecord to the tape; from the records a DP-SGD engine computes each
// sample's gradient norm and the clipped sum (privacy/dp_sgd.h), all from one
// backward pass ("book-keeping").
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "common/torch_pch.h"

namespace fl {

// How a layer's per-sample gradient norms are obtained.
enum class GradSampleMode {
  kAuto,         // per layer, whichever of the two below costs fewer multiply-adds
  kMaterialise,  // per-sample gradients are formed (and kept for the clipped sum)
  // Norms from activations and output gradients only (Gram matrices: N*T^2 memory per conv
  // layer with T output positions, prohibitive for the early layers of big images).
  kGhost,
};

// What one call of a DP-aware layer contributes, for a batch of N samples
// (dimension 0 of the layer's input). Tensors live on the layer's device.
class GradSampleRecord {
 public:
  virtual ~GradSampleRecord() = default;
  // The layer's parameters that this record covers (weight, then bias if any).
  const std::vector<torch::Tensor>& params() const { return params_; }
  virtual int64_t batch_size() const = 0;
  // [N] float: the squared norm of each sample's gradient over params().
  virtual torch::Tensor SquaredNorms() const = 0;
  // sum_i scale[i] * g_i for each of params() (scale: [N] float).
  virtual std::vector<torch::Tensor> ScaledSum(const torch::Tensor& scale) const = 0;
  // Per-sample gradients, [N, param shape...] for each of params().
  virtual std::vector<torch::Tensor> PerSampleGrads() const = 0;

 protected:
  explicit GradSampleRecord(std::vector<torch::Tensor> params) : params_(std::move(params)) {}

 private:
  std::vector<torch::Tensor> params_;
};

// Where the backward passes of DP-aware layers deliver their records. Shared
// between a tape and the autograd graphs built while it was active (the
// backward may run on an autograd worker thread, e.g. for CUDA).
class GradSampleSink : public torch::CustomClassHolder {
 public:
  explicit GradSampleSink(GradSampleMode mode) : mode_(mode) {}
  GradSampleMode mode() const { return mode_; }
  // False once the tape is gone: layers then fall back to plain gradients.
  bool open() const;
  void Close();
  void Add(std::unique_ptr<GradSampleRecord> record);
  std::vector<std::unique_ptr<GradSampleRecord>> Take();

 private:
  const GradSampleMode mode_;
  mutable std::mutex mu_;
  bool open_ = true;                                        // guarded by mu_
  std::vector<std::unique_ptr<GradSampleRecord>> records_;  // guarded by mu_
};

// RAII: while alive, forward passes of DP-aware layers on this thread record
// per-sample information in their backward. Not copyable; tapes nest (the
// innermost one is active). The backward of a forward run under the tape must
// run before the tape is destroyed; after that the layers compute ordinary
// gradients again.
class GradSampleTape {
 public:
  explicit GradSampleTape(GradSampleMode mode = GradSampleMode::kAuto);
  ~GradSampleTape();
  GradSampleTape(const GradSampleTape&) = delete;
  GradSampleTape& operator=(const GradSampleTape&) = delete;

  // The records of all backward passes so far, in the order delivered; the
  // tape is left empty.
  std::vector<std::unique_ptr<GradSampleRecord>> TakeRecords() { return sink_->Take(); }

  // The sink of the innermost tape active on this thread, or null.
  static c10::intrusive_ptr<GradSampleSink> ActiveSink();

 private:
  c10::intrusive_ptr<GradSampleSink> sink_;
  GradSampleTape* previous_;
};

// The subset of torch::nn::Conv2dOptions that DPConv2d supports: groups 1,
// explicit zero padding.
struct DPConv2dOptions {
  DPConv2dOptions(int64_t in_channels, int64_t out_channels, torch::ExpandingArray<2> kernel_size)
      : in_channels_(in_channels), out_channels_(out_channels), kernel_size_(kernel_size) {}
  TORCH_ARG(int64_t, in_channels);
  TORCH_ARG(int64_t, out_channels);
  TORCH_ARG(torch::ExpandingArray<2>, kernel_size);
  TORCH_ARG(torch::ExpandingArray<2>, stride) = 1;
  TORCH_ARG(torch::ExpandingArray<2>, padding) = 0;
  TORCH_ARG(torch::ExpandingArray<2>, dilation) = 1;
  TORCH_ARG(bool, bias) = true;
};

// Conv2d with torch::nn::Conv2d's parameters ("weight" [out, in, kh, kw],
// "bias" [out]), shapes and initialisation (from the global RNG, as Conv2d).
class DPConv2dImpl : public torch::nn::Cloneable<DPConv2dImpl> {
 public:
  explicit DPConv2dImpl(DPConv2dOptions options);
  void reset() override;
  torch::Tensor forward(const torch::Tensor& input);

  DPConv2dOptions options;
  torch::Tensor weight;
  torch::Tensor bias;  // undefined when options.bias() is false
};
TORCH_MODULE(DPConv2d);

// Linear with torch::nn::Linear's parameters, shapes and initialisation. Input
// [N, ..., in]: every position of the middle dimensions belongs to sample n.
class DPLinearImpl : public torch::nn::Cloneable<DPLinearImpl> {
 public:
  explicit DPLinearImpl(torch::nn::LinearOptions options);
  DPLinearImpl(int64_t in, int64_t out) : DPLinearImpl(torch::nn::LinearOptions(in, out)) {}
  void reset() override;
  torch::Tensor forward(const torch::Tensor& input);

  torch::nn::LinearOptions options;
  torch::Tensor weight;
  torch::Tensor bias;
};
TORCH_MODULE(DPLinear);

// GroupNorm with torch::nn::GroupNorm's parameters ("weight", "bias", [C],
// ones and zeros when affine). Input [N, C, *].
class DPGroupNormImpl : public torch::nn::Cloneable<DPGroupNormImpl> {
 public:
  explicit DPGroupNormImpl(torch::nn::GroupNormOptions options);
  void reset() override;
  torch::Tensor forward(const torch::Tensor& input);

  torch::nn::GroupNormOptions options;
  torch::Tensor weight;
  torch::Tensor bias;
};
TORCH_MODULE(DPGroupNorm);

// The subset of torch::nn::Conv3dOptions that DPConv3d supports: explicit zero padding.
struct DPConv3dOptions {
  DPConv3dOptions(int64_t in_channels, int64_t out_channels, torch::ExpandingArray<3> kernel_size)
      : in_channels_(in_channels), out_channels_(out_channels), kernel_size_(kernel_size) {}
  TORCH_ARG(int64_t, in_channels);
  TORCH_ARG(int64_t, out_channels);
  TORCH_ARG(torch::ExpandingArray<3>, kernel_size);
  TORCH_ARG(torch::ExpandingArray<3>, stride) = 1;
  TORCH_ARG(torch::ExpandingArray<3>, padding) = 0;
  TORCH_ARG(torch::ExpandingArray<3>, dilation) = 1;
  // REQUIRES: divides in_channels and out_channels (else the constructor throws, as Conv3d's).
  TORCH_ARG(int64_t, groups) = 1;
  TORCH_ARG(bool, bias) = true;
};

// Conv3d with torch::nn::Conv3d's parameters ("weight" [out, in/groups, kd, kh, kw], "bias"
// [out]), shapes and initialisation. Input [N, in, D, H, W].
class DPConv3dImpl : public torch::nn::Cloneable<DPConv3dImpl> {
 public:
  explicit DPConv3dImpl(DPConv3dOptions options);
  void reset() override;
  torch::Tensor forward(const torch::Tensor& input);

  DPConv3dOptions options;
  torch::Tensor weight;
  torch::Tensor bias;  // undefined when options.bias() is false
};
TORCH_MODULE(DPConv3d);

// LayerNorm with torch::nn::LayerNorm's parameters ("weight" ones, "bias" zeros, both of shape
// normalized_shape, when elementwise_affine). Input [N, ..., normalized_shape...]: every position
// of the middle dimensions belongs to sample n.
class DPLayerNormImpl : public torch::nn::Cloneable<DPLayerNormImpl> {
 public:
  explicit DPLayerNormImpl(torch::nn::LayerNormOptions options);
  void reset() override;
  torch::Tensor forward(const torch::Tensor& input);

  torch::nn::LayerNormOptions options;
  torch::Tensor weight;
  torch::Tensor bias;
};
TORCH_MODULE(DPLayerNorm);

// InstanceNorm{D}d with torch's parameters ("weight" ones, "bias" zeros, [C], when affine; note
// that torch's default is affine=false). Statistics are those of each sample, as in training mode;
// running statistics are not supported: track_running_stats=true makes the constructor throw
// c10::Error (they would be un-noised aggregates of the private data). Input [N, C, *] with D
// spatial dimensions.
template <size_t D>
class DPInstanceNormImpl : public torch::nn::Cloneable<DPInstanceNormImpl<D>> {
 public:
  explicit DPInstanceNormImpl(torch::nn::InstanceNormOptions options);
  void reset() override;
  torch::Tensor forward(const torch::Tensor& input);

  torch::nn::InstanceNormOptions options;
  torch::Tensor weight;
  torch::Tensor bias;
};
using DPInstanceNorm2dImpl = DPInstanceNormImpl<2>;
using DPInstanceNorm3dImpl = DPInstanceNormImpl<3>;
TORCH_MODULE(DPInstanceNorm2d);
TORCH_MODULE(DPInstanceNorm3d);

// Embedding with torch::nn::Embedding's parameter ("weight" [num_embeddings, embedding_dim],
// N(0, 1) with the padding_idx row zero) and padding_idx semantics (that row gets no gradient).
// max_norm, scale_grad_by_freq (mixes the samples of a batch) and sparse are not supported: the
// constructor throws c10::Error. Input: integer indices [N, ...].
class DPEmbeddingImpl : public torch::nn::Cloneable<DPEmbeddingImpl> {
 public:
  explicit DPEmbeddingImpl(torch::nn::EmbeddingOptions options);
  DPEmbeddingImpl(int64_t num_embeddings, int64_t embedding_dim)
      : DPEmbeddingImpl(torch::nn::EmbeddingOptions(num_embeddings, embedding_dim)) {}
  void reset() override;
  torch::Tensor forward(const torch::Tensor& indices);

  torch::nn::EmbeddingOptions options;
  torch::Tensor weight;
};
TORCH_MODULE(DPEmbedding);

// True for the DP-aware layers above: their direct parameters are covered by
// the records of a GradSampleTape.
bool IsDpAwareModule(const torch::nn::Module& module);

}  // namespace fl
