// DP-aware Conv3d, LayerNorm, InstanceNorm2d/3d and Embedding (models/dp_layers.h).
#include <utility>

#include "common/torch_pch.h"
#include "models/dp_layers.h"
#include "models/dp_layers_internal.h"

namespace fl {
namespace {

using torch::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using namespace dp_internal;  // NOLINT(build/namespaces): the layers' shared helpers

// ------------------------------------------------------------------------------------------------
// LayerNorm

class DPLayerNormFunction : public torch::autograd::Function<DPLayerNormFunction> {
 public:
  static Tensor forward(AutogradContext* ctx, const Tensor& input,
                        const Tensor& weight_or_placeholder, const Tensor& bias_or_placeholder,
                        std::vector<int64_t> normalized_shape, double eps) {
    const Tensor weight = FromPlaceholder(weight_or_placeholder);
    const Tensor bias = FromPlaceholder(bias_or_placeholder);
    const Tensor x = input.contiguous();
    ctx->saved_data["shape"] = normalized_shape;
    RememberSink(ctx);
    if (x.numel() == 0) {
      ctx->save_for_backward({x, weight, bias, Tensor(), Tensor()});
      return torch::empty_like(x);
    }
    auto [y, mean, rstd] = at::native_layer_norm(x, normalized_shape, weight, bias, eps);
    ctx->save_for_backward({x, weight, bias, mean, rstd});
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const variable_list saved = ctx->get_saved_variables();
    const Tensor &x = saved[0], &weight = saved[1], &bias = saved[2];
    const Tensor &mean = saved[3], &rstd = saved[4];
    const Tensor dy = grad_outputs[0].contiguous();
    const std::vector<int64_t> shape = ctx->saved_data["shape"].toIntVector();
    return NormBackward(
        ctx, x, weight, bias,
        [&](std::array<bool, 3> mask) {
          return at::native_layer_norm_backward(dy, x, shape, mean, rstd, weight, bias, mask);
        },
        [&] { return MakeRecord(weight, bias, x, dy, mean, rstd); });
  }

 private:
  // LayerNorm's per-sample gradients are sums over positions of normalized_shape-sized terms, no
  // more than the activations: always materialised.
  static std::unique_ptr<GradSampleRecord> MakeRecord(const Tensor& weight, const Tensor& bias,
                                                      const Tensor& x, const Tensor& dy,
                                                      const Tensor& mean, const Tensor& rstd) {
    const int64_t n = x.size(0);
    if (x.numel() == 0) return ZeroRecord({weight, bias}, n);
    // The statistics have one entry per normalised row: [N, ..., 1, ..., 1].
    std::vector<int64_t> stat_shape = x.sizes().vec();
    for (int64_t i = x.dim() - weight.dim(); i < x.dim(); ++i) stat_shape[i] = 1;
    Tensor x_hat = (x - mean.view(stat_shape).to(x.dtype())) * rstd.view(stat_shape).to(x.dtype());
    const int64_t features = weight.numel();
    Tensor gw = (x_hat * dy).reshape({n, -1, features}).sum(1).view(WithBatch(n, weight));
    Tensor gb = dy.reshape({n, -1, features}).sum(1).view(WithBatch(n, bias));
    return std::make_unique<MaterialisedRecord>(std::vector<Tensor>{weight, bias},
                                                std::vector<Tensor>{gw, gb});
  }
};

// ------------------------------------------------------------------------------------------------
// Embedding

// Embedding, ghost: keeps the indices [N, T] (int64) and output gradients [N, T, dim] (zero where
// the index is padding_idx). Sample n's gradient is G_n = sum_t onehot(idx_t) dy_t^T, so
// ||G_n||^2 = sum_{t,s} [idx_t == idx_s] <dy_t, dy_s>.
class EmbeddingGhostRecord : public GradSampleRecord {
 public:
  EmbeddingGhostRecord(const Tensor& weight, Tensor indices, Tensor dy)
      : GradSampleRecord({weight}), indices_(std::move(indices)), dy_(std::move(dy)) {}
  int64_t batch_size() const override { return indices_.size(0); }
  Tensor SquaredNorms() const override {
    Tensor same = (indices_.unsqueeze(2) == indices_.unsqueeze(1)).to(dy_.dtype());
    return (same * torch::bmm(dy_, dy_.transpose(1, 2))).sum({1, 2});
  }
  std::vector<Tensor> ScaledSum(const Tensor& scale) const override {
    Tensor scaled = dy_ * scale.to(dy_.dtype()).view({-1, 1, 1});
    const Tensor& w = params()[0];
    return {torch::zeros_like(w).index_add_(0, indices_.flatten(), scaled.flatten(0, 1))};
  }
  std::vector<Tensor> PerSampleGrads() const override {
    const Tensor& w = params()[0];
    const int64_t n = batch_size(), num = w.size(0);
    Tensor rows = indices_ + torch::arange(n, indices_.options()).unsqueeze(1) * num;
    Tensor grads = torch::zeros({n * num, w.size(1)}, w.options());
    grads.index_add_(0, rows.flatten(), dy_.flatten(0, 1));
    return {grads.view(WithBatch(n, w))};
  }

 private:
  Tensor indices_, dy_;
};

class DPEmbeddingFunction : public torch::autograd::Function<DPEmbeddingFunction> {
 public:
  static Tensor forward(AutogradContext* ctx, const Tensor& indices, const Tensor& weight,
                        int64_t padding_idx) {
    ctx->save_for_backward({indices, weight});
    ctx->saved_data["padding_idx"] = padding_idx;
    RememberSink(ctx);
    return at::embedding(weight, indices, padding_idx, /*scale_grad_by_freq=*/false,
                         /*sparse=*/false);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const variable_list saved = ctx->get_saved_variables();
    const Tensor &indices = saved[0], &weight = saved[1];
    const Tensor dy = grad_outputs[0];
    const int64_t padding_idx = ctx->saved_data["padding_idx"].toInt();
    auto holder = SinkHolder(ctx);
    GradSampleSink* sink = RecordingSink(ctx);
    Tensor gw;
    if (sink != nullptr) {
      sink->Add(MakeRecord(sink->mode(), weight, indices, dy, padding_idx));
    } else if (ctx->needs_input_grad(1)) {
      gw = at::embedding_backward(dy, indices, weight.size(0), padding_idx,
                                  /*scale_grad_by_freq=*/false, /*sparse=*/false);
    }
    return {Tensor(), gw, Tensor()};
  }

 private:
  static std::unique_ptr<GradSampleRecord> MakeRecord(GradSampleMode mode, const Tensor& weight,
                                                      const Tensor& indices, const Tensor& dy,
                                                      int64_t padding_idx) {
    const int64_t n = indices.size(0), dim = weight.size(1);
    if (n == 0) return ZeroRecord({weight}, 0);
    Tensor idx = indices.reshape({n, -1}).to(torch::kLong);
    Tensor dy3 = dy.reshape({n, -1, dim});
    if (padding_idx >= 0) dy3 = dy3.masked_fill((idx == padding_idx).unsqueeze(2), 0);
    EmbeddingGhostRecord ghost(weight, idx, dy3);
    // Materialised: a [num, dim] gradient per sample; ghost: T x T Gram matrices of dim-vectors.
    const double positions = static_cast<double>(idx.size(1));
    const bool materialise =
        mode == GradSampleMode::kMaterialise ||
        (mode == GradSampleMode::kAuto &&
         static_cast<double>(weight.size(0)) * dim <= positions * positions * (dim + 1));
    if (!materialise) return std::make_unique<EmbeddingGhostRecord>(std::move(ghost));
    return std::make_unique<MaterialisedRecord>(ghost.params(), ghost.PerSampleGrads());
  }
};

// Registers `plain`'s parameter `name` on `module`, or an undefined placeholder when `take` is
// false (as torch does for a disabled bias or affine transform).
Tensor Adopt(torch::nn::Module& module, const std::string& name, const Tensor& plain, bool take) {
  return take ? module.register_parameter(name, plain)
              : module.register_parameter(name, Tensor(), /*requires_grad=*/false);
}

template <size_t D>
struct PlainInstanceNorm;
template <>
struct PlainInstanceNorm<2> {
  using type = torch::nn::InstanceNorm2d;
};
template <>
struct PlainInstanceNorm<3> {
  using type = torch::nn::InstanceNorm3d;
};

}  // namespace

// ------------------------------------------------------------------------------------------------
// Modules: parameters are created by the plain torch module so that names, shapes and
// initialisation are exactly PyTorch's.

DPConv3dImpl::DPConv3dImpl(DPConv3dOptions options_) : options(std::move(options_)) { reset(); }

void DPConv3dImpl::reset() {
  torch::nn::Conv3d plain(
      torch::nn::Conv3dOptions(options.in_channels(), options.out_channels(), options.kernel_size())
          .stride(options.stride())
          .padding(options.padding())
          .dilation(options.dilation())
          .groups(options.groups())
          .bias(options.bias()));
  weight = register_parameter("weight", plain->weight);
  bias = Adopt(*this, "bias", plain->bias, options.bias());
}

Tensor DPConv3dImpl::forward(const Tensor& input) {
  return DPConvolution(input, weight, bias, ToVector(options.stride()), ToVector(options.padding()),
                       ToVector(options.dilation()), options.groups());
}

DPLayerNormImpl::DPLayerNormImpl(torch::nn::LayerNormOptions options_)
    : options(std::move(options_)) {
  reset();
}

void DPLayerNormImpl::reset() {
  torch::nn::LayerNorm plain(options);
  weight = Adopt(*this, "weight", plain->weight, options.elementwise_affine());
  bias = Adopt(*this, "bias", plain->bias, options.elementwise_affine());
}

Tensor DPLayerNormImpl::forward(const Tensor& input) {
  const std::vector<int64_t>& shape = options.normalized_shape();
  TORCH_CHECK(input.dim() > static_cast<int64_t>(shape.size()),
              "DPLayerNorm: input needs a batch dimension before the normalised ", shape.size(),
              " dims, got ", input.dim(), " dims");
  return DPLayerNormFunction::apply(input, OrPlaceholder(weight, input), OrPlaceholder(bias, input),
                                    shape, options.eps());
}

template <size_t D>
DPInstanceNormImpl<D>::DPInstanceNormImpl(torch::nn::InstanceNormOptions options_)
    : options(std::move(options_)) {
  reset();
}

template <size_t D>
void DPInstanceNormImpl<D>::reset() {
  TORCH_CHECK(!options.track_running_stats(), "DPInstanceNorm", D,
              "d: track_running_stats=true is not supported under DP-SGD: running statistics "
              "are un-noised aggregates of the private data; use track_running_stats=false");
  typename PlainInstanceNorm<D>::type plain(options);
  weight = Adopt(*this, "weight", plain->weight, options.affine());
  bias = Adopt(*this, "bias", plain->bias, options.affine());
}

// Instance normalisation is group normalisation with one channel per group.
template <size_t D>
Tensor DPInstanceNormImpl<D>::forward(const Tensor& input) {
  TORCH_CHECK(input.dim() == static_cast<int64_t>(D) + 2, "DPInstanceNorm", D,
              "d: expected a [N, C", D == 2 ? ", H, W" : ", D, H, W", "] input, got ", input.dim(),
              " dims");
  return DPGroupNormalisation(input, weight, bias, input.size(1), options.eps());
}

template class DPInstanceNormImpl<2>;
template class DPInstanceNormImpl<3>;

DPEmbeddingImpl::DPEmbeddingImpl(torch::nn::EmbeddingOptions options_)
    : options(std::move(options_)) {
  reset();
}

void DPEmbeddingImpl::reset() {
  TORCH_CHECK(!options.max_norm().has_value(),
              "DPEmbedding: max_norm is not supported (it rewrites the weights in the forward)");
  TORCH_CHECK(!options.scale_grad_by_freq(),
              "DPEmbedding: scale_grad_by_freq is not supported (it mixes the samples of a batch)");
  TORCH_CHECK(!options.sparse(), "DPEmbedding: sparse gradients are not supported");
  torch::nn::Embedding plain(options);
  options = plain->options;  // a negative padding_idx is now counted from the start
  weight = register_parameter("weight", plain->weight);
}

Tensor DPEmbeddingImpl::forward(const Tensor& indices) {
  TORCH_CHECK(indices.dim() >= 1, "DPEmbedding: indices need a batch dimension");
  return DPEmbeddingFunction::apply(indices, weight, options.padding_idx().value_or(-1));
}

}  // namespace fl
