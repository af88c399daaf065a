// Shared by the implementations of the DP-aware layers (dp_layers.cc, dp_layers_extra.cc). Not an
// API: include models/dp_layers.h instead.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <tuple>
#include <vector>

#include "common/torch_pch.h"
#include "models/dp_layers.h"

namespace fl {
namespace dp_internal {

// Whether materialising per-sample gradients costs fewer multiply-adds than the Gram-matrix norm
// for `mode` (T `positions` per sample, `in` inputs and `out` outputs per position).
bool UseMaterialised(GradSampleMode mode, int64_t positions, int64_t in, int64_t out);

// The shape [n, param shape...].
std::vector<int64_t> WithBatch(int64_t n, const torch::Tensor& param);

// The defined tensors among `tensors`, in order.
std::vector<torch::Tensor> DefinedOnly(std::initializer_list<torch::Tensor> tensors);

// Per-sample gradients held explicitly: [N, shape...] per parameter.
class MaterialisedRecord : public GradSampleRecord {
 public:
  MaterialisedRecord(std::vector<torch::Tensor> params, std::vector<torch::Tensor> grads)
      : GradSampleRecord(std::move(params)), grads_(std::move(grads)) {}
  int64_t batch_size() const override { return grads_.at(0).size(0); }
  torch::Tensor SquaredNorms() const override;
  std::vector<torch::Tensor> ScaledSum(const torch::Tensor& scale) const override;
  std::vector<torch::Tensor> PerSampleGrads() const override { return grads_; }

 private:
  std::vector<torch::Tensor> grads_;
};

// Zero per-sample gradients of `params` for a batch of n samples (n = 0: an empty batch).
std::unique_ptr<GradSampleRecord> ZeroRecord(std::vector<torch::Tensor> params, int64_t n);

// LibTorch 1.13's custom functions take no undefined tensors: a missing parameter crosses apply()
// as an empty placeholder.
torch::Tensor OrPlaceholder(const torch::Tensor& t, const torch::Tensor& like);
torch::Tensor FromPlaceholder(const torch::Tensor& t);

// Remembers the active sink (if any) in the graph node, for its backward.
void RememberSink(torch::autograd::AutogradContext* ctx);
// The sink to record into, or null when gradients are to be computed plainly.
GradSampleSink* RecordingSink(torch::autograd::AutogradContext* ctx);
// Keeps the sink alive during the backward that uses it.
c10::intrusive_ptr<torch::CustomClassHolder> SinkHolder(torch::autograd::AutogradContext* ctx);

// The backward of a normalisation layer (GroupNorm, LayerNorm) with input x and optional affine
// weight and bias, whose apply() took two more, non-tensor arguments: the plain gradients that
// autograd asks for from `native(mask)` (those of the parameters only when no sink records),
// and with a sink, the per-sample record from `record()`.
using NormNativeBackward = std::function<std::tuple<torch::Tensor, torch::Tensor, torch::Tensor>(
    std::array<bool, 3> mask)>;
torch::autograd::variable_list NormBackward(
    torch::autograd::AutogradContext* ctx, const torch::Tensor& x, const torch::Tensor& weight,
    const torch::Tensor& bias, const NormNativeBackward& native,
    const std::function<std::unique_ptr<GradSampleRecord>()>& record);

// N-d convolution (N = stride.size(), 2 or 3) through the DP-aware autograd function.
torch::Tensor DPConvolution(const torch::Tensor& input, const torch::Tensor& weight,
                            const torch::Tensor& bias, std::vector<int64_t> stride,
                            std::vector<int64_t> padding, std::vector<int64_t> dilation,
                            int64_t groups);

// Group normalisation through the DP-aware autograd function (weight/bias may be undefined).
torch::Tensor DPGroupNormalisation(const torch::Tensor& input, const torch::Tensor& weight,
                                   const torch::Tensor& bias, int64_t groups, double eps);

template <size_t D>
std::vector<int64_t> ToVector(const torch::ExpandingArray<D>& a) {
  return std::vector<int64_t>(a->begin(), a->end());
}

}  // namespace dp_internal
}  // namespace fl
