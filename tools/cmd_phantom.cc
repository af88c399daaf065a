// flctl phantom: writes a synthetic chest-radiograph dataset (DICOM + labels.csv).
#include <iostream>
#include <memory>

#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/status.h"
#include "tools/cli.h"
#include "tools/phantom.h"

namespace fl {
namespace {

// The words as given; integers are range-checked before they are narrowed.
struct PhantomArgs {
  PhantomOptions options;
  std::string out;
  int64_t count = 0;
  int64_t size = PhantomOptions().size;
  int64_t seed = 1;
  double prevalence = 0.3;
  int64_t min_age = PhantomOptions().min_age;
  int64_t max_age = PhantomOptions().max_age;
  std::string labels;
};

absl::StatusOr<PhantomOptions> FinishOptions(const PhantomArgs& args) {
  if (args.count > 10000000 || args.size > 100000 || args.min_age > 1000 || args.max_age > 1000) {
    return absl::InvalidArgumentError("--count, --size or an age is far out of range");
  }
  PhantomOptions o = args.options;
  o.count = static_cast<int>(args.count);
  o.size = static_cast<int>(args.size);
  o.seed = static_cast<uint64_t>(args.seed);
  o.min_age = static_cast<int>(args.min_age);
  o.max_age = static_cast<int>(args.max_age);
  o.prevalence.fill(args.prevalence);
  if (!args.labels.empty()) {
    o.labels_to_write = absl::StrSplit(args.labels, ',', absl::SkipWhitespace());
  }
  RETURN_IF_ERROR(ValidatePhantomOptions(o));
  return o;
}

int RunPhantom(const CLI::App& app, const PhantomArgs& args) {
  auto options = FinishOptions(args);
  if (!options.ok()) return cli::UsageError(app, options.status());
  PhantomSummary summary;
  absl::Status status = WritePhantomDataset(*options, args.out, &summary);
  if (!status.ok()) return cli::Fail(status, 1);
  std::vector<std::string> positives;
  for (int k = 0; k < kNumPhantomLabels; ++k) {
    positives.push_back(absl::StrCat(kPhantomLabels[k], "=", summary.positives[k]));
  }
  std::cout << "wrote " << summary.images << " images of " << summary.patients << " patients ("
            << summary.males << " male) to " << args.out
            << " with labels.csv; positives: " << absl::StrJoin(positives, " ");
  if (options->label_noise > 0) std::cout << "; labels flipped: " << summary.label_flips;
  std::cout << "\n";
  return 0;
}

cli::CommandRun SetUpPhantom(CLI::App& app) {
  auto args = std::make_shared<PhantomArgs>();
  PhantomOptions& o = args->options;
  app.add_option("--out", args->out, "folder to write the DICOM files and labels.csv to")
      ->required();
  app.add_option("--count", args->count, "number of images")->required();
  app.add_option("--size", args->size, "rows = columns, 32..4096");
  app.add_option("--seed", args->seed, "same seed, same pixels, labels and demographics");
  app.add_option("--labels", args->labels,
                 "label columns written to labels.csv, comma-separated (default: all eight)");
  app.add_option("--prevalence", args->prevalence, "probability of each finding, in [0, 1]");
  app.add_option("--noise", o.noise, "Gaussian noise sigma, a fraction of the 12-bit range");
  app.add_option("--contrast", o.contrast, "multiplies the tissue contrast (a site shift)");
  app.add_option("--male-fraction", o.male_fraction, "in [0, 1]");
  app.add_option("--min-age", args->min_age, "ages drawn uniformly in [min, max], 0..120");
  app.add_option("--max-age", args->max_age, "ages drawn uniformly in [min, max], 0..120");
  app.add_option("--photometric", o.photometric, "MONOCHROME2, or MONOCHROME1 (inverted)");
  app.add_option("--site", o.site_name, "InstitutionName and patient id prefix");
  app.add_option("--finding-strength", o.finding_strength,
                 "how much a finding changes the image, (0, 2]; about 0.3: subtle");
  app.add_option("--variation", o.variation,
                 "spread of what varies between patients and acquisitions, [0, 3]");
  app.add_option("--label-noise", o.label_noise, "flip rate of the written labels, [0, 0.5)");
  return [&app, args] { return RunPhantom(app, *args); };
}

FL_COMMAND("phantom", "write synthetic chest-radiograph DICOM files and labels.csv", SetUpPhantom);

}  // namespace
}  // namespace fl
