#include "models/dp_layers.h"

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "common/torch_pch.h"
#include "gtest/gtest.h"

namespace fl {
namespace {

using torch::Tensor;

// max |a - b| / max |b| (or the absolute error when b is all zero).
double RelativeError(const Tensor& a, const Tensor& b) {
  EXPECT_EQ(a.sizes(), b.sizes());
  if (a.numel() == 0) return 0.0;
  const double scale = b.abs().max().item<double>();
  const double diff = (a - b).abs().max().item<double>();
  return scale > 0 ? diff / scale : diff;
}

// Makes a random input of the given shape and floating-point dtype.
using InputMaker = std::function<Tensor(const std::vector<int64_t>&, torch::Dtype)>;

Tensor RandomActivations(const std::vector<int64_t>& shape, torch::Dtype dtype) {
  return torch::randn(shape, torch::TensorOptions().dtype(dtype));
}

// Indices below `num`; few enough values that tokens repeat within a sample.
InputMaker RandomTokens(int64_t num) {
  return [num](const std::vector<int64_t>& shape, torch::Dtype) {
    return torch::randint(0, num, shape, torch::TensorOptions().dtype(torch::kLong));
  };
}

// A layer under test: its module, a forward, the input shape of one sample and its input maker.
struct LayerCase {
  std::string name;
  std::shared_ptr<torch::nn::Module> module;
  std::function<Tensor(const Tensor&)> forward;
  std::vector<int64_t> sample_shape;
  InputMaker make_input;
};

std::vector<LayerCase> Cases(torch::Dtype dtype) {
  std::vector<LayerCase> cases;
  auto add = [&](std::string name, auto layer, std::vector<int64_t> shape,
                 InputMaker make_input = RandomActivations) {
    layer->to(dtype);
    cases.push_back({std::move(name), layer.ptr(),
                     [layer](const Tensor& x) mutable { return layer->forward(x); },
                     std::move(shape), std::move(make_input)});
  };
  add("conv_stride_pad_bias", DPConv2d(DPConv2dOptions(3, 4, 3).stride(2).padding(1)),
      std::vector<int64_t>{3, 7, 6});
  add("conv_no_bias_dilation", DPConv2d(DPConv2dOptions(2, 5, {2, 3}).dilation(2).bias(false)),
      std::vector<int64_t>{2, 6, 8});
  add("linear", DPLinear(6, 3), std::vector<int64_t>{6});
  add("linear_sequence", DPLinear(torch::nn::LinearOptions(4, 3).bias(false)),
      std::vector<int64_t>{5, 4});
  add("groupnorm", DPGroupNorm(torch::nn::GroupNormOptions(2, 4)), std::vector<int64_t>{4, 3, 5});
  add("conv3d_groups_stride_pad", DPConv3d(DPConv3dOptions(4, 6, 3).stride(2).padding(1).groups(2)),
      std::vector<int64_t>{4, 5, 6, 5});
  add("conv3d_no_bias_dilation",
      DPConv3d(DPConv3dOptions(2, 3, {2, 3, 2}).dilation({1, 2, 2}).bias(false)),
      std::vector<int64_t>{2, 4, 7, 6});
  add("layernorm", DPLayerNorm(torch::nn::LayerNormOptions({6})), std::vector<int64_t>{6});
  add("layernorm_sequence_2d_shape", DPLayerNorm(torch::nn::LayerNormOptions({3, 4})),
      std::vector<int64_t>{5, 3, 4});
  add("instancenorm2d", DPInstanceNorm2d(torch::nn::InstanceNormOptions(3).affine(true)),
      std::vector<int64_t>{3, 4, 5});
  add("instancenorm3d", DPInstanceNorm3d(torch::nn::InstanceNormOptions(2).affine(true)),
      std::vector<int64_t>{2, 3, 4, 3});
  add("embedding", DPEmbedding(5, 4), std::vector<int64_t>{7}, RandomTokens(5));
  add("embedding_padding_2d_tokens", DPEmbedding(torch::nn::EmbeddingOptions(6, 3).padding_idx(2)),
      std::vector<int64_t>{3, 4}, RandomTokens(6));
  return cases;
}

std::vector<int64_t> BatchShape(int64_t n, const std::vector<int64_t>& sample) {
  std::vector<int64_t> shape = {n};
  shape.insert(shape.end(), sample.begin(), sample.end());
  return shape;
}

// Loss whose per-sample part is <out_i, r_i>, so every sample gets its own gradient.
Tensor Loss(const Tensor& out, const Tensor& r) { return (out * r).sum(); }

// Per-sample gradients from a loop of single-sample backward passes (no tape).
std::vector<Tensor> LoopGrads(LayerCase& c, const Tensor& x, const Tensor& r) {
  std::vector<Tensor> params = c.module->parameters();
  std::vector<std::vector<Tensor>> per_param(params.size());
  for (int64_t i = 0; i < x.size(0); ++i) {
    for (Tensor& p : params) p.mutable_grad() = Tensor();
    Loss(c.forward(x.narrow(0, i, 1)), r.narrow(0, i, 1)).backward();
    for (size_t k = 0; k < params.size(); ++k) per_param[k].push_back(params[k].grad().clone());
  }
  std::vector<Tensor> out;
  for (size_t k = 0; k < params.size(); ++k) {
    out.push_back(per_param[k].empty()
                      ? torch::zeros(BatchShape(0, params[k].sizes().vec()), params[k].options())
                      : torch::stack(per_param[k]));
    params[k].mutable_grad() = Tensor();
  }
  return out;
}

void CheckCase(LayerCase& c, GradSampleMode mode, int64_t n, torch::Dtype dtype, double tol) {
  SCOPED_TRACE(c.name + " n=" + std::to_string(n));
  torch::manual_seed(n + 7);
  const torch::TensorOptions opts = torch::TensorOptions().dtype(dtype);
  Tensor x = c.make_input(BatchShape(n, c.sample_shape), dtype);
  if (x.is_floating_point()) x.requires_grad_(true);
  Tensor out_shape_probe = c.forward(c.make_input(BatchShape(1, c.sample_shape), dtype));
  std::vector<int64_t> out_shape = out_shape_probe.sizes().vec();
  out_shape[0] = n;
  Tensor r = torch::randn(out_shape, opts);
  std::vector<Tensor> expected = LoopGrads(c, x.detach(), r);

  std::vector<std::unique_ptr<GradSampleRecord>> records;
  Tensor input_grad;
  {
    GradSampleTape tape(mode);
    Loss(c.forward(x), r).backward();
    records = tape.TakeRecords();
    input_grad = x.grad();
  }
  ASSERT_EQ(records.size(), 1u);
  for (const Tensor& p : c.module->parameters()) EXPECT_FALSE(p.grad().defined());
  if (n > 0 && x.is_floating_point()) EXPECT_TRUE(input_grad.defined());

  const GradSampleRecord& record = *records[0];
  EXPECT_EQ(record.batch_size(), n);
  std::vector<Tensor> grads = record.PerSampleGrads();
  ASSERT_EQ(grads.size(), expected.size());
  Tensor norms = torch::zeros({n}, opts);
  for (size_t k = 0; k < grads.size(); ++k) {
    EXPECT_LT(RelativeError(grads[k], expected[k]), tol) << "param " << k;
    norms += expected[k].flatten(1).pow(2).sum(1);
  }
  EXPECT_LT(RelativeError(record.SquaredNorms(), norms), tol);
  Tensor scale = torch::rand({n}, opts);
  std::vector<Tensor> sums = record.ScaledSum(scale);
  for (size_t k = 0; k < sums.size(); ++k) {
    std::vector<int64_t> view = {n};
    view.resize(expected[k].dim(), 1);
    Tensor want = (expected[k] * scale.view(view)).sum(0);
    EXPECT_LT(RelativeError(sums[k], want), tol) << "sum of param " << k;
  }
}

class DpLayersPerSampleTest : public ::testing::TestWithParam<GradSampleMode> {};

TEST_P(DpLayersPerSampleTest, MatchesLoopOfSingleSampleBackwardFp64) {
  for (LayerCase& c : Cases(torch::kFloat64)) {
    for (int64_t n : {0, 1, 5}) CheckCase(c, GetParam(), n, torch::kFloat64, 1e-10);
  }
}

TEST_P(DpLayersPerSampleTest, MatchesLoopOfSingleSampleBackwardFp32) {
  for (LayerCase& c : Cases(torch::kFloat32)) {
    for (int64_t n : {0, 1, 6}) CheckCase(c, GetParam(), n, torch::kFloat32, 1e-5);
  }
}

INSTANTIATE_TEST_SUITE_P(Modes, DpLayersPerSampleTest,
                         ::testing::Values(GradSampleMode::kAuto, GradSampleMode::kMaterialise,
                                           GradSampleMode::kGhost));

// Without a tape, forward and gradients equal those of the plain torch layer with the same weights.
template <typename Dp, typename Plain>
void ExpectSameAsPlain(Dp dp, Plain plain, const Tensor& x) {
  {
    torch::NoGradGuard no_grad;
    auto dp_params = dp->named_parameters();
    for (auto& item : plain->named_parameters()) item.value().copy_(dp_params[item.key()]);
  }
  ASSERT_EQ(dp->named_parameters().keys(), plain->named_parameters().keys());
  const bool differentiable = x.is_floating_point();
  Tensor x1 = x.clone().requires_grad_(differentiable);
  Tensor x2 = x.clone().requires_grad_(differentiable);
  Tensor y1 = dp->forward(x1), y2 = plain->forward(x2);
  EXPECT_LT(RelativeError(y1, y2), 1e-6);
  Tensor r = torch::randn(y1.sizes());
  Loss(y1, r).backward();
  Loss(y2, r).backward();
  if (differentiable) EXPECT_LT(RelativeError(x1.grad(), x2.grad()), 1e-5);
  auto plain_params = plain->named_parameters();
  for (auto& item : dp->named_parameters()) {
    EXPECT_LT(RelativeError(item.value().grad(), plain_params[item.key()].grad()), 1e-5)
        << item.key();
  }
}

TEST(DpLayersTest, WithoutTapeEqualPlainLayers) {
  torch::manual_seed(1);
  ExpectSameAsPlain(DPConv2d(DPConv2dOptions(3, 4, 3).stride(2).padding(1)),
                    torch::nn::Conv2d(torch::nn::Conv2dOptions(3, 4, 3).stride(2).padding(1)),
                    torch::randn({2, 3, 9, 9}));
  ExpectSameAsPlain(DPLinear(7, 3), torch::nn::Linear(7, 3), torch::randn({4, 7}));
  ExpectSameAsPlain(DPGroupNorm(torch::nn::GroupNormOptions(2, 4)),
                    torch::nn::GroupNorm(torch::nn::GroupNormOptions(2, 4)),
                    torch::randn({3, 4, 5, 5}));
  ExpectSameAsPlain(DPConv3d(DPConv3dOptions(4, 6, {3, 2, 3})
                                 .stride({2, 1, 1})
                                 .padding(1)
                                 .dilation({1, 2, 1})
                                 .groups(2)),
                    torch::nn::Conv3d(torch::nn::Conv3dOptions(4, 6, {3, 2, 3})
                                          .stride({2, 1, 1})
                                          .padding(1)
                                          .dilation({1, 2, 1})
                                          .groups(2)),
                    torch::randn({2, 4, 5, 6, 5}));
  ExpectSameAsPlain(DPLayerNorm(torch::nn::LayerNormOptions({3, 4})),
                    torch::nn::LayerNorm(torch::nn::LayerNormOptions({3, 4})),
                    torch::randn({2, 5, 3, 4}));
  ExpectSameAsPlain(DPInstanceNorm2d(torch::nn::InstanceNormOptions(4).affine(true)),
                    torch::nn::InstanceNorm2d(torch::nn::InstanceNormOptions(4).affine(true)),
                    torch::randn({3, 4, 5, 6}));
  ExpectSameAsPlain(DPInstanceNorm3d(torch::nn::InstanceNormOptions(2).affine(true)),
                    torch::nn::InstanceNorm3d(torch::nn::InstanceNormOptions(2).affine(true)),
                    torch::randn({3, 2, 4, 5, 3}));
  ExpectSameAsPlain(DPEmbedding(torch::nn::EmbeddingOptions(6, 3).padding_idx(-1)),
                    torch::nn::Embedding(torch::nn::EmbeddingOptions(6, 3).padding_idx(-1)),
                    torch::randint(0, 6, {4, 7}, torch::kLong));
}

// Layers whose options DP-SGD cannot honour refuse them when built, as torch's own option checks.
TEST(DpLayersTest, UnsupportedOptionsAreRefused) {
  try {
    DPInstanceNorm2d norm(torch::nn::InstanceNormOptions(3).affine(true).track_running_stats(true));
    ADD_FAILURE() << "track_running_stats=true was accepted";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("track_running_stats"), std::string::npos) << e.what();
  }
  EXPECT_THROW(DPInstanceNorm3d(torch::nn::InstanceNormOptions(3).track_running_stats(true)),
               c10::Error);
  EXPECT_THROW(DPEmbedding(torch::nn::EmbeddingOptions(5, 2).scale_grad_by_freq(true)), c10::Error);
  EXPECT_THROW(DPEmbedding(torch::nn::EmbeddingOptions(5, 2).sparse(true)), c10::Error);
  EXPECT_THROW(DPEmbedding(torch::nn::EmbeddingOptions(5, 2).max_norm(1.0)), c10::Error);
  EXPECT_THROW(DPConv3d(DPConv3dOptions(3, 4, 3).groups(2)), c10::Error);
}

TEST(DpLayersTest, ParametersHaveTorchNamesShapesAndInit) {
  torch::manual_seed(3);
  DPConv2d dp(DPConv2dOptions(3, 8, 3).bias(false));
  torch::manual_seed(3);
  torch::nn::Conv2d plain(torch::nn::Conv2dOptions(3, 8, 3).bias(false));
  ASSERT_EQ(dp->named_parameters().keys(), plain->named_parameters().keys());
  EXPECT_TRUE(torch::equal(dp->weight, plain->weight));
  DPGroupNorm norm(torch::nn::GroupNormOptions(2, 4));
  EXPECT_EQ(norm->named_parameters().keys(), (std::vector<std::string>{"weight", "bias"}));
  EXPECT_TRUE(torch::equal(norm->weight, torch::ones({4})));
  EXPECT_TRUE(IsDpAwareModule(*norm));
  EXPECT_FALSE(IsDpAwareModule(*plain));
}

TEST(DpLayersTest, NewLayersHaveTorchNamesShapesAndInit) {
  torch::manual_seed(4);
  DPConv3d dp_conv(DPConv3dOptions(4, 6, 3).groups(2));
  torch::manual_seed(4);
  torch::nn::Conv3d plain_conv(torch::nn::Conv3dOptions(4, 6, 3).groups(2));
  ASSERT_EQ(dp_conv->named_parameters().keys(), plain_conv->named_parameters().keys());
  EXPECT_TRUE(torch::equal(dp_conv->weight, plain_conv->weight));
  EXPECT_TRUE(torch::equal(dp_conv->bias, plain_conv->bias));

  torch::manual_seed(5);
  DPEmbedding dp_emb(torch::nn::EmbeddingOptions(7, 3).padding_idx(-2));
  torch::manual_seed(5);
  torch::nn::Embedding plain_emb(torch::nn::EmbeddingOptions(7, 3).padding_idx(-2));
  ASSERT_EQ(dp_emb->named_parameters().keys(), plain_emb->named_parameters().keys());
  EXPECT_TRUE(torch::equal(dp_emb->weight, plain_emb->weight));
  EXPECT_EQ(dp_emb->weight[5].abs().sum().item<float>(), 0.0f);

  DPLayerNorm layer_norm(torch::nn::LayerNormOptions({2, 3}));
  EXPECT_EQ(layer_norm->named_parameters().keys(), (std::vector<std::string>{"weight", "bias"}));
  EXPECT_TRUE(torch::equal(layer_norm->weight, torch::ones({2, 3})));
  EXPECT_TRUE(DPLayerNorm(torch::nn::LayerNormOptions({3}).elementwise_affine(false))
                  ->parameters()
                  .empty());

  DPInstanceNorm3d instance_norm(torch::nn::InstanceNormOptions(4).affine(true));
  EXPECT_EQ(instance_norm->named_parameters().keys(), (std::vector<std::string>{"weight", "bias"}));
  EXPECT_TRUE(torch::equal(instance_norm->bias, torch::zeros({4})));
  EXPECT_TRUE(instance_norm->buffers().empty());
  DPInstanceNorm2d no_affine(torch::nn::InstanceNormOptions(2));
  EXPECT_TRUE(no_affine->parameters().empty());
  for (const std::shared_ptr<torch::nn::Module>& m :
       std::vector<std::shared_ptr<torch::nn::Module>>{
           dp_conv.ptr(), dp_emb.ptr(), layer_norm.ptr(), instance_norm.ptr(), no_affine.ptr()}) {
    EXPECT_TRUE(IsDpAwareModule(*m)) << m->name();
  }
}

TEST(DpLayersTest, TapeGoneMeansPlainGradients) {
  DPLinear layer(3, 2);
  Tensor y;
  {
    GradSampleTape tape;
    y = layer->forward(torch::randn({4, 3}));
  }
  y.sum().backward();
  EXPECT_TRUE(layer->weight.grad().defined());
  EXPECT_TRUE(layer->bias.grad().defined());
}

}  // namespace
}  // namespace fl
