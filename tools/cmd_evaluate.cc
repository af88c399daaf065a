// flctl evaluate: an exported model's AUROC and fairness on a labelled DICOM folder, computed
// where the data lies (only aggregate numbers are printed).
#include <iostream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/file_util.h"
#include "common/status.h"
#include "tools/cli.h"
#include "tools/evaluate.h"

namespace fl {
namespace {

constexpr char kUsage[] =
    "usage: flctl evaluate MODEL.safetensors --data DIR [--labels CSV (default DIR/labels.csv)] "
    "[--sidecar MODEL.json] [--threshold 0.5|prevalence] [--age-bands 40,60] [--split all|test|train] "
    "[--test-fraction 0.2] [--batch-size 64] [--threads 2] [--json] [--scores FILE]\n"
    "--json: the report as JSON (fl.EvaluationReportJson); --scores FILE: each image's scores "
    "and targets as CSV, for confidence intervals (per-image data: keep it at the site)";

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

absl::StatusOr<EvaluateOptions> OptionsFromArgs(const cli::Args& args) {
  RETURN_IF_ERROR(args.CheckKnown({"data", "labels", "sidecar", "threshold", "age-bands", "split",
                                   "test-fraction", "batch-size", "threads", "json", "scores"}));
  if (args.positional().size() != 1) {
    return absl::InvalidArgumentError("expected exactly one MODEL.safetensors");
  }
  EvaluateOptions o;
  o.model_path = args.positional()[0];
  ASSIGN_OR_RETURN(o.data_dir, args.Require("data"));
  o.labels_csv = args.Get("labels", o.data_dir + "/labels.csv");
  o.sidecar_path = args.Get("sidecar");
  o.split = args.Get("split", o.split);
  if (args.Get("threshold") == "prevalence") {
    o.threshold = 0;
  } else {
    ASSIGN_OR_RETURN(o.threshold, args.GetDouble("threshold", o.threshold));
    if (o.threshold == 0) return absl::InvalidArgumentError("--threshold must be in (0, 1)");
  }
  ASSIGN_OR_RETURN(o.test_fraction, args.GetDouble("test-fraction", o.test_fraction));
  ASSIGN_OR_RETURN(int64_t batch, args.GetInt("batch-size", o.batch_size));
  ASSIGN_OR_RETURN(int64_t threads, args.GetInt("threads", o.threads));
  if (batch < 1 || batch > 4096 || threads < 1 || threads > 256) {
    return absl::InvalidArgumentError("--batch-size must be in 1..4096, --threads in 1..256");
  }
  o.batch_size = static_cast<int>(batch);
  o.threads = static_cast<int>(threads);
  if (args.Has("age-bands")) {
    ASSIGN_OR_RETURN(o.age_edges, ParseEdges(args.Get("age-bands")));
  }
  return o;
}

int RunEvaluate(const std::vector<std::string>& argv) {
  absl::StatusOr<cli::Args> args = cli::Args::Parse(argv, {"json"});
  if (!args.ok()) return cli::Fail(args.status(), 2);
  absl::StatusOr<EvaluateOptions> options = OptionsFromArgs(*args);
  if (!options.ok()) {
    return cli::Fail(absl::InvalidArgumentError(
                         absl::StrCat(options.status().message(), "\n", kUsage)), 2);
  }
  std::vector<Prediction> predictions;
  absl::StatusOr<EvaluationReport> report = EvaluateModel(*options, &predictions);
  if (!report.ok()) return cli::Fail(report.status(), 1);
  if (args->Has("scores")) {
    std::vector<std::string> names;
    for (const LabelResult& l : report->labels) names.push_back(l.label);
    absl::Status written = WriteFileAtomic(args->Get("scores"), ScoresCsv(names, predictions),
                                           0600);
    if (!written.ok()) return cli::Fail(written, 1);
  }
  std::cout << (args->Has("json") ? ReportJson(*report) : ReportText(*report));
  return 0;
}

FL_COMMAND("evaluate", "AUROC per label and fairness (sex, age) of an exported model on local data",
           kUsage, RunEvaluate);

}  // namespace
}  // namespace fl
