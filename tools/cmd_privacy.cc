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

constexpr char kUsage[] =
    "usage: flctl privacy epsilon --sample-rate Q --noise-multiplier S --steps T --delta D "
    "[--verbose]\n"
    "       flctl privacy noise --sample-rate Q --steps T --epsilon E --delta D [--verbose]\n"
    "       flctl privacy ledger --ledger FILE --delta D [--dataset ID] [--job ID]\n"
    "         (--dataset: the client's dataset_id, or a data_dir an older ledger recorded;\n"
    "          default: the ledger's one dataset)";

// Bad or missing options are usage errors (2); anything else is a failure (1).
int Finish(const absl::Status& status) {
  if (status.ok()) return 0;
  const bool usage = status.code() == absl::StatusCode::kInvalidArgument;
  cli::Fail(status, usage ? 2 : 1);
  if (usage) std::fprintf(stderr, "%s\n", kUsage);
  return usage ? 2 : 1;
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

absl::StatusOr<uint64_t> GetSteps(const cli::Args& args, int64_t minimum) {
  ASSIGN_OR_RETURN(int64_t steps, args.GetInt("steps", std::nullopt));
  if (steps < minimum) {
    return absl::InvalidArgumentError(absl::StrCat("--steps must be at least ", minimum));
  }
  return static_cast<uint64_t>(steps);
}

absl::Status RunEpsilon(const cli::Args& args) {
  RETURN_IF_ERROR(
      args.CheckKnown({"sample-rate", "noise-multiplier", "steps", "delta", "verbose"}));
  ASSIGN_OR_RETURN(double q, args.GetDouble("sample-rate", std::nullopt));
  ASSIGN_OR_RETURN(double sigma, args.GetDouble("noise-multiplier", std::nullopt));
  ASSIGN_OR_RETURN(uint64_t steps, GetSteps(args, 0));
  ASSIGN_OR_RETURN(double delta, args.GetDouble("delta", std::nullopt));
  RETURN_IF_ERROR(CheckOption(q >= 0 && q <= 1, "sample-rate", q, "[0, 1]"));
  RETURN_IF_ERROR(CheckOption(sigma >= 0 && !std::isinf(sigma), "noise-multiplier", sigma,
                              "[0, inf)"));
  RETURN_IF_ERROR(CheckDelta(delta));
  RdpAccountant accountant;
  accountant.AddSteps(q, sigma, steps);
  double order = std::nan("");
  ASSIGN_OR_RETURN(double eps, accountant.Epsilon(delta, &order));
  std::printf("%.10g\n", eps);
  if (args.Has("verbose")) std::fprintf(stderr, "best order: %g\n", order);
  return absl::OkStatus();
}

absl::Status RunNoise(const cli::Args& args) {
  RETURN_IF_ERROR(args.CheckKnown({"sample-rate", "steps", "epsilon", "delta", "verbose"}));
  ASSIGN_OR_RETURN(double q, args.GetDouble("sample-rate", std::nullopt));
  ASSIGN_OR_RETURN(uint64_t steps, GetSteps(args, 1));
  ASSIGN_OR_RETURN(double target, args.GetDouble("epsilon", std::nullopt));
  ASSIGN_OR_RETURN(double delta, args.GetDouble("delta", std::nullopt));
  RETURN_IF_ERROR(CheckOption(q > 0 && q <= 1, "sample-rate", q, "(0, 1]"));
  RETURN_IF_ERROR(CheckOption(target > 0 && !std::isinf(target), "epsilon", target, "(0, inf)"));
  RETURN_IF_ERROR(CheckDelta(delta));
  ASSIGN_OR_RETURN(double sigma, CalibrateNoise(q, steps, target, delta));
  std::printf("%.10g\n", sigma);
  if (args.Has("verbose")) {
    RdpAccountant accountant;
    accountant.AddSteps(q, sigma, steps);
    double order = std::nan("");
    ASSIGN_OR_RETURN(double eps, accountant.Epsilon(delta, &order));
    std::fprintf(stderr, "epsilon: %.10g\nbest order: %g\n", eps, order);
  }
  return absl::OkStatus();
}

absl::Status RunLedger(const cli::Args& args) {
  RETURN_IF_ERROR(args.CheckKnown({"ledger", "dataset", "delta", "job"}));
  ASSIGN_OR_RETURN(std::string path, args.Require("ledger"));
  ASSIGN_OR_RETURN(double delta, args.GetDouble("delta", std::nullopt));
  RETURN_IF_ERROR(CheckDelta(delta));
  // Opening would create a missing ledger: an inspection must not.
  if (access(path.c_str(), R_OK) != 0) {
    return absl::NotFoundError(absl::StrCat("no readable ledger at '", path, "'"));
  }
  ASSIGN_OR_RETURN(auto ledger, PrivacyLedger::Open(path));
  std::string dataset = args.Get("dataset", "");
  if (dataset.empty()) {  // the site's one dataset
    ASSIGN_OR_RETURN(std::vector<PrivacyLedger::DatasetInfo> datasets, ledger->Datasets());
    if (datasets.size() != 1) {
      std::vector<std::string> ids;
      for (const auto& d : datasets) ids.push_back(d.id);
      return absl::InvalidArgumentError(absl::StrCat(
          "the ledger holds ", datasets.size(), " datasets (", absl::StrJoin(ids, ", "),
          "): name one with --dataset"));
    }
    dataset = datasets[0].id;
  }
  std::optional<std::string> job;
  if (args.Has("job")) job = args.Get("job");
  ASSIGN_OR_RETURN(double eps, ledger->Epsilon(job, dataset, delta));
  std::printf("%.10g\n", eps);
  return absl::OkStatus();
}

int RunPrivacy(const std::vector<std::string>& argv) {
  auto args = cli::Args::Parse(argv, {"verbose"});
  if (!args.ok()) return Finish(args.status());
  const auto& words = args->positional();
  if (words.size() != 1) {
    return Finish(absl::InvalidArgumentError(
        words.empty() ? "missing subcommand" : absl::StrCat("unexpected argument '", words[1],
                                                            "'")));
  }
  if (words[0] == "epsilon") return Finish(RunEpsilon(*args));
  if (words[0] == "noise") return Finish(RunNoise(*args));
  if (words[0] == "ledger") return Finish(RunLedger(*args));
  return Finish(absl::InvalidArgumentError(absl::StrCat("unknown subcommand '", words[0], "'")));
}

}  // namespace
}  // namespace fl

FL_COMMAND("privacy", "privacy calculator: epsilon, noise; ledger inspection", fl::kUsage,
           fl::RunPrivacy);
