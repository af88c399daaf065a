// flctl phantom: writes a synthetic chest-radiograph dataset (DICOM + labels.csv).
#include <iostream>

#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/status.h"
#include "tools/cli.h"
#include "tools/phantom.h"

namespace fl {
namespace {

constexpr char kUsage[] =
    "usage: flctl phantom --out DIR --count N [--size 256] [--seed S] [--labels a,b,c] "
    "[--prevalence 0.3] [--noise 0.02] [--contrast 1.0] [--male-fraction 0.5] "
    "[--min-age 20] [--max-age 90] [--photometric MONOCHROME2] [--site NAME] "
    "[--finding-strength 1.0 (0..2; ~0.3: subtle)] [--variation 1.0 (0..3)] "
    "[--label-noise 0 (flip rate of written labels, < 0.5)]";

absl::StatusOr<PhantomOptions> OptionsFromArgs(const cli::Args& args) {
  RETURN_IF_ERROR(args.CheckKnown({"out", "count", "size", "seed", "labels", "prevalence", "noise",
                                   "contrast", "male-fraction", "min-age", "max-age",
                                   "photometric", "site", "finding-strength", "variation",
                                   "label-noise"}));
  if (!args.positional().empty()) {
    return absl::InvalidArgumentError("unexpected argument '" + args.positional()[0] + "'");
  }
  PhantomOptions o;
  ASSIGN_OR_RETURN(int64_t count, args.GetInt("count", std::nullopt));
  ASSIGN_OR_RETURN(int64_t size, args.GetInt("size", o.size));
  ASSIGN_OR_RETURN(int64_t seed, args.GetInt("seed", 1));
  ASSIGN_OR_RETURN(double prevalence, args.GetDouble("prevalence", 0.3));
  ASSIGN_OR_RETURN(o.noise, args.GetDouble("noise", o.noise));
  ASSIGN_OR_RETURN(o.contrast, args.GetDouble("contrast", o.contrast));
  ASSIGN_OR_RETURN(o.finding_strength, args.GetDouble("finding-strength", o.finding_strength));
  ASSIGN_OR_RETURN(o.variation, args.GetDouble("variation", o.variation));
  ASSIGN_OR_RETURN(o.label_noise, args.GetDouble("label-noise", o.label_noise));
  ASSIGN_OR_RETURN(o.male_fraction, args.GetDouble("male-fraction", o.male_fraction));
  ASSIGN_OR_RETURN(int64_t min_age, args.GetInt("min-age", o.min_age));
  ASSIGN_OR_RETURN(int64_t max_age, args.GetInt("max-age", o.max_age));
  if (count > 10000000 || size > 100000 || min_age > 1000 || max_age > 1000) {
    return absl::InvalidArgumentError("--count, --size or an age is far out of range");
  }
  o.count = static_cast<int>(count);
  o.size = static_cast<int>(size);
  o.seed = static_cast<uint64_t>(seed);
  o.min_age = static_cast<int>(min_age);
  o.max_age = static_cast<int>(max_age);
  o.prevalence.fill(prevalence);
  o.photometric = args.Get("photometric", o.photometric);
  o.site_name = args.Get("site", o.site_name);
  if (args.Has("labels")) {
    o.labels_to_write = absl::StrSplit(args.Get("labels"), ',', absl::SkipWhitespace());
  }
  RETURN_IF_ERROR(ValidatePhantomOptions(o));
  return o;
}

int RunPhantom(const std::vector<std::string>& argv) {
  auto args = cli::Args::Parse(argv);
  if (!args.ok()) return cli::Fail(args.status(), 2);
  auto out = args->Require("out");
  if (!out.ok()) return cli::Fail(absl::InvalidArgumentError(absl::StrCat(
                                      out.status().message(), "\n", kUsage)), 2);
  auto options = OptionsFromArgs(*args);
  if (!options.ok()) {
    return cli::Fail(absl::InvalidArgumentError(absl::StrCat(options.status().message(), "\n",
                                                             kUsage)), 2);
  }
  PhantomSummary summary;
  absl::Status status = WritePhantomDataset(*options, *out, &summary);
  if (!status.ok()) return cli::Fail(status, 1);
  std::vector<std::string> positives;
  for (int k = 0; k < kNumPhantomLabels; ++k) {
    positives.push_back(absl::StrCat(kPhantomLabels[k], "=", summary.positives[k]));
  }
  std::cout << "wrote " << summary.images << " images of " << summary.patients << " patients ("
            << summary.males << " male) to " << *out << " with labels.csv; positives: "
            << absl::StrJoin(positives, " ");
  if (options->label_noise > 0) std::cout << "; labels flipped: " << summary.label_flips;
  std::cout << "\n";
  return 0;
}

FL_COMMAND("phantom", "write synthetic chest-radiograph DICOM files and labels.csv", kUsage,
           RunPhantom);

}  // namespace
}  // namespace fl
