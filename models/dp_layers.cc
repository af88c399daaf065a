#include "models/dp_layers.h"

#include <utility>

#include "common/torch_pch.h"
#include "models/dp_layers_internal.h"
#include "models/gram.h"

namespace fl {
namespace dp_internal {

using torch::Tensor;
using torch::autograd::AutogradContext;

namespace {

constexpr char kSinkKey[] = "dp_sink";

// Whether materialising per-sample gradients costs fewer multiply-adds than the
// Gram-matrix norm (T positions, K inputs, `out` outputs per sample).
bool MaterialiseIsCheaper(int64_t positions, int64_t in, int64_t out) {
  return static_cast<double>(out) * in <= static_cast<double>(positions) * (in + out);
}

}  // namespace

bool UseMaterialised(GradSampleMode mode, int64_t positions, int64_t in, int64_t out) {
  if (mode == GradSampleMode::kMaterialise) return true;
  if (mode == GradSampleMode::kGhost) return false;
  return MaterialiseIsCheaper(positions, in, out);
}

std::vector<int64_t> WithBatch(int64_t n, const Tensor& param) {
  std::vector<int64_t> shape = {n};
  for (int64_t d : param.sizes()) shape.push_back(d);
  return shape;
}

std::vector<Tensor> DefinedOnly(std::initializer_list<Tensor> tensors) {
  std::vector<Tensor> out;
  for (const Tensor& t : tensors) {
    if (t.defined()) out.push_back(t);
  }
  return out;
}

Tensor MaterialisedRecord::SquaredNorms() const {
  Tensor total = torch::zeros({batch_size()}, grads_[0].options());
  for (const Tensor& g : grads_) total += g.flatten(1).pow(2).sum(1);
  return total;
}

std::vector<Tensor> MaterialisedRecord::ScaledSum(const Tensor& scale) const {
  std::vector<Tensor> sums;
  for (size_t i = 0; i < grads_.size(); ++i) {
    Tensor s = scale.to(grads_[i].dtype()).unsqueeze(0);
    sums.push_back(torch::matmul(s, grads_[i].flatten(1)).view(params()[i].sizes()));
  }
  return sums;
}

std::unique_ptr<GradSampleRecord> ZeroRecord(std::vector<Tensor> params, int64_t n) {
  std::vector<Tensor> grads;
  for (const Tensor& p : params) grads.push_back(torch::zeros(WithBatch(n, p), p.options()));
  return std::make_unique<MaterialisedRecord>(std::move(params), std::move(grads));
}

Tensor OrPlaceholder(const Tensor& t, const Tensor& like) {
  return t.defined() ? t : torch::empty({0}, like.options());
}

Tensor FromPlaceholder(const Tensor& t) { return t.numel() == 0 ? Tensor() : t; }

void RememberSink(AutogradContext* ctx) {
  c10::intrusive_ptr<GradSampleSink> sink = GradSampleTape::ActiveSink();
  if (sink) ctx->saved_data[kSinkKey] = at::IValue::make_capsule(std::move(sink));
}

GradSampleSink* RecordingSink(AutogradContext* ctx) {
  auto it = ctx->saved_data.find(kSinkKey);
  if (it == ctx->saved_data.end()) return nullptr;
  auto* sink = static_cast<GradSampleSink*>(it->second.toCapsule().get());
  return sink->open() ? sink : nullptr;
}

c10::intrusive_ptr<torch::CustomClassHolder> SinkHolder(AutogradContext* ctx) {
  auto it = ctx->saved_data.find(kSinkKey);
  if (it == ctx->saved_data.end()) return {};
  return it->second.toCapsule();
}

torch::autograd::variable_list NormBackward(
    AutogradContext* ctx, const Tensor& x, const Tensor& weight, const Tensor& bias,
    const NormNativeBackward& native,
    const std::function<std::unique_ptr<GradSampleRecord>()>& record) {
  const bool affine = weight.defined();
  auto holder = SinkHolder(ctx);
  GradSampleSink* sink = RecordingSink(ctx);
  Tensor gx, gw, gb;
  if (x.numel() == 0) {
    if (ctx->needs_input_grad(0)) gx = torch::zeros_like(x);
    if (sink == nullptr && affine) {
      gw = torch::zeros_like(weight);
      if (bias.defined()) gb = torch::zeros_like(bias);
    }
  } else {
    const std::array<bool, 3> mask = {ctx->needs_input_grad(0),
                                      sink == nullptr && affine && ctx->needs_input_grad(1),
                                      sink == nullptr && affine && ctx->needs_input_grad(2)};
    if (mask[0] || mask[1] || mask[2]) std::tie(gx, gw, gb) = native(mask);
  }
  if (sink != nullptr && affine) sink->Add(record());
  return {gx, gw, gb, Tensor(), Tensor()};
}

namespace {

using torch::autograd::variable_list;

// ------------------------------------------------------------------------------------------------
// Per-sample math shared by the records. x: [N, T, K] rows per sample, dy: [N, T, out].

// [N, out, K]: each sample's sum over positions of dy_t x_t^T.
Tensor PerSampleOuter(const Tensor& x, const Tensor& dy) {
  return torch::bmm(dy.transpose(1, 2), x);
}

// [N, T, T]: each sample's Gram matrix over positions of a [N, T, F] tensor.
Tensor Gram(const Tensor& a) {
  if (a.is_cpu() && a.scalar_type() == torch::kFloat32) {
    const Tensor rows = a.contiguous();
    Tensor out = torch::empty({a.size(0), a.size(1), a.size(1)}, a.options());
    if (CpuGram(rows.data_ptr<float>(), a.size(0), a.size(1), a.size(2), out.data_ptr<float>())) {
      return out;
    }
  }
  return torch::bmm(a, a.transpose(1, 2));
}

// [N]: ||sum_t dy_t x_t^T||_F^2 without forming it (Gram matrices over positions).
Tensor GhostSquaredNorm(const Tensor& x, const Tensor& dy) {
  if (x.size(1) == 1) return dy.pow(2).sum({1, 2}) * x.pow(2).sum({1, 2});
  return (Gram(x) * Gram(dy)).sum({1, 2});
}

// ------------------------------------------------------------------------------------------------
// Records

// Linear, ghost: keeps x [N, T, in] and dy [N, T, out].
class LinearGhostRecord : public GradSampleRecord {
 public:
  LinearGhostRecord(const Tensor& weight, const Tensor& bias, Tensor x, Tensor dy)
      : GradSampleRecord(DefinedOnly({weight, bias})),
        has_bias_(bias.defined()),
        x_(std::move(x)),
        dy_(std::move(dy)) {}
  int64_t batch_size() const override { return x_.size(0); }
  Tensor SquaredNorms() const override {
    Tensor norms = GhostSquaredNorm(x_, dy_);
    if (has_bias_) norms = norms + dy_.sum(1).pow(2).sum(1);
    return norms;
  }
  std::vector<Tensor> ScaledSum(const Tensor& scale) const override {
    Tensor scaled = (dy_ * scale.to(dy_.dtype()).view({-1, 1, 1})).flatten(0, 1);
    std::vector<Tensor> sums = {scaled.t().mm(x_.flatten(0, 1))};
    if (has_bias_) sums.push_back(scaled.sum(0));
    return sums;
  }
  std::vector<Tensor> PerSampleGrads() const override {
    std::vector<Tensor> grads = {PerSampleOuter(x_, dy_)};
    if (has_bias_) grads.push_back(dy_.sum(1));
    return grads;
  }

 private:
  bool has_bias_;
  Tensor x_, dy_;
};

struct ConvGeometry {
  std::vector<int64_t> kernel, stride, padding, dilation;
  int64_t groups = 1;
  // Zeros, one per spatial dimension (no transposed convolutions here).
  std::vector<int64_t> output_padding() const { return std::vector<int64_t>(kernel.size(), 0); }
};

// [N, T, in*k1*...*kd]: the patches of x under the kernel, in the weight's flatten order.
Tensor Patches(const Tensor& x, const ConvGeometry& g) {
  if (g.kernel.size() == 2) {
    return torch::im2col(x, g.kernel, g.dilation, g.padding, g.stride).transpose(1, 2);
  }
  const int64_t d = static_cast<int64_t>(g.kernel.size());
  std::vector<int64_t> pad;  // constant_pad_nd pads the last dimension first
  for (int64_t i = d - 1; i >= 0; --i) pad.insert(pad.end(), {g.padding[i], g.padding[i]});
  Tensor p = at::constant_pad_nd(x, pad, 0);
  for (int64_t i = 0; i < d; ++i) {
    // Each unfold appends a window dimension; its dilated taps are every dilation-th element.
    const int64_t span = g.dilation[i] * (g.kernel[i] - 1) + 1;
    p = p.unfold(2 + i, span, g.stride[i]).slice(-1, 0, span, g.dilation[i]);
  }
  std::vector<int64_t> order = {0};  // [N, out positions..., C, kernel offsets...]
  for (int64_t i = 0; i < d; ++i) order.push_back(2 + i);
  order.push_back(1);
  for (int64_t i = 0; i < d; ++i) order.push_back(2 + d + i);
  return p.permute(order).reshape({x.size(0), -1, x.size(1) * c10::multiply_integers(g.kernel)});
}

// [N*G, T, F/G] from [N, T, F]: group g of sample n's features becomes row n*G+g.
Tensor PerGroup(const Tensor& t, int64_t groups) {
  if (groups == 1) return t;
  return t.reshape({t.size(0), t.size(1), groups, -1})
      .permute({0, 2, 1, 3})
      .reshape({-1, t.size(1), t.size(2) / groups});
}

// The shape {n, -1, 1, ..., 1} that broadcasts a [n] tensor over a `dims`-dimensional one.
std::vector<int64_t> BatchView(int64_t dims) {
  std::vector<int64_t> shape(dims, 1);
  shape[0] = -1;
  return shape;
}

// Convolution (2-d or 3-d, grouped), ghost: keeps the layer input x [N, in, *] and dy [N, out, *].
class ConvGhostRecord : public GradSampleRecord {
 public:
  ConvGhostRecord(const Tensor& weight, const Tensor& bias, Tensor x, Tensor dy, ConvGeometry geo)
      : GradSampleRecord(DefinedOnly({weight, bias})),
        has_bias_(bias.defined()),
        x_(std::move(x)),
        dy_(std::move(dy)),
        geo_(std::move(geo)) {}
  int64_t batch_size() const override { return x_.size(0); }
  Tensor SquaredNorms() const override {
    Tensor dy = dy_.flatten(2).transpose(1, 2);
    Tensor norms =
        GhostSquaredNorm(PerGroup(Patches(x_, geo_), geo_.groups), PerGroup(dy, geo_.groups))
            .view({batch_size(), geo_.groups})
            .sum(1);
    if (has_bias_) norms = norms + dy.sum(1).pow(2).sum(1);
    return norms;
  }
  std::vector<Tensor> ScaledSum(const Tensor& scale) const override {
    Tensor scaled = dy_ * scale.to(dy_.dtype()).view(BatchView(dy_.dim()));
    const Tensor& w = params()[0];
    std::vector<int64_t> bias_sizes = {w.size(0)};
    auto grads = at::convolution_backward(
        scaled, x_, w, has_bias_ ? at::OptionalIntArrayRef(bias_sizes) : c10::nullopt, geo_.stride,
        geo_.padding, geo_.dilation, false, geo_.output_padding(), geo_.groups,
        {false, true, has_bias_});
    std::vector<Tensor> sums = {std::get<1>(grads)};
    if (has_bias_) sums.push_back(std::get<2>(grads));
    return sums;
  }
  // The per-sample weight gradients are the weight gradient of one convolution with the batch
  // folded into the channels as N*G groups (the fast convolution kernels, no im2col).
  std::vector<Tensor> PerSampleGrads() const override {
    const Tensor& w = params()[0];
    const int64_t n = batch_size();
    std::vector<int64_t> repeats(w.dim(), 1);
    repeats[0] = n;
    Tensor grouped_weight = w.repeat(repeats);  // only its shape is used
    std::vector<int64_t> dy_shape = dy_.sizes().vec(), x_shape = x_.sizes().vec();
    dy_shape[1] *= n, x_shape[1] *= n;
    dy_shape[0] = x_shape[0] = 1;
    auto backward =
        at::convolution_backward(dy_.reshape(dy_shape), x_.reshape(x_shape), grouped_weight,
                                 c10::nullopt, geo_.stride, geo_.padding, geo_.dilation, false,
                                 geo_.output_padding(), n * geo_.groups, {false, true, false});
    std::vector<Tensor> grads = {std::get<1>(backward).view(WithBatch(n, w))};
    if (has_bias_) grads.push_back(dy_.flatten(2).sum(2));
    return grads;
  }

 private:
  bool has_bias_;
  Tensor x_, dy_;
  ConvGeometry geo_;
};

// ------------------------------------------------------------------------------------------------
// Convolution (2-d and 3-d)

class DPConvFunction : public torch::autograd::Function<DPConvFunction> {
 public:
  static Tensor forward(AutogradContext* ctx, const Tensor& x, const Tensor& weight,
                        const Tensor& bias_or_placeholder, std::vector<int64_t> stride,
                        std::vector<int64_t> padding, std::vector<int64_t> dilation,
                        int64_t groups) {
    const Tensor bias = FromPlaceholder(bias_or_placeholder);
    ctx->save_for_backward({x, weight, bias});
    ctx->saved_data["stride"] = stride;
    ctx->saved_data["padding"] = padding;
    ctx->saved_data["dilation"] = dilation;
    ctx->saved_data["groups"] = groups;
    RememberSink(ctx);
    std::vector<int64_t> output_padding(stride.size(), 0);
    return at::convolution(x, weight, bias, stride, padding, dilation, false, output_padding,
                           groups);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const variable_list saved = ctx->get_saved_variables();
    const Tensor &x = saved[0], &weight = saved[1], &bias = saved[2];
    const Tensor dy = grad_outputs[0];
    ConvGeometry geo{weight.sizes().slice(2).vec(), ctx->saved_data["stride"].toIntVector(),
                     ctx->saved_data["padding"].toIntVector(),
                     ctx->saved_data["dilation"].toIntVector(), ctx->saved_data["groups"].toInt()};
    auto holder = SinkHolder(ctx);
    GradSampleSink* sink = RecordingSink(ctx);
    const bool has_bias = bias.defined();
    const std::array<bool, 3> mask = {ctx->needs_input_grad(0),
                                      sink == nullptr && ctx->needs_input_grad(1),
                                      sink == nullptr && has_bias && ctx->needs_input_grad(2)};
    Tensor gx, gw, gb;
    if (mask[0] || mask[1] || mask[2]) {
      std::vector<int64_t> bias_sizes = {weight.size(0)};
      std::tie(gx, gw, gb) = at::convolution_backward(
          dy, x, weight, has_bias ? at::OptionalIntArrayRef(bias_sizes) : c10::nullopt, geo.stride,
          geo.padding, geo.dilation, false, geo.output_padding(), geo.groups, mask);
    }
    if (sink != nullptr) sink->Add(MakeRecord(sink->mode(), weight, bias, x, dy, std::move(geo)));
    return {gx, gw, gb, Tensor(), Tensor(), Tensor(), Tensor()};
  }

 private:
  static std::unique_ptr<GradSampleRecord> MakeRecord(GradSampleMode mode, const Tensor& weight,
                                                      const Tensor& bias, const Tensor& x,
                                                      const Tensor& dy, ConvGeometry geo) {
    if (x.size(0) == 0) return ZeroRecord(DefinedOnly({weight, bias}), 0);
    const int64_t groups = geo.groups;
    ConvGhostRecord ghost(weight, bias, x, dy, std::move(geo));
    const int64_t positions = dy[0][0].numel();
    // Per group: T positions, in/G * kernel inputs, out/G outputs.
    if (!UseMaterialised(mode, positions, weight[0].numel(), weight.size(0) / groups)) {
      return std::make_unique<ConvGhostRecord>(std::move(ghost));
    }
    return std::make_unique<MaterialisedRecord>(ghost.params(), ghost.PerSampleGrads());
  }
};

// ------------------------------------------------------------------------------------------------
// Linear

class DPLinearFunction : public torch::autograd::Function<DPLinearFunction> {
 public:
  static Tensor forward(AutogradContext* ctx, const Tensor& x, const Tensor& weight,
                        const Tensor& bias_or_placeholder) {
    const Tensor bias = FromPlaceholder(bias_or_placeholder);
    ctx->save_for_backward({x, weight, bias});
    RememberSink(ctx);
    return at::linear(x, weight, bias);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const variable_list saved = ctx->get_saved_variables();
    const Tensor &x = saved[0], &weight = saved[1], &bias = saved[2];
    const Tensor dy = grad_outputs[0];
    auto holder = SinkHolder(ctx);
    GradSampleSink* sink = RecordingSink(ctx);
    Tensor gx, gw, gb;
    if (ctx->needs_input_grad(0)) gx = dy.matmul(weight);
    const Tensor dy2 = dy.reshape({-1, weight.size(0)});
    if (sink == nullptr) {
      if (ctx->needs_input_grad(1)) gw = dy2.t().mm(x.reshape({-1, weight.size(1)}));
      if (bias.defined() && ctx->needs_input_grad(2)) gb = dy2.sum(0);
    } else {
      sink->Add(MakeRecord(sink->mode(), weight, bias, x, dy));
    }
    return {gx, gw, gb};
  }

 private:
  static std::unique_ptr<GradSampleRecord> MakeRecord(GradSampleMode mode, const Tensor& weight,
                                                      const Tensor& bias, const Tensor& x,
                                                      const Tensor& dy) {
    const int64_t n = x.size(0);
    if (n == 0) return ZeroRecord(DefinedOnly({weight, bias}), 0);
    LinearGhostRecord ghost(weight, bias, x.reshape({n, -1, weight.size(1)}),
                            dy.reshape({n, -1, weight.size(0)}));
    const int64_t positions = x.numel() / (n * weight.size(1));
    if (!UseMaterialised(mode, positions, weight.size(1), weight.size(0))) {
      return std::make_unique<LinearGhostRecord>(std::move(ghost));
    }
    return std::make_unique<MaterialisedRecord>(ghost.params(), ghost.PerSampleGrads());
  }
};

// ------------------------------------------------------------------------------------------------
// GroupNorm

class DPGroupNormFunction : public torch::autograd::Function<DPGroupNormFunction> {
 public:
  static Tensor forward(AutogradContext* ctx, const Tensor& input,
                        const Tensor& weight_or_placeholder, const Tensor& bias_or_placeholder,
                        int64_t groups, double eps) {
    const Tensor weight = FromPlaceholder(weight_or_placeholder);
    const Tensor bias = FromPlaceholder(bias_or_placeholder);
    const Tensor x = input.contiguous();
    const int64_t n = x.size(0), c = x.size(1);
    ctx->saved_data["groups"] = groups;
    RememberSink(ctx);
    if (x.numel() == 0) {
      ctx->save_for_backward({x, weight, bias, Tensor(), Tensor()});
      return torch::empty_like(x);
    }
    auto [y, mean, rstd] =
        at::native_group_norm(x, weight, bias, n, c, x.numel() / (n * c), groups, eps);
    ctx->save_for_backward({x, weight, bias, mean, rstd});
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const variable_list saved = ctx->get_saved_variables();
    const Tensor &x = saved[0], &weight = saved[1], &bias = saved[2];
    const Tensor &mean = saved[3], &rstd = saved[4];
    const Tensor dy = grad_outputs[0].contiguous();
    const int64_t groups = ctx->saved_data["groups"].toInt();
    const int64_t n = x.size(0), c = x.size(1);
    return NormBackward(
        ctx, x, weight, bias,
        [&](std::array<bool, 3> mask) {
          return at::native_group_norm_backward(dy, x, mean, rstd, weight, n, c,
                                                x.numel() / (n * c), groups, mask);
        },
        [&] { return MakeRecord(weight, bias, x, dy, mean, rstd, groups); });
  }

 private:
  // GroupNorm's per-sample gradients are [N, C] sums, always cheap to hold.
  static std::unique_ptr<GradSampleRecord> MakeRecord(const Tensor& weight, const Tensor& bias,
                                                      const Tensor& x, const Tensor& dy,
                                                      const Tensor& mean, const Tensor& rstd,
                                                      int64_t groups) {
    const int64_t n = x.size(0), c = x.size(1);
    if (x.numel() == 0) return ZeroRecord({weight, bias}, n);
    // gw[n, c] = sum_t (x - mean) * rstd * dy = rstd * (sum_t x * dy - mean * sum_t dy), with the
    // statistics of c's group: one pass over the activations instead of three.
    Tensor dy3 = dy.view({n, c, -1});
    Tensor gb = dy3.sum(2);
    auto per_channel = [&](const Tensor& stat) {
      return stat.view({n, groups, 1})
          .to(x.dtype())
          .expand({n, groups, c / groups})
          .reshape({n, c});
    };
    Tensor gw = ((x.view({n, c, -1}) * dy3).sum(2) - per_channel(mean) * gb) * per_channel(rstd);
    return std::make_unique<MaterialisedRecord>(std::vector<Tensor>{weight, bias},
                                                std::vector<Tensor>{gw, gb});
  }
};

}  // namespace

Tensor DPConvolution(const Tensor& input, const Tensor& weight, const Tensor& bias,
                     std::vector<int64_t> stride, std::vector<int64_t> padding,
                     std::vector<int64_t> dilation, int64_t groups) {
  return DPConvFunction::apply(input, weight, OrPlaceholder(bias, weight), std::move(stride),
                               std::move(padding), std::move(dilation), groups);
}

Tensor DPGroupNormalisation(const Tensor& input, const Tensor& weight, const Tensor& bias,
                            int64_t groups, double eps) {
  return DPGroupNormFunction::apply(input, OrPlaceholder(weight, input), OrPlaceholder(bias, input),
                                    groups, eps);
}

}  // namespace dp_internal

using dp_internal::DPConvolution;
using dp_internal::DPGroupNormalisation;
using dp_internal::DPLinearFunction;
using dp_internal::OrPlaceholder;
using dp_internal::ToVector;
using torch::Tensor;

// ------------------------------------------------------------------------------------------------
// Sink and tape

namespace {

thread_local GradSampleTape* g_active_tape = nullptr;

}  // namespace

bool GradSampleSink::open() const {
  std::lock_guard<std::mutex> lock(mu_);
  return open_;
}

void GradSampleSink::Close() {
  std::lock_guard<std::mutex> lock(mu_);
  open_ = false;
  records_.clear();
}

void GradSampleSink::Add(std::unique_ptr<GradSampleRecord> record) {
  std::lock_guard<std::mutex> lock(mu_);
  if (open_ && record != nullptr) records_.push_back(std::move(record));
}

std::vector<std::unique_ptr<GradSampleRecord>> GradSampleSink::Take() {
  std::lock_guard<std::mutex> lock(mu_);
  return std::exchange(records_, {});
}

GradSampleTape::GradSampleTape(GradSampleMode mode)
    : sink_(c10::make_intrusive<GradSampleSink>(mode)), previous_(g_active_tape) {
  g_active_tape = this;
}

GradSampleTape::~GradSampleTape() {
  sink_->Close();
  g_active_tape = previous_;
}

c10::intrusive_ptr<GradSampleSink> GradSampleTape::ActiveSink() {
  return g_active_tape == nullptr ? c10::intrusive_ptr<GradSampleSink>() : g_active_tape->sink_;
}

// ------------------------------------------------------------------------------------------------
// Modules: parameters are created by the plain torch module so that names, shapes and
// initialisation are exactly PyTorch's.

DPConv2dImpl::DPConv2dImpl(DPConv2dOptions options_) : options(std::move(options_)) { reset(); }

void DPConv2dImpl::reset() {
  torch::nn::Conv2d plain(
      torch::nn::Conv2dOptions(options.in_channels(), options.out_channels(), options.kernel_size())
          .stride(options.stride())
          .padding(options.padding())
          .dilation(options.dilation())
          .bias(options.bias()));
  weight = register_parameter("weight", plain->weight);
  if (options.bias()) {
    bias = register_parameter("bias", plain->bias);
  } else {
    bias = register_parameter("bias", Tensor(), /*requires_grad=*/false);
  }
}

Tensor DPConv2dImpl::forward(const Tensor& input) {
  return DPConvolution(input, weight, bias, ToVector(options.stride()), ToVector(options.padding()),
                       ToVector(options.dilation()), 1);
}

DPLinearImpl::DPLinearImpl(torch::nn::LinearOptions options_) : options(std::move(options_)) {
  reset();
}

void DPLinearImpl::reset() {
  torch::nn::Linear plain(options);
  weight = register_parameter("weight", plain->weight);
  if (options.bias()) {
    bias = register_parameter("bias", plain->bias);
  } else {
    bias = register_parameter("bias", Tensor(), /*requires_grad=*/false);
  }
}

Tensor DPLinearImpl::forward(const Tensor& input) {
  return DPLinearFunction::apply(input, weight, OrPlaceholder(bias, weight));
}

DPGroupNormImpl::DPGroupNormImpl(torch::nn::GroupNormOptions options_)
    : options(std::move(options_)) {
  reset();
}

void DPGroupNormImpl::reset() {
  torch::nn::GroupNorm plain(options);
  if (options.affine()) {
    weight = register_parameter("weight", plain->weight);
    bias = register_parameter("bias", plain->bias);
  } else {
    weight = register_parameter("weight", Tensor(), /*requires_grad=*/false);
    bias = register_parameter("bias", Tensor(), /*requires_grad=*/false);
  }
}

Tensor DPGroupNormImpl::forward(const Tensor& input) {
  return DPGroupNormalisation(input, weight, bias, options.num_groups(), options.eps());
}

bool IsDpAwareModule(const torch::nn::Module& module) {
  return dynamic_cast<const DPConv2dImpl*>(&module) != nullptr ||
         dynamic_cast<const DPLinearImpl*>(&module) != nullptr ||
         dynamic_cast<const DPGroupNormImpl*>(&module) != nullptr ||
         dynamic_cast<const DPConv3dImpl*>(&module) != nullptr ||
         dynamic_cast<const DPLayerNormImpl*>(&module) != nullptr ||
         dynamic_cast<const DPInstanceNorm2dImpl*>(&module) != nullptr ||
         dynamic_cast<const DPInstanceNorm3dImpl*>(&module) != nullptr ||
         dynamic_cast<const DPEmbeddingImpl*>(&module) != nullptr;
}

}  // namespace fl
