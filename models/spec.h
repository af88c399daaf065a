// What a job trains, torch-free, for everyone who must know it without LibTorch (the
// coordinator's eligibility rule, flctl, the site's policy): the workload a JobSpec names, the
// model it builds (ModelSpec, in one place: ModelSpecFor), and which of the job's labels a site
// trains. The client's torch side of each workload is client/workload.h.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "fl/config.pb.h"

namespace fl {

// The shape of one sample as the model sees it: channels, then the spatial sides ([H, W] for a
// 2D image; [D, H, W] for a volume when 3D workloads come).
struct InputSignature {
  int channels = 1;
  std::vector<int> spatial;

  int rank() const { return static_cast<int>(spatial.size()); }
  // The side of a square 2D input, or 0 when the input is not a square image.
  int square_side() const {
    return spatial.size() == 2 && spatial[0] == spatial[1] ? spatial[0] : 0;
  }
};

// Everything the model registry (models/model.h) needs to build an architecture.
struct ModelSpec {
  std::string name;  // registry name, e.g. "resnet18" or "autoencoder"
  InputSignature input;
  int num_outputs = 0;  // classifiers: one logit per label of the job's label space
  // autoencoder: encoder widths, one stride-2 stage each; kl_vae: widths[0] at full
  // resolution, each further one a stride-2 stage; latent_unet: one width per level, likewise.
  std::vector<int> widths;
  int latent_channels = 0;  // autoencoder, kl_vae
  int embedding_width = 0;  // latent_unet: time and condition embedding width (E)
  int num_findings = 0;     // latent_unet: findings of the condition (0: unconditional)
};

enum class WorkloadKind { kClassification, kAutoencoder, kDiffusion };

// The job's workload (classification when the spec names none).
WorkloadKind KindOf(const JobSpec& spec);
// "classification", "autoencoder", "diffusion": the names of SitePolicy.workloads and of
// reports. (A variational autoencoder is an "autoencoder".)
std::string WorkloadName(WorkloadKind kind);
std::string WorkloadName(const JobSpec& spec);
// Every workload's name, for validation messages.
std::vector<std::string> WorkloadNames();

// The model the job trains (one place for every JobSpec -> ModelSpec translation).
absl::StatusOr<ModelSpec> ModelSpecFor(const JobSpec& spec);
// A classifier's spec outside a job (benchmarks, model tests, exported models' cards):
// `name` on square `side` x `side` images of `channels` channels with `outputs` logits.
ModelSpec ClassifierSpec(const std::string& name, int channels, int side, int outputs);
// The latent diffusion models' specs (models/diffusion.h): the KL-VAE on square `side` images
// of `channels` channels, and the denoiser UNet on its latents (`latent_channels` x
// `latent_side`^2) conditioned on `findings` findings.
ModelSpec KlVaeSpec(int channels, int side, std::vector<int> widths, int latent_channels);
ModelSpec LatentUNetSpec(int latent_channels, int latent_side, std::vector<int> widths,
                         int embedding_width, int findings);

// The job's image channels (in_channels, default 1).
int ChannelsOf(const JobSpec& spec);

// An autoencoder job's KL weight (AutoencoderWorkload.kl_weight, default 1e-6).
double KlWeightFor(const JobSpec& spec);

// A diffusion job's process, defaults applied (DiffusionWorkload; the one place they live).
struct DiffusionProcess {
  int timesteps = 1000;
  double beta_start = 0.002;
  double beta_end = 0.02;
  double condition_dropout = 0.5;
  int sample_steps = 250;  // at most timesteps when not set
  double eta = 1.0;
  double guidance_scale = 1.0;
};
DiffusionProcess DiffusionProcessFor(const JobSpec& spec);

// The frozen autoencoder's spec of a diffusion job: the model that `autoencoder` (the job that
// DiffusionWorkload.autoencoder_job names) trains. FAILED_PRECONDITION when that job cannot
// serve it: not a variational autoencoder, or its image size, channels or latent shape differ
// from what `diffusion` states.
absl::StatusOr<ModelSpec> FrozenAutoencoderSpec(const JobSpec& diffusion,
                                                const JobSpec& autoencoder);

// The job labels a site that declared `site_labels` trains: the classifier's labels the site
// has; nullopt when the site has nothing to train in this job. Label-free workloads (the
// autoencoder) train every site, with no labels. Diffusion trains every site, on the job's
// labels it has (possibly none: it then conditions on "unknown" for every finding).
std::optional<std::vector<std::string>> TrainLabelsFor(const JobSpec& spec,
                                                       const std::vector<std::string>& site_labels);

// Whether the workload's model has a per-label head (the classifier), so the coordinator
// averages its rows per label and head modes apply.
bool HasLabelHead(const JobSpec& spec);

// The validation figure that selects a job's best model (JobSpec.early_stopping): a round's
// pooled figure named `metric` ("mean_auroc": RoundSummary.mean_auroc; any other name: the
// RoundSummary.metrics entry of that name). Diffusion: "eps_l1", the mean absolute error of
// the predicted noise over a fixed set of timesteps (client/workload_diffusion.cc).
struct Selection {
  std::string metric;
  bool higher_is_better = true;
};
Selection SelectionFor(const JobSpec& spec);

}  // namespace fl
