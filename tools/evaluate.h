// Evaluation of an exported global model (safetensors + JSON sidecar, as `flctl export` writes
// them) on a labelled DICOM folder, run where the data lies: AUROC per label, and accuracy and
// statistical parity difference across sex and age groups. Only aggregate numbers come out.
// The header is torch-free; inference runs on the CPU inside evaluate.cc.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/tensor.h"

namespace fl {

// What the sidecar (model.json) says about the weights.
struct ModelSidecar {
  std::string architecture;         // registry name, e.g. "smallcnn"
  std::vector<std::string> labels;  // one output (logit) per label, in this order
  int input_size = 0;
  int in_channels = 1;
  std::string head_mode = "label";  // "label" or "site"
};

// Parses the sidecar JSON; errors name the file and the missing or malformed field.
absl::StatusOr<ModelSidecar> ReadModelSidecar(const std::string& path);

// The sidecar beside a weights file: "<dir>/<stem>.json" for "<dir>/<stem>.safetensors".
std::string SidecarPathFor(const std::string& model_path);

// Freshly initialised weights of the sidecar's architecture (deterministic from `seed`), with
// the names and shapes an export of a job with that sidecar carries. For tests and baselines.
absl::StatusOr<TensorList> InitialWeights(const ModelSidecar& sidecar, uint64_t seed);

// One evaluated image: its demographics, and per evaluated label its probability and target.
struct Prediction {
  std::string key;  // SOP Instance UID
  std::string patient_id;
  std::string sex;             // "M", "F" or "" (unknown)
  int age_years = -1;          // -1: unknown
  std::vector<float> probs;    // one per evaluated label
  std::vector<float> targets;  // 1, 0 or NaN (unknown), one per evaluated label
};

struct LabelResult {
  std::string label;
  double auroc = 0;  // NaN when the data lacks one of the classes
  int64_t positives = 0;
  int64_t negatives = 0;
};

// One group of one attribute ("sex": "M"/"F"; "age": a band such as "<40", "40-59", "60+").
struct GroupResult {
  std::string attribute;
  std::string group;
  int64_t n = 0;  // images in the group
  // Mean over the evaluated labels (those with a known target in the group) of the share of
  // the group's known targets predicted right at the threshold (positive when prob >= it).
  // NaN when the group has no known target.
  double accuracy = 0;
  // accuracy minus the n-weighted mean accuracy of the attribute's other groups (NaN when no
  // other group of the attribute has an accuracy).
  double spd = 0;
};

struct EvaluationReport {
  int64_t images = 0;         // images evaluated (decoded, with a labels row)
  int64_t skipped_files = 0;  // files unreadable, undecodable or without a labels row
  double threshold = 0.5;
  std::vector<LabelResult> labels;  // the model's labels that are columns of the CSV
  // Mean AUROC over the labels whose AUROC is defined (both classes present); NaN if none.
  double mean_auroc = 0;
  double accuracy = 0;              // over all images, as GroupResult::accuracy
  std::vector<GroupResult> groups;  // sex M, F, then the age bands in order
};

// Age band names for ascending `edges`: {40, 60} gives "<40", "40-59", "60+".
std::vector<std::string> AgeBandNames(const std::vector<int>& edges);
// The index into AgeBandNames(edges) of `age_years`, or -1 when the age is unknown (< 0).
int AgeBand(int age_years, const std::vector<int>& edges);

// The report of `predictions`, whose probs/targets follow `label_names`. Pure arithmetic.
// `threshold` 0 picks a prevalence-matched threshold per label (see EvaluateOptions).
// REQUIRES: every prediction has label_names.size() probs and targets; edges ascending.
EvaluationReport Summarize(const std::vector<std::string>& label_names,
                           const std::vector<Prediction>& predictions, double threshold,
                           const std::vector<int>& age_edges);

struct EvaluateOptions {
  std::string model_path;    // MODEL.safetensors
  std::string sidecar_path;  // empty: SidecarPathFor(model_path)
  std::string data_dir;      // DICOM folder, searched recursively (as the client reads it)
  std::string labels_csv;    // labels CSV in the client's format
  // Which images: "all", or the client's "test" / "train" split at test_fraction.
  std::string split = "all";
  double test_fraction = 0.2;
  // In (0, 1); 0: per label, the score that calls as many images positive as the label has
  // positives (matches the prevalence, so a rare finding is not simply always "negative").
  double threshold = 0.5;
  std::vector<int> age_edges = {40, 60};
  int batch_size = 64;
  int threads = 2;  // decoding threads
};

// Loads the model, reads the folder as the client does (LoadDataset, DecodeDicom), runs
// batched CPU inference and summarises. Errors: missing or unreadable files, a sidecar that
// does not match the weights, no model label among the CSV's columns, no decodable image.
// `predictions`, when given, receives every image's scores, in the order of the report's labels.
absl::StatusOr<EvaluationReport> EvaluateModel(const EvaluateOptions& options,
                                               std::vector<Prediction>* predictions = nullptr);

// The report as one JSON object: fl.EvaluationReportJson (proto/fl/report.proto) in protobuf's
// JSON mapping; undefined (NaN) values are left out.
std::string ReportJson(const EvaluationReport& report);

// Per-image scores as CSV, for confidence intervals (a bootstrap over images or patients): a
// header "key,patient_id,sex,age,<label>_score,<label>_target,..." for `label_names` (the
// report's labels), then one row per prediction; a target is 1, 0 or empty (unknown), an
// unknown age empty. Per-image data: like the images, it stays at the site.
std::string ScoresCsv(const std::vector<std::string>& label_names,
                      const std::vector<Prediction>& predictions);
// The report as aligned text tables for a terminal.
std::string ReportText(const EvaluationReport& report);

}  // namespace fl
