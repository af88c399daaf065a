// flctl synth: synthetic images from a federated latent diffusion model (a diffusion job's
// export and its autoencoder job's export), written as DICOM Secondary Capture objects that no
// one can mistake for a patient's image, with a labels CSV of their conditions, so that the set
// loads in fl-client and flctl evaluate like any site's data. The header is torch-free; sampling
// runs on the CPU inside synth.cc, writing in synth_write.cc.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace fl {

struct SynthOptions {
  std::string model_path;        // the diffusion job's MODEL.safetensors (card: MODEL.json)
  std::string autoencoder_path;  // its autoencoder job's export (card beside it)
  std::string out_dir;
  int per_class = 10;  // images per class (SynthClasses)
  // Unset: the model card's (DiffusionWorkload: guidance_scale, sample_steps, eta).
  std::optional<double> guidance;
  std::optional<int> steps;
  std::optional<double> eta;
  uint64_t seed = 1;    // the same seed and models give the same pixels (UIDs are fresh)
  int batch_size = 16;  // images sampled together
};

// One class of images to sample: a state per finding of the model (1 positive, 0 negative).
struct SynthClass {
  std::string name;  // "no_finding", a finding's name, or "unconditional"
  std::vector<int> states;
};
// The classes of a model conditioned on `labels`: "no_finding" (all negative), then each
// finding alone positive; a model without labels has one class, "unconditional".
std::vector<SynthClass> SynthClasses(const std::vector<std::string>& labels);

// Sampled images, before they are written.
struct SyntheticSet {
  std::vector<std::string> labels;  // the model's findings (the CSV's columns)
  int size = 0;                     // rows = columns
  struct Image {
    size_t cls;                 // index into classes
    std::vector<float> pixels;  // size x size, in [0, 1]
  };
  std::vector<SynthClass> classes;
  std::vector<Image> images;
  // How they were made, for DerivationDescription: jobs, sampler, guidance and seed.
  std::string provenance;
};

// Loads both models (each checked against its card and against the other: latent shape, image
// size), samples per_class images of every class with DDIM and classifier-free guidance, and
// decodes them with the autoencoder. Does not write.
absl::StatusOr<SyntheticSet> SampleSyntheticSet(const SynthOptions& options);

// Writes `set` to `out_dir` (created): synth_NNNNNN.dcm, each a Secondary Capture Image
// (ConversionType SYN, ImageType DERIVED\SECONDARY, "SYNTHETIC" in the series description and
// image comments, 16 bits allocated / 12 stored MONOCHROME2, one new study and series, patient
// "SYNTHETIC", no identifier or demographic of any training patient), and labels.csv keyed by
// SOP Instance UID with 1/0 per finding of the image's condition.
absl::Status WriteSyntheticSet(const SyntheticSet& set, const std::string& out_dir);

}  // namespace fl
