// flctl evaluate: an exported model's AUROC and fairness on a labelled DICOM folder, computed
// where the data lies (only aggregate numbers are printed).
#include <iostream>
#include <memory>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/file_util.h"
#include "common/status.h"
#include "tools/cli.h"
#include "tools/evaluate.h"

namespace fl {
namespace {

// The words as given; the options' checks and conversions are FinishOptions'.
struct EvaluateArgs {
  EvaluateOptions options;
  std::string labels;
  std::string threshold = "0.5";
  std::string age_bands = "40,60";
  bool json = false;
  std::string scores;
};

absl::StatusOr<std::vector<int>> ParseEdges(const std::string& text) {
  std::vector<int> edges;
  for (absl::string_view part : absl::StrSplit(text, ',', absl::SkipWhitespace())) {
    int v = 0;
    if (!absl::SimpleAtoi(part, &v) || v <= 0 || v > 150) {
      return absl::InvalidArgumentError(
          absl::StrCat("--age-bands: \"", part, "\" is not an age in 1..150"));
    }
    edges.push_back(v);
  }
  return edges;
}

absl::StatusOr<EvaluateOptions> FinishOptions(const EvaluateArgs& args) {
  EvaluateOptions o = args.options;
  o.labels_csv = args.labels.empty() ? o.data_dir + "/labels.csv" : args.labels;
  if (args.threshold == "prevalence") {
    o.threshold = 0;
  } else if (!absl::SimpleAtod(args.threshold, &o.threshold) || o.threshold == 0) {
    return absl::InvalidArgumentError("--threshold must be in (0, 1) or 'prevalence'");
  }
  if (o.batch_size < 1 || o.batch_size > 4096 || o.threads < 1 || o.threads > 256) {
    return absl::InvalidArgumentError("--batch-size must be in 1..4096, --threads in 1..256");
  }
  ASSIGN_OR_RETURN(o.age_edges, ParseEdges(args.age_bands));
  return o;
}

int RunEvaluate(const CLI::App& app, const EvaluateArgs& args) {
  absl::StatusOr<EvaluateOptions> options = FinishOptions(args);
  if (!options.ok()) return cli::UsageError(app, options.status());
  std::vector<Prediction> predictions;
  absl::StatusOr<EvaluationReport> report = EvaluateModel(*options, &predictions);
  if (!report.ok()) return cli::Fail(report.status(), 1);
  if (!args.scores.empty()) {
    std::vector<std::string> names;
    for (const LabelResult& l : report->labels) names.push_back(l.label);
    absl::Status written = WriteFileAtomic(args.scores, ScoresCsv(names, predictions), 0600);
    if (!written.ok()) return cli::Fail(written, 1);
  }
  std::cout << (args.json ? ReportJson(*report) : ReportText(*report));
  return 0;
}

cli::CommandRun SetUpEvaluate(CLI::App& app) {
  auto args = std::make_shared<EvaluateArgs>();
  EvaluateOptions& o = args->options;
  app.add_option("MODEL", o.model_path, "the exported MODEL.safetensors")->required();
  app.add_option("--data", o.data_dir, "DICOM folder, read as the client reads it")->required();
  app.add_option("--labels", args->labels, "labels CSV (default: DATA/labels.csv)");
  app.add_option("--sidecar", o.sidecar_path, "the model card (default: MODEL.json)");
  app.add_option("--threshold", args->threshold,
                 "decision threshold in (0, 1), or 'prevalence': per label, the score that calls "
                 "as many images positive as it has positives");
  app.add_option("--age-bands", args->age_bands, "edges of the age groups for fairness");
  app.add_option("--split", o.split, "which images: all, test or train (the client's split)");
  app.add_option("--test-fraction", o.test_fraction, "the client's test fraction");
  app.add_option("--batch-size", o.batch_size, "images per inference batch, 1..4096");
  app.add_option("--threads", o.threads, "decoding threads, 1..256");
  app.add_flag("--json", args->json, "the report as JSON (fl.EvaluationReportJson)");
  app.add_option("--scores", args->scores,
                 "each image's scores and targets as CSV, for confidence intervals (per-image "
                 "data: keep it at the site)");
  return [&app, args] { return RunEvaluate(app, *args); };
}

FL_COMMAND("evaluate", "AUROC per label and fairness (sex, age) of an exported model on local data",
           SetUpEvaluate);

}  // namespace
}  // namespace fl
