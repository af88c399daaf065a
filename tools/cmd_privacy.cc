// flctl privacy: the privacy calculator (RDP accountant) and a read-only look at a client's ledger.
//
//   flctl privacy epsilon --sample-rate Q --noise-multiplier S --steps T --delta D [--verbose]
//   flctl privacy noise   --sample-rate Q --steps T --epsilon E --delta D [--verbose]
//   flctl privacy ledger  --ledger FILE --delta D [--dataset ID] [--job ID]
//
// The result alone goes to stdout ("%.10g"), so scripts can capture it; --verbose adds the best
// RDP order (and for `noise` the ε reached) on stderr. Exit 0 ok, 1 failure, 2 usage error.

#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status.h"
#include "privacy/ledger.h"
#include "privacy/rdp_accountant.h"
#include "tools/cli.h"

namespace fl {
namespace {

// Every option of the three subcommands; each subcommand declares those it takes.
struct PrivacyArgs {
  double sample_rate = 0;
  double noise_multiplier = 0;
  int64_t steps = 0;
  double epsilon = 0;
  double delta = 0;
  bool verbose = false;
  std::string ledger;
  std::string dataset;
  std::string job;
  bool has_job = false;
};

// Bad option values are usage errors (2); anything else is a failure (1).
int Finish(const CLI::App& app, const absl::Status& status) {
  if (status.ok()) return 0;
  if (status.code() == absl::StatusCode::kInvalidArgument) return cli::UsageError(app, status);
  return cli::Fail(status, 1);
}

// A usage error naming --option unless `ok`.
absl::Status CheckOption(bool ok, const char* option, double value, const char* range) {
  if (ok) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat("--", option, " must be in ", range, ", got ", value));
}

absl::Status CheckDelta(double delta) {
  return CheckOption(delta > 0 && delta < 1, "delta", delta, "(0, 1)");
}

absl::StatusOr<uint64_t> CheckSteps(int64_t steps, int64_t minimum) {
  if (steps < minimum) {
    return absl::InvalidArgumentError(absl::StrCat("--steps must be at least ", minimum));
  }
  return static_cast<uint64_t>(steps);
}

absl::Status RunEpsilon(const PrivacyArgs& args) {
  const double q = args.sample_rate, sigma = args.noise_multiplier, delta = args.delta;
  ASSIGN_OR_RETURN(uint64_t steps, CheckSteps(args.steps, 0));
  RETURN_IF_ERROR(CheckOption(q >= 0 && q <= 1, "sample-rate", q, "[0, 1]"));
  RETURN_IF_ERROR(
      CheckOption(sigma >= 0 && !std::isinf(sigma), "noise-multiplier", sigma, "[0, inf)"));
  RETURN_IF_ERROR(CheckDelta(delta));
  RdpAccountant accountant;
  accountant.AddSteps(q, sigma, steps);
  double order = std::nan("");
  ASSIGN_OR_RETURN(double eps, accountant.Epsilon(delta, &order));
  std::printf("%.10g\n", eps);
  if (args.verbose) std::fprintf(stderr, "best order: %g\n", order);
  return absl::OkStatus();
}

absl::Status RunNoise(const PrivacyArgs& args) {
  const double q = args.sample_rate, target = args.epsilon, delta = args.delta;
  ASSIGN_OR_RETURN(uint64_t steps, CheckSteps(args.steps, 1));
  RETURN_IF_ERROR(CheckOption(q > 0 && q <= 1, "sample-rate", q, "(0, 1]"));
  RETURN_IF_ERROR(CheckOption(target > 0 && !std::isinf(target), "epsilon", target, "(0, inf)"));
  RETURN_IF_ERROR(CheckDelta(delta));
  ASSIGN_OR_RETURN(double sigma, CalibrateNoise(q, steps, target, delta));
  std::printf("%.10g\n", sigma);
  if (args.verbose) {
    RdpAccountant accountant;
    accountant.AddSteps(q, sigma, steps);
    double order = std::nan("");
    ASSIGN_OR_RETURN(double eps, accountant.Epsilon(delta, &order));
    std::fprintf(stderr, "epsilon: %.10g\nbest order: %g\n", eps, order);
  }
  return absl::OkStatus();
}

absl::Status RunLedger(const PrivacyArgs& args) {
  const std::string& path = args.ledger;
  const double delta = args.delta;
  RETURN_IF_ERROR(CheckDelta(delta));
  // Opening would create a missing ledger: an inspection must not.
  if (access(path.c_str(), R_OK) != 0) {
    return absl::NotFoundError(absl::StrCat("no readable ledger at '", path, "'"));
  }
  ASSIGN_OR_RETURN(auto ledger, PrivacyLedger::Open(path));
  std::string dataset = args.dataset;
  if (dataset.empty()) {  // the site's one dataset
    ASSIGN_OR_RETURN(std::vector<PrivacyLedger::DatasetInfo> datasets, ledger->Datasets());
    if (datasets.size() != 1) {
      std::vector<std::string> ids;
      for (const auto& d : datasets) ids.push_back(d.id);
      return absl::InvalidArgumentError(absl::StrCat("the ledger holds ", datasets.size(),
                                                     " datasets (", absl::StrJoin(ids, ", "),
                                                     "): name one with --dataset"));
    }
    dataset = datasets[0].id;
  }
  std::optional<std::string> job;
  if (args.has_job) job = args.job;
  ASSIGN_OR_RETURN(double eps, ledger->Epsilon(job, dataset, delta));
  std::printf("%.10g\n", eps);
  return absl::OkStatus();
}

void AddDelta(CLI::App* app, PrivacyArgs* args) {
  app->add_option("--delta", args->delta, "delta of (epsilon, delta)-DP, in (0, 1)")->required();
}

cli::CommandRun SetUpPrivacy(CLI::App& app) {
  auto args = std::make_shared<PrivacyArgs>();
  app.require_subcommand(1);
  app.footer(
      "The result alone goes to stdout, so scripts can capture it. Exit 0 ok, 1 failure, 2 usage "
      "error.");
  CLI::App* epsilon = app.add_subcommand("epsilon", "epsilon of T DP-SGD steps (RDP accountant)");
  epsilon->add_option("--sample-rate", args->sample_rate, "Poisson sampling rate q, in [0, 1]")
      ->required();
  epsilon->add_option("--noise-multiplier", args->noise_multiplier, "sigma, in [0, inf)")
      ->required();
  epsilon->add_option("--steps", args->steps, "steps T, at least 0")->required();
  AddDelta(epsilon, args.get());
  epsilon->add_flag("--verbose", args->verbose, "also the best RDP order, on stderr");

  CLI::App* noise = app.add_subcommand("noise", "sigma that reaches epsilon after T steps");
  noise->add_option("--sample-rate", args->sample_rate, "Poisson sampling rate q, in (0, 1]")
      ->required();
  noise->add_option("--steps", args->steps, "steps T, at least 1")->required();
  noise->add_option("--epsilon", args->epsilon, "target epsilon, in (0, inf)")->required();
  AddDelta(noise, args.get());
  noise->add_flag("--verbose", args->verbose,
                  "also the epsilon reached and the best RDP order, "
                  "on stderr");

  CLI::App* ledger = app.add_subcommand("ledger", "epsilon spent, from a client's privacy ledger");
  ledger->add_option("--ledger", args->ledger, "the client's ledger file")->required();
  AddDelta(ledger, args.get());
  ledger->add_option("--dataset", args->dataset,
                     "the client's dataset_id, or a data_dir an older ledger recorded (default: "
                     "the ledger's one dataset)");
  CLI::Option* job = ledger->add_option("--job", args->job, "only this job's rounds");
  return [args, epsilon, noise, ledger, job] {
    args->has_job = job->count() > 0;
    if (epsilon->parsed()) return Finish(*epsilon, RunEpsilon(*args));
    if (noise->parsed()) return Finish(*noise, RunNoise(*args));
    return Finish(*ledger, RunLedger(*args));
  };
}

}  // namespace
}  // namespace fl

FL_COMMAND("privacy", "privacy calculator: epsilon, noise; ledger inspection", fl::SetUpPrivacy);
