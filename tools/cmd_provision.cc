// flctl provision: the consortium CA and one kit (certificate, key, config) per participant.
#include <iostream>
#include <string>
#include <vector>

#include "absl/strings/str_split.h"
#include "common/status.h"
#include "tools/cli.h"
#include "tools/provision.h"

namespace fl {
namespace {

constexpr char kUsage[] =
    "usage: flctl provision --out DIR --coordinator-address HOST:PORT\n"
    "         [--coordinator-name coordinator] [--coordinator-dns a,b] [--sites a,b,c]\n"
    "         [--admins alice,bob] [--valid-days 825] [--data-root R]\n"
    "         [--coordinator-metrics HOST:PORT] [--max-epsilon 10] [--delta 1e-6] [--add]\n"
    "         [--allow-non-dp]\n"
    "         [--renew coordinator,NAME,...]\n"
    "Creates DIR/ca (once) and the kits DIR/coordinator, DIR/sites/NAME, DIR/admins/NAME.\n"
    "Existing kits are never changed, so running it again (or with --add) only adds\n"
    "participants; --renew gives the named existing kits a new key and certificate, which\n"
    "running daemons pick up without a restart.\n"
    "Each site's kit caps its privacy budget (--max-epsilon at --delta) and, with a cap, its\n"
    "policy declines every training task without DP; --allow-non-dp writes\n"
    "policy { require_dp: false } instead (demos, non-private baselines).\n";

std::vector<std::string> List(const std::string& value) {
  return absl::StrSplit(value, ',', absl::SkipWhitespace());
}

absl::StatusOr<ProvisionOptions> ParseOptions(const cli::Args& args) {
  RETURN_IF_ERROR(args.CheckKnown({"out", "coordinator-address", "coordinator-name",
                                   "coordinator-dns", "sites", "admins", "valid-days", "data-root",
                                   "coordinator-metrics", "max-epsilon", "delta", "add",
                                   "renew", "allow-non-dp"}));
  ProvisionOptions o;
  ASSIGN_OR_RETURN(o.out_dir, args.Require("out"));
  ASSIGN_OR_RETURN(o.coordinator_address, args.Require("coordinator-address"));
  o.coordinator_name = args.Get("coordinator-name", "coordinator");
  o.coordinator_dns = List(args.Get("coordinator-dns"));
  o.sites = List(args.Get("sites"));
  o.admins = List(args.Get("admins"));
  o.renew = List(args.Get("renew"));
  ASSIGN_OR_RETURN(int64_t days, args.GetInt("valid-days", 825));
  if (days <= 0 || days > 36500) {
    return absl::InvalidArgumentError("--valid-days must be between 1 and 36500");
  }
  o.valid_days = static_cast<int>(days);
  o.data_root = args.Get("data-root");
  o.coordinator_metrics = args.Get("coordinator-metrics");
  ASSIGN_OR_RETURN(o.max_epsilon, args.GetDouble("max-epsilon", 10.0));
  ASSIGN_OR_RETURN(o.delta, args.GetDouble("delta", 1e-6));
  o.allow_non_dp = args.Has("allow-non-dp");
  return o;
}

int RunProvision(const std::vector<std::string>& argv) {
  if (!argv.empty() && (argv[0] == "--help" || argv[0] == "help")) {
    std::cout << kUsage;
    return 0;
  }
  auto args = cli::Args::Parse(argv, {"add", "allow-non-dp"});
  if (!args.ok()) return cli::Fail(args.status(), 2);
  auto options = ParseOptions(*args);
  if (!options.ok()) {
    std::cerr << kUsage;
    return cli::Fail(options.status(), 2);
  }
  auto report = Provision(*options);
  if (!report.ok()) return cli::Fail(report.status());
  for (const std::string& path : report->created) std::cout << "wrote " << path << "\n";
  for (const std::string& path : report->kept) std::cout << "kept  " << path << " (exists)\n";
  for (const std::string& path : report->renewed) std::cout << "renewed " << path << "\n";
  return 0;
}

}  // namespace

FL_COMMAND("provision", "create the consortium CA and a kit per participant", kUsage,
           RunProvision);

}  // namespace fl
