// Synthetic chest radiographs ("phantoms") as DICOM files with a labels CSV, for demos and tests:
// thorax, lungs, ribs, mediastinum and heart, with eight findings drawn independently.
//
// Sides follow the radiological convention: "right" is the PATIENT's right, which in a PA view is
// the image's LEFT half (low column index); "left" findings appear in the image's right half.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace fl {

inline constexpr int kNumPhantomLabels = 8;
// The label names, in the order used by PhantomOptions::prevalence and PhantomSubject::findings.
inline constexpr std::array<const char*, kNumPhantomLabels> kPhantomLabels = {
    "cardiomegaly",     "congestion",      "effusion_right",    "effusion_left",
    "infiltrate_right", "infiltrate_left", "atelectasis_right", "atelectasis_left"};

struct PhantomOptions {
  int count = 100;        // number of images (>= 1)
  int size = 256;         // rows = columns, 32..4096
  uint64_t seed = 1;      // same seed, same pixels, labels and demographics (UIDs are fresh)
  double noise = 0.02;    // Gaussian noise sigma, as a fraction of the 12-bit range (>= 0)
  double contrast = 1.0;  // multiplies the tissue contrast (> 0): a site-shift knob
  // How much every finding changes the image, in (0, 2]: 1 is the demo's clear findings; below
  // about 0.5 they are subtle and overlap the normal variation between patients, so that a
  // model needs hundreds to thousands of images to learn them (docs/STUDY.md). Opacities'
  // density scales with it, each other finding with a power of it (tools/phantom.cc), so that
  // at one strength the findings are about equally hard to learn.
  double finding_strength = 1.0;
  // Multiplies the spread of everything that varies between patients and acquisitions, in
  // [0, 3]: body size, positioning (rotation, shift), exposure (gain, heel effect), the normal
  // heart size and height, the lung's background mottling. 0: every patient alike.
  double variation = 1.0;
  // Probability that a label written to labels.csv is flipped (0 <-> 1), in [0, 0.5): reader
  // error. The pixels show the true findings; PhantomSummary counts the flips.
  double label_noise = 0.0;
  // Probability of each finding, in kPhantomLabels order, each in [0, 1].
  std::array<double, kNumPhantomLabels> prevalence = {0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3};
  double male_fraction = 0.5;  // in [0, 1]
  int min_age = 20;            // ages drawn uniformly in [min_age, max_age], 0..120
  int max_age = 90;
  std::string site_name = "site";           // InstitutionName and patient id prefix
  std::string photometric = "MONOCHROME2";  // or "MONOCHROME1" (stored values inverted)
  // Label columns written to labels.csv (a subset of kPhantomLabels; the rest are unknown to
  // the reader). Empty means all eight.
  std::vector<std::string> labels_to_write;
};

// One image's ground truth.
struct PhantomSubject {
  std::string patient_id;
  char sex = 'M';  // 'M' or 'F'
  int age_years = 50;
  std::array<bool, kNumPhantomLabels> findings = {};
};

// What WritePhantomDataset wrote.
struct PhantomSummary {
  int images = 0;
  int patients = 0;
  int males = 0;
  std::array<int, kNumPhantomLabels> positives = {};  // images with each (true) finding
  int label_flips = 0;  // written labels that disagree with the image (label_noise)
};

// Renders one image, row-major size x size, values 0..4095, high = dense (MONOCHROME2 sense).
// The anatomy and the appearance of every finding depend only on `image_seed` (and the global
// knobs in `options`), so the same seed with different findings gives the same patient with and
// without them.
std::vector<uint16_t> RenderPhantom(const PhantomSubject& subject, const PhantomOptions& options,
                                    uint64_t image_seed);

// Checks `options` (ranges, photometric, label names); the error names the bad field.
absl::Status ValidatePhantomOptions(const PhantomOptions& options);

// Writes `out_dir`/img_NNNNNN.dcm (DX For Presentation, explicit VR little endian, 16 bits
// allocated / 12 stored, window and rescale, demographics) and `out_dir`/labels.csv keyed by SOP
// Instance UID. Creates `out_dir` if needed. Some patients get two images (a follow-up with its
// own findings). `summary`, when given, receives the counts.
absl::Status WritePhantomDataset(const PhantomOptions& options, const std::string& out_dir,
                                 PhantomSummary* summary = nullptr);

}  // namespace fl
