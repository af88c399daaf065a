// The autoencoder workload's model (models/classifiers.h MakeAutoencoder).
#include <numeric>

#include "absl/strings/str_cat.h"
#include "common/torch_pch.h"
#include "models/classifiers.h"
#include "models/dp_layers.h"

namespace fl {
namespace models_internal {
namespace {

namespace nn = torch::nn;

// The largest group count of at most 8 that divides `channels`.
int64_t Groups(int64_t channels) { return std::gcd<int64_t>(channels, 8); }

DPConv2d Conv(int64_t in, int64_t out, int64_t kernel, int64_t stride) {
  return DPConv2d(DPConv2dOptions(in, out, kernel).stride(stride).padding(kernel / 2));
}

// Nearest-neighbour upsampling by 2 as a module, so that the decoder is one Sequential.
class Upsample2Impl : public nn::Module {
 public:
  torch::Tensor forward(const torch::Tensor& x) {
    return nn::functional::interpolate(x, nn::functional::InterpolateFuncOptions()
                                              .scale_factor(std::vector<double>{2.0, 2.0})
                                              .mode(torch::kNearest));
  }
};
TORCH_MODULE(Upsample2);

class AutoencoderImpl : public ModelImpl {
 public:
  explicit AutoencoderImpl(const ModelSpec& spec) {
    int64_t in = spec.input.channels;
    for (int w : spec.widths) {
      encoder_->push_back(Conv(in, w, 3, 2));
      encoder_->push_back(DPGroupNorm(nn::GroupNormOptions(Groups(w), w)));
      encoder_->push_back(nn::SiLU());
      in = w;
    }
    encoder_->push_back(Conv(in, spec.latent_channels, 1, 1));
    decoder_->push_back(Conv(spec.latent_channels, in, 3, 1));
    for (size_t k = spec.widths.size(); k-- > 0;) {
      const int64_t out = k > 0 ? spec.widths[k - 1] : spec.widths[0];
      decoder_->push_back(Upsample2());
      decoder_->push_back(Conv(in, out, 3, 1));
      decoder_->push_back(DPGroupNorm(nn::GroupNormOptions(Groups(out), out)));
      decoder_->push_back(nn::SiLU());
      in = out;
    }
    decoder_->push_back(Conv(in, spec.input.channels, 3, 1));
    register_module("encoder", encoder_);
    register_module("decoder", decoder_);
  }

  torch::Tensor forward(torch::Tensor x) override {
    return torch::sigmoid(decoder_->forward(encoder_->forward(x)));
  }

 private:
  nn::Sequential encoder_;
  nn::Sequential decoder_;
};

}  // namespace

absl::Status CheckAutoencoderSpec(const ModelSpec& spec) {
  if (spec.widths.empty() || spec.widths.size() > 6) {
    return absl::InvalidArgumentError(
        absl::StrCat("model ", spec.name, ": needs 1 to 6 widths, got ", spec.widths.size()));
  }
  for (int w : spec.widths) {
    if (w < 1) return absl::InvalidArgumentError(absl::StrCat("model ", spec.name, ": width ", w));
  }
  if (spec.latent_channels < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("model ", spec.name, ": latent_channels must be >= 1"));
  }
  const int factor = 1 << spec.widths.size();
  if (spec.input.square_side() % factor != 0) {
    return absl::InvalidArgumentError(absl::StrCat("model ", spec.name, ": the image side ",
                                                   spec.input.square_side(), " does not divide by ",
                                                   factor));
  }
  return absl::OkStatus();
}

std::shared_ptr<ModelImpl> MakeAutoencoder(const ModelSpec& spec) {
  return std::make_shared<AutoencoderImpl>(spec);
}

}  // namespace models_internal
}  // namespace fl
