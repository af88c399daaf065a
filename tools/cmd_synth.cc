// flctl synth: synthetic DICOM images from a federated latent diffusion model.
#include <iostream>
#include <memory>

#include "absl/strings/str_format.h"
#include "tools/cli.h"
#include "tools/synth.h"

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

}  // namespace
}  // namespace fl
