#include "models/spec.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"

namespace fl {

WorkloadKind KindOf(const JobSpec& spec) {
  switch (spec.workload_case()) {
    case JobSpec::kAutoencoder:
      return WorkloadKind::kAutoencoder;
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
    case WorkloadKind::kClassification:
      break;
  }
  return "classification";
}

std::string WorkloadName(const JobSpec& spec) { return WorkloadName(KindOf(spec)); }

std::vector<std::string> WorkloadNames() {
  return {WorkloadName(WorkloadKind::kClassification), WorkloadName(WorkloadKind::kAutoencoder)};
}

absl::StatusOr<ModelSpec> ModelSpecFor(const JobSpec& spec) {
  if (spec.image_size() == 0) return absl::InvalidArgumentError("job image_size is 0");
  const int channels = spec.in_channels() > 0 ? static_cast<int>(spec.in_channels()) : 1;
  ModelSpec model = ClassifierSpec(spec.model(), channels, static_cast<int>(spec.image_size()),
                                   spec.labels_size());
  switch (KindOf(spec)) {
    case WorkloadKind::kClassification:
      break;
    case WorkloadKind::kAutoencoder: {
      const AutoencoderWorkload& ae = spec.autoencoder();
      model.name = "autoencoder";
      model.num_outputs = 0;
      model.widths.assign(ae.widths().begin(), ae.widths().end());
      if (model.widths.empty()) model.widths = {16, 32};
      model.latent_channels = ae.latent_channels() > 0 ? static_cast<int>(ae.latent_channels()) : 4;
      break;
    }
  }
  return model;
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
  if (!HasLabelHead(spec)) return std::vector<std::string>{};
  std::vector<std::string> out;
  for (const std::string& label : spec.labels()) {
    if (std::find(site_labels.begin(), site_labels.end(), label) != site_labels.end()) {
      out.push_back(label);
    }
  }
  if (out.empty()) return std::nullopt;
  return out;
}

bool HasLabelHead(const JobSpec& spec) { return KindOf(spec) == WorkloadKind::kClassification; }

Selection SelectionFor(const JobSpec& spec) {
  switch (KindOf(spec)) {
    case WorkloadKind::kClassification:
      return {"mean_auroc", true};
    case WorkloadKind::kAutoencoder:
      return {"l1", false};
  }
  return {"mean_auroc", true};
}

}  // namespace fl
