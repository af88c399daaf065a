// flctl synth: synthetic DICOM images from a federated latent diffusion model; flctl synth-eval:
// how they compare with real images (FID, precision/recall, memorisation).
#include <iostream>
#include <memory>

#include "absl/strings/str_format.h"
#include "tools/cli.h"
#include "tools/evaluate.h"
#include "tools/synth.h"
#include "tools/synth_eval.h"

namespace fl {
namespace {

struct SynthArgs {
  SynthOptions options;
  double guidance = -1;  // < 0: the card's
  int steps = 0;         // 0: the card's
  double eta = -1;       // < 0: the card's
};

int RunSynth(const CLI::App& app, SynthArgs args) {
  SynthOptions& o = args.options;
  if (args.guidance >= 0) o.guidance = args.guidance;
  if (args.steps > 0) o.steps = args.steps;
  if (args.eta >= 0) o.eta = args.eta;
  absl::StatusOr<SyntheticSet> set = SampleSyntheticSet(o);
  if (!set.ok()) {
    return absl::IsInvalidArgument(set.status()) ? cli::UsageError(app, set.status())
                                                 : cli::Fail(set.status(), 1);
  }
  if (absl::Status written = WriteSyntheticSet(*set, o.out_dir); !written.ok()) {
    return cli::Fail(written, 1);
  }
  std::cout << absl::StrFormat("wrote %d synthetic images (%d classes x %d) and labels.csv to %s\n",
                               set->images.size(), set->classes.size(), o.per_class, o.out_dir);
  return 0;
}

cli::CommandRun SetUpSynth(CLI::App& app) {
  auto args = std::make_shared<SynthArgs>();
  SynthOptions& o = args->options;
  app.add_option("MODEL", o.model_path, "a diffusion job's exported MODEL.safetensors")->required();
  app.add_option("--autoencoder", o.autoencoder_path,
                 "the export of the autoencoder job it was trained on")
      ->required();
  app.add_option("--out", o.out_dir, "folder for the DICOM files and labels.csv")->required();
  app.add_option("--per-class", o.per_class,
                 "images per class (no finding, then each finding alone)");
  app.add_option("--guidance", args->guidance,
                 "classifier-free guidance scale (0: unconditional; default: the model card's)");
  app.add_option("--steps", args->steps, "DDIM steps (default: the model card's)");
  app.add_option("--eta", args->eta, "DDIM eta in [0, 1] (default: the model card's)");
  app.add_option("--seed", o.seed, "same seed and models, same pixels");
  app.add_option("--batch-size", o.batch_size, "images sampled together");
  return [&app, args] { return RunSynth(app, *args); };
}

FL_COMMAND("synth",
           "synthetic DICOM (Secondary Capture, marked SYNTHETIC) from a federated diffusion model",
           SetUpSynth);

struct SynthEvalArgs {
  std::string real, synthetic, features;
  int k = 3;
  int closest = 5;
};

int RunSynthEval(const CLI::App& app, const SynthEvalArgs& args) {
  if (args.k < 1 || args.closest < 0) {
    return cli::UsageError(app, absl::InvalidArgumentError("--k must be >= 1, --closest >= 0"));
  }
  absl::StatusOr<ModelSidecar> card = ReadModelSidecar(SidecarPathFor(args.features));
  if (!card.ok()) return cli::Fail(card.status(), 1);
  absl::StatusOr<ImageFolder> real = ReadImageFolder(args.real, card->input_size);
  if (!real.ok()) return cli::Fail(real.status(), 1);
  absl::StatusOr<ImageFolder> synthetic = ReadImageFolder(args.synthetic, card->input_size);
  if (!synthetic.ok()) return cli::Fail(synthetic.status(), 1);
  const int64_t need = std::max<int64_t>(args.k + 1, 2);
  if (real->pixels.rows < need || synthetic->pixels.rows < need) {
    return cli::Fail(absl::InvalidArgumentError(absl::StrFormat(
                         "need at least %d images on each side (k = %d); got %d real, %d "
                         "synthetic",
                         need, args.k, real->pixels.rows, synthetic->pixels.rows)),
                     1);
  }
  absl::StatusOr<std::vector<FeatureMatrix>> features =
      ClassifierFeaturesOf(args.features, {&real->pixels, &synthetic->pixels});
  if (!features.ok()) return cli::Fail(features.status(), 1);
  const FeatureMatrix* fr = &(*features)[0];
  const FeatureMatrix* fs = &(*features)[1];
  const PrecisionRecall pr = ImprovedPrecisionRecall(*fr, *fs, args.k);
  const Memorisation mem = MemorisationCheck(real->pixels, synthetic->pixels, args.closest);
  std::cout << absl::StrFormat(
      "features: the %s classifier %s (%d dimensions), not Inception: compare only with figures "
      "in the same features\n"
      "images: %d real (%d skipped), %d synthetic (%d skipped), at %d x %d px\n"
      "FID: %.4f\nprecision (k = %d): %.4f\nrecall (k = %d): %.4f\n"
      "memorisation: median distance to the nearest real image %.4f (synthetic) vs %.4f "
      "(real, to another real one); ratio %.3f (well below 1: copies)\n",
      card->architecture, args.features, fr->cols, real->pixels.rows, real->skipped,
      synthetic->pixels.rows, synthetic->skipped, card->input_size, card->input_size,
      FrechetDistance(*fr, *fs), args.k, pr.precision, args.k, pr.recall, mem.synthetic_to_real,
      mem.real_to_real, mem.synthetic_to_real / mem.real_to_real);
  for (const NearestPair& p : mem.closest) {
    std::cout << absl::StrFormat("closest: %s ~ %s  %.4f\n", synthetic->paths[p.synthetic],
                                 real->paths[p.real], p.distance);
  }
  return 0;
}

cli::CommandRun SetUpSynthEval(CLI::App& app) {
  auto args = std::make_shared<SynthEvalArgs>();
  app.add_option("--real", args->real, "folder of real DICOM images (e.g. a site's data)")
      ->required();
  app.add_option("--synthetic", args->synthetic, "folder flctl synth wrote")->required();
  app.add_option("--features", args->features,
                 "an exported classifier (MODEL.safetensors) whose features compare the images")
      ->required();
  app.add_option("--k", args->k, "neighbours for precision and recall");
  app.add_option("--closest", args->closest, "closest synthetic-real pairs to list");
  return [&app, args] { return RunSynthEval(app, *args); };
}

FL_COMMAND("synth-eval",
           "FID, precision/recall and a memorisation check of synthetic against real images",
           SetUpSynthEval);

}  // namespace
}  // namespace fl
