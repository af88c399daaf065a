// Sampling of flctl synth (torch): the diffusion job's UNet and its frozen autoencoder, loaded
// from their exports and cards, DDIM with classifier-free guidance on the CPU.
#include <algorithm>
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

}  // namespace fl
