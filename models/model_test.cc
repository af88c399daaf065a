#include "models/model.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <set>
#include <string>

namespace fl {
namespace {

ModelSpec Spec(const std::string& name, int in_channels = 1, int outputs = 8) {
  return ClassifierSpec(name, in_channels, 64, outputs);
}

std::shared_ptr<ModelImpl> MustCreate(const ModelSpec& spec, uint64_t seed) {
  auto model = CreateModel(spec, seed);
  EXPECT_TRUE(model.ok()) << model.status();
  return model.ok() ? *model : nullptr;
}

bool SameWeights(const TensorList& a, const TensorList& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i].name != b[i].name || a[i].shape != b[i].shape || a[i].data != b[i].data) return false;
  }
  return true;
}

const NamedTensor* Find(const TensorList& list, const std::string& name) {
  for (const NamedTensor& t : list) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

TEST(ModelRegistryTest, KnowsAllNames) {
  std::vector<std::string> names = ModelNames();
  std::set<std::string> got(names.begin(), names.end());
  EXPECT_EQ(got, (std::set<std::string>{"tinycnn", "smallcnn", "mediumcnn", "resnet9", "resnet18",
                                        "resnet50", "autoencoder", "kl_vae", "latent_unet"}));
}

TEST(ModelRegistryTest, RefusesUnknownNameAndBadSpecs) {
  auto unknown = CreateModel(Spec("vgg16"), 1);
  ASSERT_FALSE(unknown.ok());
  EXPECT_NE(std::string(unknown.status().message()).find("resnet18"), std::string::npos);
  EXPECT_FALSE(CreateModel(Spec("smallcnn", 0), 1).ok());
  EXPECT_FALSE(CreateModel(Spec("smallcnn", 1, 0), 1).ok());
  ModelSpec tiny = Spec("resnet18");
  tiny.input.spatial = {16, 16};
  EXPECT_FALSE(CreateModel(tiny, 1).ok());
}

class EveryModelTest : public ::testing::TestWithParam<std::string> {};

TEST_P(EveryModelTest, OutputShapeAndHead) {
  for (int channels : {1, 3}) {
    auto model = MustCreate(Spec(GetParam(), channels, 5), 3);
    ASSERT_NE(model, nullptr);
    model->eval();
    torch::NoGradGuard no_grad;
    torch::Tensor out = model->forward(torch::randn({2, channels, 64, 64}));
    EXPECT_EQ(out.sizes(), (std::vector<int64_t>{2, 5}));
    EXPECT_TRUE(torch::isfinite(out).all().item<bool>());
    EXPECT_EQ(model->head_prefix(), "fc.");
    TensorList w = ExtractWeights(*model);
    const NamedTensor* head = Find(w, "fc.weight");
    ASSERT_NE(head, nullptr);
    EXPECT_EQ(head->shape.at(0), 5);
    ASSERT_NE(Find(w, "fc.bias"), nullptr);
  }
}

TEST_P(EveryModelTest, InitIsDeterministicBySeedOnly) {
  torch::manual_seed(1);
  TensorList a = ExtractWeights(*MustCreate(Spec(GetParam()), 11));
  torch::manual_seed(2);  // the global RNG must not matter
  TensorList b = ExtractWeights(*MustCreate(Spec(GetParam()), 11));
  TensorList c = ExtractWeights(*MustCreate(Spec(GetParam()), 12));
  EXPECT_TRUE(SameWeights(a, b));
  EXPECT_FALSE(SameWeights(a, c));
}

TEST_P(EveryModelTest, ExtractLoadRoundTrip) {
  auto source = MustCreate(Spec(GetParam()), 1);
  auto target = MustCreate(Spec(GetParam()), 2);
  TensorList weights = ExtractWeights(*source);
  ASSERT_TRUE(LoadWeights(*target, weights).ok());
  EXPECT_TRUE(SameWeights(ExtractWeights(*target), weights));
  source->eval();
  target->eval();
  torch::NoGradGuard no_grad;
  torch::Tensor x = torch::randn({1, 1, 64, 64});
  EXPECT_TRUE(torch::equal(source->forward(x), target->forward(x)));
}

INSTANTIATE_TEST_SUITE_P(Models, EveryModelTest,
                         ::testing::Values("tinycnn", "smallcnn", "mediumcnn", "resnet9",
                                           "resnet18", "resnet50"));

TEST(ModelNamesTest, ResNetMatchesTorchvisionNamesAndSizes) {
  // torchvision.models.resnet18() / resnet50() parameter counts (3 channels,
  // 1000 classes).
  for (auto [name, count] : {std::pair<std::string, int64_t>{"resnet18", 11689512},
                             std::pair<std::string, int64_t>{"resnet50", 25557032}}) {
    TensorList w = ExtractWeights(*MustCreate(Spec(name, 3, 1000), 1));
    int64_t total = 0;
    for (const NamedTensor& t : w) total += t.numel();
    EXPECT_EQ(total, count) << name;
    EXPECT_EQ(w.front().name, "conv1.weight");
    EXPECT_EQ(w.back().name, "fc.bias");
  }
  TensorList r18 = ExtractWeights(*MustCreate(Spec("resnet18"), 1));
  for (const char* name :
       {"bn1.weight", "layer1.0.conv1.weight", "layer1.1.bn2.bias", "layer2.0.downsample.0.weight",
        "layer2.0.downsample.1.weight", "layer4.1.conv2.weight"}) {
    EXPECT_NE(Find(r18, name), nullptr) << name;
  }
  EXPECT_EQ(Find(r18, "layer1.0.downsample.0.weight"), nullptr);
  TensorList r50 = ExtractWeights(*MustCreate(Spec("resnet50"), 1));
  ASSERT_NE(Find(r50, "layer1.0.downsample.0.weight"), nullptr);
  EXPECT_EQ(Find(r50, "layer3.5.conv3.weight")->shape, (std::vector<int64_t>{1024, 256, 1, 1}));
}

TEST(ModelNamesTest, ResNet9Names) {
  TensorList w = ExtractWeights(*MustCreate(Spec("resnet9"), 1));
  for (const char* name : {"prep.0.weight", "prep.1.weight", "layer1.0.weight", "res1.1.0.weight",
                           "res2.0.1.bias", "layer3.1.weight"}) {
    EXPECT_NE(Find(w, name), nullptr) << name;
  }
  EXPECT_EQ(Find(w, "fc.weight")->shape, (std::vector<int64_t>{8, 1024}));
}

TEST(WeightsTest, ParametersThenBuffersAsFloat) {
  torch::nn::BatchNorm2d bn(4);
  TensorList w = ExtractWeights(*bn);
  std::vector<std::string> names;
  for (const NamedTensor& t : w) names.push_back(t.name);
  EXPECT_EQ(names, (std::vector<std::string>{"weight", "bias", "running_mean", "running_var",
                                             "num_batches_tracked"}));
  EXPECT_EQ(w.back().shape, std::vector<int64_t>{});
  EXPECT_EQ(w.back().data, std::vector<float>{0.f});
}

TEST(WeightsTest, MismatchedLoadRefusedNamingTensorAndLeavesModelUnchanged) {
  auto model = MustCreate(Spec("smallcnn"), 1);
  const TensorList before = ExtractWeights(*model);
  TensorList other = ExtractWeights(*MustCreate(Spec("smallcnn"), 2));

  TensorList missing = other;
  missing.erase(missing.begin() + 1);
  TensorList extra = other;
  extra.push_back({"ghost.weight", {1}, {0.f}});
  TensorList reshaped = other;
  reshaped.back().shape = {4, 2};
  reshaped.back().data.assign(8, 0.f);
  TensorList short_data = other;
  short_data.front().data.pop_back();
  TensorList duplicated = other;
  duplicated.push_back(other.front());
  TensorList wrong_head = ExtractWeights(*MustCreate(Spec("smallcnn", 1, 3), 2));

  const std::pair<const TensorList*, std::string> cases[] = {
      {&missing, before[1].name},    {&extra, "ghost.weight"},      {&reshaped, "fc.bias"},
      {&short_data, before[0].name}, {&duplicated, before[0].name}, {&wrong_head, "fc.weight"}};
  for (const auto& [weights, mention] : cases) {
    absl::Status status = LoadWeights(*model, *weights);
    ASSERT_FALSE(status.ok()) << mention;
    EXPECT_NE(std::string(status.message()).find(mention), std::string::npos) << status;
    EXPECT_TRUE(SameWeights(ExtractWeights(*model), before)) << mention;
  }
}

TEST(SmallCnnTest, LearnsASimpleTaskQuickly) {
  auto model = MustCreate(Spec("smallcnn", 1, 1), 5);
  torch::manual_seed(0);
  // Label 1: bright square in the upper-left quadrant; label 0: in the
  // lower-right.
  torch::Tensor x = 0.1 * torch::randn({16, 1, 64, 64});
  torch::Tensor y = torch::zeros({16, 1});
  for (int i = 0; i < 16; ++i) {
    bool positive = i % 2 == 0;
    int o = positive ? 8 : 40;
    x.index_put_({i, 0, torch::indexing::Slice(o, o + 16), torch::indexing::Slice(o, o + 16)}, 1.0);
    y[i][0] = positive ? 1.0 : 0.0;
  }
  torch::optim::Adam opt(model->parameters(), torch::optim::AdamOptions(1e-2));
  float first = 0, last = 0;
  for (int step = 0; step < 30; ++step) {
    opt.zero_grad();
    torch::Tensor loss = torch::binary_cross_entropy_with_logits(model->forward(x), y);
    loss.backward();
    opt.step();
    if (step == 0) first = loss.item<float>();
    last = loss.item<float>();
  }
  EXPECT_LT(last, 0.5f * first);
}

// The autoencoder reconstructs its input's shape in [0, 1], names its tensors as PyTorch would
// (encoder.N / decoder.N of two Sequentials), is deterministic from the seed, and refuses sides
// its stages cannot halve.
TEST(ModelRegistryTest, AutoencoderShapesNamesAndRefusals) {
  ModelSpec spec = ClassifierSpec("autoencoder", 2, 32, 0);
  spec.widths = {8, 16};
  spec.latent_channels = 4;
  std::shared_ptr<ModelImpl> model = MustCreate(spec, 5);
  ASSERT_NE(model, nullptr);
  EXPECT_EQ(model->head_prefix(), "");
  torch::Tensor x = torch::rand({3, 2, 32, 32});
  torch::Tensor y = model->forward(x);
  EXPECT_EQ(y.sizes(), x.sizes());
  EXPECT_GE(y.min().item<float>(), 0.0f);
  EXPECT_LE(y.max().item<float>(), 1.0f);
  TensorList weights = ExtractWeights(*model);
  ASSERT_NE(Find(weights, "encoder.0.weight"), nullptr);
  EXPECT_EQ(Find(weights, "encoder.0.weight")->shape, (std::vector<int64_t>{8, 2, 3, 3}));
  EXPECT_EQ(Find(weights, "encoder.6.weight")->shape, (std::vector<int64_t>{4, 16, 1, 1}));
  EXPECT_NE(Find(weights, "decoder.0.weight"), nullptr);
  EXPECT_TRUE(SameWeights(weights, ExtractWeights(*MustCreate(spec, 5))));
  EXPECT_FALSE(SameWeights(weights, ExtractWeights(*MustCreate(spec, 6))));
  ModelSpec odd = spec;
  odd.input.spatial = {30, 30};
  EXPECT_FALSE(CreateModel(odd, 1).ok());
  ModelSpec no_latent = spec;
  no_latent.latent_channels = 0;
  EXPECT_FALSE(CreateModel(no_latent, 1).ok());
}

}  // namespace
}  // namespace fl
