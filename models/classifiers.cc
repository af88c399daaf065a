#include "models/classifiers.h"

#include <cmath>
#include <string>
#include <tuple>
#include <utility>

#include "common/torch_pch.h"
#include "models/dp_layers.h"
#include "models/features.h"

namespace fl {
namespace models_internal {
namespace {

namespace nn = torch::nn;

// Every parameterised layer is DP-aware (models/dp_layers.h), so any model can be trained with
// DP-SGD; without a GradSampleTape they behave as the plain torch layers.
DPConv2d Conv(int64_t in, int64_t out, int64_t kernel, int64_t stride, int64_t padding) {
  return DPConv2d(DPConv2dOptions(in, out, kernel).stride(stride).padding(padding).bias(false));
}

DPGroupNorm Norm(int64_t groups, int64_t channels) {
  return DPGroupNorm(nn::GroupNormOptions(groups, channels));
}

// A classifier: features (what the label head reads, [N, D]), then the linear head `fc`.
class ClassifierImpl : public ModelImpl {
 public:
  virtual torch::Tensor Features(torch::Tensor x) = 0;
  torch::Tensor forward(torch::Tensor x) override { return fc_->forward(Features(std::move(x))); }
  std::string head_prefix() const override { return "fc."; }

 protected:
  DPLinear fc_{nullptr};
};

// ------------------------------------------------------------------------------------------------
// SmallCnn

// Conv-GroupNorm-ReLU-MaxPool stages of the given widths, global average pooling, linear head.
class SmallCnnImpl : public ClassifierImpl {
 public:
  SmallCnnImpl(const ModelSpec& spec, const std::vector<int64_t>& widths) {
    int64_t in = spec.input.channels;
    for (int64_t width : widths) {
      features_->push_back(Conv(in, width, 3, 1, 1));
      features_->push_back(Norm(8, width));
      features_->push_back(nn::ReLU());
      features_->push_back(nn::MaxPool2d(nn::MaxPool2dOptions(2)));
      in = width;
    }
    register_module("features", features_);
    fc_ = register_module("fc", DPLinear(in, spec.num_outputs));
  }

  torch::Tensor Features(torch::Tensor x) override {
    x = features_->forward(x);
    return torch::adaptive_avg_pool2d(x, {1, 1}).flatten(1);
  }

 private:
  nn::Sequential features_;
};

// ------------------------------------------------------------------------------------------------
// ResNet-9

// A Sequential with a concrete forward, so that it can be nested in another
// Sequential.
class StackImpl : public nn::SequentialImpl {
 public:
  using nn::SequentialImpl::SequentialImpl;
  torch::Tensor forward(torch::Tensor x) { return nn::SequentialImpl::forward(x); }
};
TORCH_MODULE(Stack);

Stack ConvGnMish(int64_t in, int64_t out, bool pool) {
  Stack block(Conv(in, out, 3, 1, 1), Norm(32, out), nn::Mish());
  if (pool) block->push_back(nn::MaxPool2d(nn::MaxPool2dOptions(2)));
  return block;
}

class ResNet9Impl : public ClassifierImpl {
 public:
  explicit ResNet9Impl(const ModelSpec& spec)
      : prep_(ConvGnMish(spec.input.channels, 64, false)),
        layer1_(ConvGnMish(64, 128, true)),
        res1_(ConvGnMish(128, 128, false), ConvGnMish(128, 128, false)),
        layer2_(ConvGnMish(128, 256, true)),
        layer3_(ConvGnMish(256, 512, true)),
        res2_(ConvGnMish(512, 512, false), ConvGnMish(512, 512, false)) {
    register_module("prep", prep_);
    register_module("layer1", layer1_);
    register_module("res1", res1_);
    register_module("layer2", layer2_);
    register_module("layer3", layer3_);
    register_module("res2", res2_);
    fc_ = register_module("fc", DPLinear(1024, spec.num_outputs));
  }

  torch::Tensor Features(torch::Tensor x) override {
    x = layer1_->forward(prep_->forward(x));
    x = x + res1_->forward(x);
    x = layer3_->forward(layer2_->forward(x));
    x = x + res2_->forward(x);
    torch::Tensor max_pool = std::get<0>(torch::adaptive_max_pool2d(x, {1, 1}));
    return torch::cat({max_pool, torch::adaptive_avg_pool2d(x, {1, 1})}, 1).flatten(1);
  }

 private:
  Stack prep_, layer1_;
  nn::Sequential res1_;
  Stack layer2_, layer3_;
  nn::Sequential res2_;
};

// ------------------------------------------------------------------------------------------------
// torchvision ResNet with GroupNorm

// torchvision's BasicBlock (bottleneck=false) or Bottleneck (bottleneck=true,
// stride on the 3x3).
class ResBlockImpl : public nn::Module {
 public:
  ResBlockImpl(int64_t inplanes, int64_t planes, int64_t stride, bool bottleneck)
      : bottleneck_(bottleneck) {
    const int64_t out = planes * (bottleneck ? 4 : 1);
    if (bottleneck) {
      conv1_ = register_module("conv1", Conv(inplanes, planes, 1, 1, 0));
      bn1_ = register_module("bn1", Norm(32, planes));
      conv2_ = register_module("conv2", Conv(planes, planes, 3, stride, 1));
      bn2_ = register_module("bn2", Norm(32, planes));
      conv3_ = register_module("conv3", Conv(planes, out, 1, 1, 0));
      bn3_ = register_module("bn3", Norm(32, out));
    } else {
      conv1_ = register_module("conv1", Conv(inplanes, planes, 3, stride, 1));
      bn1_ = register_module("bn1", Norm(32, planes));
      conv2_ = register_module("conv2", Conv(planes, planes, 3, 1, 1));
      bn2_ = register_module("bn2", Norm(32, planes));
    }
    if (stride != 1 || inplanes != out) {
      downsample_ = register_module(
          "downsample", nn::Sequential(Conv(inplanes, out, 1, stride, 0), Norm(32, out)));
    }
  }

  torch::Tensor forward(torch::Tensor x) {
    torch::Tensor out = torch::relu(bn1_->forward(conv1_->forward(x)));
    out = bn2_->forward(conv2_->forward(out));
    if (bottleneck_) out = bn3_->forward(conv3_->forward(torch::relu(out)));
    torch::Tensor identity = downsample_ ? downsample_->forward(x) : x;
    return torch::relu(out + identity);
  }

 private:
  bool bottleneck_;
  DPConv2d conv1_{nullptr}, conv2_{nullptr}, conv3_{nullptr};
  DPGroupNorm bn1_{nullptr}, bn2_{nullptr}, bn3_{nullptr};
  nn::Sequential downsample_{nullptr};
};

class ResNetImpl : public ClassifierImpl {
 public:
  ResNetImpl(const ModelSpec& spec, const int (&blocks)[4], bool bottleneck) {
    conv1_ = register_module("conv1", Conv(spec.input.channels, 64, 7, 2, 3));
    bn1_ = register_module("bn1", Norm(32, 64));
    int64_t inplanes = 64;
    const int64_t planes[] = {64, 128, 256, 512};
    for (int i = 0; i < 4; ++i) {
      nn::Sequential layer;
      for (int b = 0; b < blocks[i]; ++b) {
        const int64_t stride = (i > 0 && b == 0) ? 2 : 1;
        layer->push_back(std::make_shared<ResBlockImpl>(inplanes, planes[i], stride, bottleneck));
        inplanes = planes[i] * (bottleneck ? 4 : 1);
      }
      layers_[i] = register_module("layer" + std::to_string(i + 1), layer);
    }
    fc_ = register_module("fc", DPLinear(inplanes, spec.num_outputs));
  }

  torch::Tensor Features(torch::Tensor x) override {
    x = torch::relu(bn1_->forward(conv1_->forward(x)));
    x = torch::max_pool2d(x, {3, 3}, {2, 2}, {1, 1});
    for (nn::Sequential& layer : layers_) x = layer->forward(x);
    return torch::adaptive_avg_pool2d(x, {1, 1}).flatten(1);
  }

 private:
  DPConv2d conv1_{nullptr};
  DPGroupNorm bn1_{nullptr};
  nn::Sequential layers_[4] = {nullptr, nullptr, nullptr, nullptr};
};

// PyTorch's default bound for Linear/Conv biases and Linear weights:
// 1/sqrt(fan_in).
double FanInBound(const torch::Tensor& weight) {
  const int64_t fan_in = weight.numel() / weight.size(0);
  return fan_in > 0 ? 1.0 / std::sqrt(static_cast<double>(fan_in)) : 0.0;
}

}  // namespace

std::shared_ptr<ModelImpl> MakeSmallCnn(const ModelSpec& spec) {
  return std::make_shared<SmallCnnImpl>(spec, std::vector<int64_t>{16, 32, 64, 64});
}

std::shared_ptr<ModelImpl> MakeTinyCnn(const ModelSpec& spec) {
  return std::make_shared<SmallCnnImpl>(spec, std::vector<int64_t>{8, 16, 32, 32});
}

std::shared_ptr<ModelImpl> MakeMediumCnn(const ModelSpec& spec) {
  return std::make_shared<SmallCnnImpl>(spec, std::vector<int64_t>{32, 64, 128, 256, 256});
}

std::shared_ptr<ModelImpl> MakeResNet9(const ModelSpec& spec) {
  return std::make_shared<ResNet9Impl>(spec);
}

std::shared_ptr<ModelImpl> MakeResNet(const ModelSpec& spec, int depth) {
  static constexpr int kResNet18[4] = {2, 2, 2, 2};
  static constexpr int kResNet50[4] = {3, 4, 6, 3};
  if (depth == 50) return std::make_shared<ResNetImpl>(spec, kResNet50, true);
  return std::make_shared<ResNetImpl>(spec, kResNet18, false);
}

void InitWeights(torch::nn::Module& model, uint64_t seed) {
  torch::NoGradGuard no_grad;
  at::Generator gen = at::detail::createCPUGenerator(seed);
  for (const std::shared_ptr<nn::Module>& m : model.modules(/*include_self=*/true)) {
    if (auto* conv = m->as<DPConv2d>()) {
      const torch::Tensor& w = conv->weight;
      const int64_t fan_out = w.size(0) * (w.numel() / (w.size(0) * w.size(1)));
      const double std = std::sqrt(2.0 / static_cast<double>(fan_out));
      w.normal_(0.0, std, gen);
      if (conv->bias.defined()) conv->bias.uniform_(-FanInBound(w), FanInBound(w), gen);
    } else if (auto* linear = m->as<DPLinear>()) {
      const double bound = FanInBound(linear->weight);
      linear->weight.uniform_(-bound, bound, gen);
      if (linear->bias.defined()) linear->bias.uniform_(-bound, bound, gen);
    } else if (auto* norm = m->as<DPGroupNorm>()) {
      if (norm->weight.defined()) norm->weight.fill_(1.0);
      if (norm->bias.defined()) norm->bias.zero_();
    } else if (auto* embedding = m->as<DPEmbedding>()) {
      embedding->weight.normal_(0.0, 1.0, gen);
      const auto& padding = embedding->options.padding_idx();
      if (padding) embedding->weight[*padding].zero_();
    }
  }
}

}  // namespace models_internal

absl::StatusOr<torch::Tensor> ClassifierFeatures(ModelImpl& model, const torch::Tensor& images) {
  auto* classifier = dynamic_cast<models_internal::ClassifierImpl*>(&model);
  if (classifier == nullptr) {
    return absl::InvalidArgumentError("the model is not a classifier: it has no feature layer");
  }
  return classifier->Features(images);
}
}  // namespace fl
