// Sampling of flctl synth (torch): the diffusion job's UNet and its frozen autoencoder, loaded
// from their exports and cards, DDIM with classifier-free guidance on the CPU; and the
// generator's figures of flctl synth-eval (FID, precision and recall, memorisation), in double.
#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/file_util.h"
#include "common/proto_json.h"
#include "common/safetensors.h"
#include "common/status.h"
#include "common/torch_pch.h"
#include "fl/federation.pb.h"
#include "models/diffusion.h"
#include "models/model.h"
#include "models/spec.h"
#include "tools/evaluate.h"
#include "tools/synth.h"
#include "tools/synth_eval.h"

namespace fl {
namespace {

absl::StatusOr<ModelCard> ReadCard(const std::string& model_path) {
  const std::string path = SidecarPathFor(model_path);
  ASSIGN_OR_RETURN(std::string text, ReadFileToString(path));
  ModelCard card;
  RETURN_IF_ERROR(FromJson(text, path, &card));
  return card;
}

// The job spec a card's model was built from (the fields that shape the model).
JobSpec SpecOf(const ModelCard& card) {
  JobSpec spec;
  spec.set_name(card.job_id());
  spec.set_image_size(card.input_size());
  spec.set_in_channels(card.in_channels());
  if (card.workload() == "diffusion") {
    *spec.mutable_labels() = card.labels();
    *spec.mutable_diffusion() = card.diffusion();
  } else if (card.workload() == "autoencoder") {
    *spec.mutable_autoencoder() = card.autoencoder();
  }
  return spec;
}

// The model of `spec` with the weights of `path`, in eval mode, as a `Model`.
template <typename Model>
absl::StatusOr<std::shared_ptr<Model>> Load(const std::string& path, const ModelSpec& spec) {
  ASSIGN_OR_RETURN(TensorList weights, ReadSafetensors(path));
  ASSIGN_OR_RETURN(std::shared_ptr<ModelImpl> model, CreateModel(spec, /*seed=*/0));
  RETURN_IF_ERROR(Annotate(LoadWeights(*model, weights),
                           absl::StrCat(path, " does not match its card (", spec.name, ")")));
  auto typed = std::dynamic_pointer_cast<Model>(model);
  if (typed == nullptr) return absl::InternalError(absl::StrCat(spec.name, ": unexpected type"));
  typed->eval();
  return typed;
}

}  // namespace

absl::StatusOr<SyntheticSet> SampleSyntheticSet(const SynthOptions& o) {
  if (o.per_class < 1 || o.batch_size < 1) {
    return absl::InvalidArgumentError("--per-class and --batch-size must be at least 1");
  }
  ASSIGN_OR_RETURN(ModelCard card, ReadCard(o.model_path));
  ASSIGN_OR_RETURN(ModelCard ae_card, ReadCard(o.autoencoder_path));
  if (card.workload() != "diffusion") {
    return absl::InvalidArgumentError(absl::StrCat(o.model_path, " is a ", card.workload(),
                                                   " model, not a diffusion job's export"));
  }
  if (ae_card.job_id() != card.diffusion().autoencoder_job()) {
    return absl::InvalidArgumentError(
        absl::StrCat(o.model_path, " denoises the latents of autoencoder job ",
                     card.diffusion().autoencoder_job(), "; ", o.autoencoder_path,
                     " is the export of job ", ae_card.job_id()));
  }
  const JobSpec spec = SpecOf(card), ae_spec = SpecOf(ae_card);
  ASSIGN_OR_RETURN(ModelSpec vae_spec, FrozenAutoencoderSpec(spec, ae_spec));
  ASSIGN_OR_RETURN(ModelSpec unet_spec, ModelSpecFor(spec));
  ASSIGN_OR_RETURN(std::shared_ptr<LatentUNetImpl> unet,
                   Load<LatentUNetImpl>(o.model_path, unet_spec));
  ASSIGN_OR_RETURN(std::shared_ptr<KlVaeImpl> vae, Load<KlVaeImpl>(o.autoencoder_path, vae_spec));

  const DiffusionProcess process = DiffusionProcessFor(spec);
  DdimOptions ddim;
  ddim.steps = o.steps.value_or(process.sample_steps);
  ddim.eta = o.eta.value_or(process.eta);
  ddim.guidance_scale = o.guidance.value_or(process.guidance_scale);
  if (ddim.steps < 1 || ddim.steps > process.timesteps || ddim.eta < 0 || ddim.eta > 1 ||
      ddim.guidance_scale < 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "--steps must be in 1..%d, --eta in [0, 1], --guidance at least 0", process.timesteps));
  }
  const NoiseSchedule schedule =
      ScaledLinearSchedule(process.timesteps, process.beta_start, process.beta_end);

  SyntheticSet set;
  set.labels.assign(card.labels().begin(), card.labels().end());
  set.size = static_cast<int>(card.input_size());
  set.classes = SynthClasses(set.labels);
  set.provenance = absl::StrFormat(
      "Synthetic image sampled by flctl synth from the latent diffusion model of federated job "
      "%s, decoded by the autoencoder of job %s; DDIM %d steps, eta %g, guidance %g, seed %d",
      card.job_id(), ae_card.job_id(), ddim.steps, ddim.eta, ddim.guidance_scale, o.seed);
  const int64_t findings = static_cast<int64_t>(set.labels.size());
  const int64_t channels = unet_spec.input.channels, side = unet_spec.input.square_side();
  uint64_t batch_index = 0;
  try {
    torch::NoGradGuard no_grad;
    for (size_t c = 0; c < set.classes.size(); ++c) {
      const SynthClass& cls = set.classes[c];
      for (int done = 0; done < o.per_class;) {
        const int64_t n = std::min(o.batch_size, o.per_class - done);
        torch::Tensor condition;
        if (findings > 0) {
          condition = torch::tensor(std::vector<int64_t>(cls.states.begin(), cls.states.end()),
                                    torch::kInt64)
                          .unsqueeze(0)
                          .expand({n, findings})
                          .contiguous();
        }
        ddim.seed = o.seed * 1000003 + batch_index++;
        ASSIGN_OR_RETURN(torch::Tensor z,
                         DdimSample(*unet, schedule, condition, {n, channels, side, side}, ddim));
        torch::Tensor images =
            vae->Decode(z).mean(1).clamp(0, 1).to(torch::kFloat32).contiguous();  // [n, S, S]
        const float* p = images.data_ptr<float>();
        const int64_t pixels = int64_t{set.size} * set.size;
        for (int64_t i = 0; i < n; ++i) {
          set.images.push_back({c, std::vector<float>(p + i * pixels, p + (i + 1) * pixels)});
        }
        done += static_cast<int>(n);
      }
    }
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("sampling failed: ", e.what_without_backtrace()));
  }
  return set;
}

namespace {

torch::Tensor AsDouble(const FeatureMatrix& m) {
  return torch::from_blob(const_cast<float*>(m.data.data()), {m.rows, m.cols}, torch::kFloat32)
      .to(torch::kFloat64);
}

// The unbiased covariance of the rows of x [n, d].
torch::Tensor Covariance(const torch::Tensor& x) {
  const torch::Tensor centred = x - x.mean(0, /*keepdim=*/true);
  return centred.t().matmul(centred) / static_cast<double>(x.size(0) - 1);
}

// The square root of a symmetric positive semi-definite matrix (negative eigenvalues of
// rounding clamped to 0).
torch::Tensor SqrtPsd(const torch::Tensor& s) {
  auto [values, vectors] = at::linalg_eigh(s);
  return vectors.matmul(torch::diag(values.clamp_min(0).sqrt())).matmul(vectors.t());
}

// Per row of `d` (distances [n, m]), its k-th smallest value (k = 0: the smallest).
torch::Tensor KthSmallest(const torch::Tensor& d, int64_t k) {
  return std::get<0>(d.topk(k + 1, /*dim=*/1, /*largest=*/false)).select(1, k);
}

// The median, the mean of the two middle values for an even count.
double Median(const torch::Tensor& v) { return v.quantile(0.5).item<double>(); }

}  // namespace

double FrechetDistance(const FeatureMatrix& a, const FeatureMatrix& b) {
  const torch::Tensor x = AsDouble(a), y = AsDouble(b);
  const torch::Tensor sa = Covariance(x), sb = Covariance(y);
  const torch::Tensor root = SqrtPsd(sa);
  torch::Tensor m = root.matmul(sb).matmul(root);
  m = (m + m.t()) / 2;
  const double trace_sqrt = at::linalg_eigvalsh(m).clamp_min(0).sqrt().sum().item<double>();
  const double mean_term = (x.mean(0) - y.mean(0)).pow(2).sum().item<double>();
  return mean_term + sa.trace().item<double>() + sb.trace().item<double>() - 2 * trace_sqrt;
}

PrecisionRecall ImprovedPrecisionRecall(const FeatureMatrix& real, const FeatureMatrix& synthetic,
                                        int k) {
  const torch::Tensor r = AsDouble(real), s = AsDouble(synthetic);
  // Column 0 of a set's sorted distances to itself is the row itself (distance 0).
  const torch::Tensor real_radii = KthSmallest(at::cdist(r, r), k);
  const torch::Tensor synthetic_radii = KthSmallest(at::cdist(s, s), k);
  const torch::Tensor rs = at::cdist(r, s);  // [real, synthetic]
  PrecisionRecall out;
  out.precision = (rs <= real_radii.unsqueeze(1)).any(0).to(torch::kFloat64).mean().item<double>();
  out.recall =
      (rs <= synthetic_radii.unsqueeze(0)).any(1).to(torch::kFloat64).mean().item<double>();
  return out;
}

Memorisation MemorisationCheck(const FeatureMatrix& real, const FeatureMatrix& synthetic,
                               int closest) {
  const torch::Tensor r = AsDouble(real), s = AsDouble(synthetic);
  const double scale = std::sqrt(static_cast<double>(real.cols));
  auto [nearest, which] = (at::cdist(s, r) / scale).min(1);
  torch::Tensor rr = at::cdist(r, r) / scale;
  rr.fill_diagonal_(std::numeric_limits<double>::infinity());
  Memorisation out;
  out.synthetic_to_real = Median(nearest);
  out.real_to_real = Median(std::get<0>(rr.min(1)));
  const torch::Tensor order = nearest.argsort();
  for (int64_t i = 0; i < std::min<int64_t>(closest, order.size(0)); ++i) {
    const int64_t row = order[i].item<int64_t>();
    out.closest.push_back({row, which[row].item<int64_t>(), nearest[row].item<double>()});
  }
  return out;
}

}  // namespace fl
