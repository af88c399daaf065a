#include "models/spec.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace fl {

WorkloadKind KindOf(const JobSpec& spec) {
  switch (spec.workload_case()) {
    case JobSpec::kAutoencoder:
      return WorkloadKind::kAutoencoder;
    case JobSpec::kDiffusion:
      return WorkloadKind::kDiffusion;
    case JobSpec::kClassification:
    case JobSpec::WORKLOAD_NOT_SET:
      break;
  }
  return WorkloadKind::kClassification;
}

std::string WorkloadName(WorkloadKind kind) {
  switch (kind) {
    case WorkloadKind::kAutoencoder:
      return "autoencoder";
    case WorkloadKind::kDiffusion:
      return "diffusion";
    case WorkloadKind::kClassification:
      break;
  }
  return "classification";
}

std::string WorkloadName(const JobSpec& spec) { return WorkloadName(KindOf(spec)); }

std::vector<std::string> WorkloadNames() {
  return {WorkloadName(WorkloadKind::kClassification), WorkloadName(WorkloadKind::kAutoencoder),
          WorkloadName(WorkloadKind::kDiffusion)};
}

int ChannelsOf(const JobSpec& spec) {
  return spec.in_channels() > 0 ? static_cast<int>(spec.in_channels()) : 1;
}

namespace {

template <typename Repeated>
std::vector<int> WidthsOr(const Repeated& widths, std::vector<int> fallback) {
  if (widths.empty()) return fallback;
  return std::vector<int>(widths.begin(), widths.end());
}

ModelSpec AutoencoderSpec(const JobSpec& spec) {
  const AutoencoderWorkload& ae = spec.autoencoder();
  const int side = static_cast<int>(spec.image_size());
  if (ae.variational()) {
    return KlVaeSpec(ChannelsOf(spec), side, WidthsOr(ae.widths(), {64, 128, 256, 512}),
                     ae.latent_channels() > 0 ? static_cast<int>(ae.latent_channels()) : 8);
  }
  ModelSpec model = ClassifierSpec("autoencoder", ChannelsOf(spec), side, 0);
  model.widths = WidthsOr(ae.widths(), {16, 32});
  model.latent_channels = ae.latent_channels() > 0 ? static_cast<int>(ae.latent_channels()) : 4;
  return model;
}

absl::StatusOr<ModelSpec> DiffusionSpec(const JobSpec& spec) {
  const DiffusionWorkload& d = spec.diffusion();
  if (d.latent_channels() == 0 || d.latent_size() == 0) {
    return absl::InvalidArgumentError(
        "a diffusion job needs diffusion.latent_channels and diffusion.latent_size (its "
        "autoencoder's latent shape)");
  }
  return LatentUNetSpec(static_cast<int>(d.latent_channels()), static_cast<int>(d.latent_size()),
                        WidthsOr(d.widths(), {32, 64}),
                        d.embedding_width() > 0 ? static_cast<int>(d.embedding_width()) : 128,
                        spec.labels_size());
}

}  // namespace

absl::StatusOr<ModelSpec> ModelSpecFor(const JobSpec& spec) {
  if (spec.image_size() == 0) return absl::InvalidArgumentError("job image_size is 0");
  switch (KindOf(spec)) {
    case WorkloadKind::kClassification:
      break;
    case WorkloadKind::kAutoencoder:
      return AutoencoderSpec(spec);
    case WorkloadKind::kDiffusion:
      return DiffusionSpec(spec);
  }
  return ClassifierSpec(spec.model(), ChannelsOf(spec), static_cast<int>(spec.image_size()),
                        spec.labels_size());
}

double KlWeightFor(const JobSpec& spec) {
  return spec.autoencoder().has_kl_weight() ? spec.autoencoder().kl_weight() : 1e-6;
}

DiffusionProcess DiffusionProcessFor(const JobSpec& spec) {
  const DiffusionWorkload& d = spec.diffusion();
  DiffusionProcess p;
  if (d.timesteps() > 0) p.timesteps = static_cast<int>(d.timesteps());
  if (d.beta_start() > 0) p.beta_start = d.beta_start();
  if (d.beta_end() > 0) p.beta_end = d.beta_end();
  if (d.has_condition_dropout()) p.condition_dropout = d.condition_dropout();
  p.sample_steps = d.sample_steps() > 0 ? static_cast<int>(d.sample_steps())
                                        : std::min(p.sample_steps, p.timesteps);
  if (d.has_eta()) p.eta = d.eta();
  if (d.has_guidance_scale()) p.guidance_scale = d.guidance_scale();
  return p;
}

absl::StatusOr<ModelSpec> FrozenAutoencoderSpec(const JobSpec& diffusion,
                                                const JobSpec& autoencoder) {
  const std::string what = absl::StrCat(
      "autoencoder_job '", diffusion.diffusion().autoencoder_job(), "' (", autoencoder.name(), ")");
  if (KindOf(autoencoder) != WorkloadKind::kAutoencoder ||
      !autoencoder.autoencoder().variational()) {
    return absl::FailedPreconditionError(
        absl::StrCat(what, " is not a variational autoencoder job"));
  }
  if (autoencoder.image_size() != diffusion.image_size() ||
      ChannelsOf(autoencoder) != ChannelsOf(diffusion)) {
    return absl::FailedPreconditionError(absl::StrCat(
        what, " trains on ", ChannelsOf(autoencoder), " x ", autoencoder.image_size(),
        " px images, the diffusion job on ", ChannelsOf(diffusion), " x ", diffusion.image_size()));
  }
  ASSIGN_OR_RETURN(ModelSpec vae, ModelSpecFor(autoencoder));
  const int side = vae.input.square_side() >> (vae.widths.size() - 1);
  const DiffusionWorkload& d = diffusion.diffusion();
  if (static_cast<int>(d.latent_channels()) != vae.latent_channels ||
      static_cast<int>(d.latent_size()) != side) {
    return absl::FailedPreconditionError(
        absl::StrCat(what, " gives latents of ", vae.latent_channels, " x ", side,
                     "^2, the job "
                     "states ",
                     d.latent_channels(), " x ", d.latent_size(), "^2"));
  }
  return vae;
}

ModelSpec ClassifierSpec(const std::string& name, int channels, int side, int outputs) {
  ModelSpec model;
  model.name = name;
  model.input.channels = channels;
  model.input.spatial = {side, side};
  model.num_outputs = outputs;
  return model;
}

ModelSpec KlVaeSpec(int channels, int side, std::vector<int> widths, int latent_channels) {
  ModelSpec model = ClassifierSpec("kl_vae", channels, side, 0);
  model.widths = std::move(widths);
  model.latent_channels = latent_channels;
  return model;
}

ModelSpec LatentUNetSpec(int latent_channels, int latent_side, std::vector<int> widths,
                         int embedding_width, int findings) {
  ModelSpec model = ClassifierSpec("latent_unet", latent_channels, latent_side, 0);
  model.widths = std::move(widths);
  model.embedding_width = embedding_width;
  model.num_findings = findings;
  return model;
}

std::optional<std::vector<std::string>> TrainLabelsFor(
    const JobSpec& spec, const std::vector<std::string>& site_labels) {
  const WorkloadKind kind = KindOf(spec);
  if (kind == WorkloadKind::kAutoencoder) return std::vector<std::string>{};
  std::vector<std::string> out;
  for (const std::string& label : spec.labels()) {
    if (std::find(site_labels.begin(), site_labels.end(), label) != site_labels.end()) {
      out.push_back(label);
    }
  }
  if (out.empty() && kind == WorkloadKind::kClassification) return std::nullopt;
  return out;
}

bool HasLabelHead(const JobSpec& spec) { return KindOf(spec) == WorkloadKind::kClassification; }

Selection SelectionFor(const JobSpec& spec) {
  switch (KindOf(spec)) {
    case WorkloadKind::kClassification:
      return {"mean_auroc", true};
    case WorkloadKind::kAutoencoder:
      return {"l1", false};
    case WorkloadKind::kDiffusion:
      return {"eps_l1", false};
  }
  return {"mean_auroc", true};
}

}  // namespace fl
