// flctl provision: the consortium CA and one kit (certificate, key, config) per participant.
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_split.h"
#include "common/status.h"
#include "tools/cli.h"
#include "tools/provision.h"

namespace fl {
namespace {

constexpr char kFooter[] =
    "Creates DIR/ca (once) and the kits DIR/coordinator, DIR/sites/NAME, DIR/admins/NAME.\n"
    "Existing kits are never changed, so running it again (or with --add) only adds\n"
    "participants; --renew gives the named existing kits a new key and certificate, which\n"
    "running daemons pick up without a restart.\n"
    "Each site's kit caps its privacy budget (--max-epsilon at --delta) and, with a cap, its\n"
    "policy declines every training task without DP; --allow-non-dp writes\n"
    "policy { require_dp: false } instead (demos, non-private baselines).\n";

// The words as given: comma-separated lists and the range-checked validity.
struct ProvisionArgs {
  ProvisionOptions options;
  std::string coordinator_dns, sites, admins, renew;
  int64_t valid_days = ProvisionOptions().valid_days;
  bool add = false;
};

std::vector<std::string> List(const std::string& value) {
  return absl::StrSplit(value, ',', absl::SkipWhitespace());
}

absl::StatusOr<ProvisionOptions> FinishOptions(const ProvisionArgs& args) {
  ProvisionOptions o = args.options;
  o.coordinator_dns = List(args.coordinator_dns);
  o.sites = List(args.sites);
  o.admins = List(args.admins);
  o.renew = List(args.renew);
  if (args.valid_days <= 0 || args.valid_days > 36500) {
    return absl::InvalidArgumentError("--valid-days must be between 1 and 36500");
  }
  o.valid_days = static_cast<int>(args.valid_days);
  return o;
}

int RunProvision(const CLI::App& app, const ProvisionArgs& args) {
  auto options = FinishOptions(args);
  if (!options.ok()) return cli::UsageError(app, options.status());
  auto report = Provision(*options);
  if (!report.ok()) return cli::Fail(report.status());
  for (const std::string& path : report->created) std::cout << "wrote " << path << "\n";
  for (const std::string& path : report->kept) std::cout << "kept  " << path << " (exists)\n";
  for (const std::string& path : report->renewed) std::cout << "renewed " << path << "\n";
  return 0;
}

cli::CommandRun SetUpProvision(CLI::App& app) {
  auto args = std::make_shared<ProvisionArgs>();
  ProvisionOptions& o = args->options;
  app.footer(kFooter);
  app.add_option("--out", o.out_dir, "folder of the CA and the kits")->required();
  app.add_option("--coordinator-address", o.coordinator_address,
                 "HOST:PORT the sites and admins dial")
      ->required();
  app.add_option("--coordinator-name", o.coordinator_name,
                 "the coordinator certificate's CN and a SAN");
  app.add_option("--coordinator-dns", args->coordinator_dns,
                 "more DNS names of the coordinator, comma-separated");
  app.add_option("--sites", args->sites, "site names, comma-separated");
  app.add_option("--admins", args->admins, "admin names, comma-separated");
  app.add_option("--valid-days", args->valid_days, "validity of participant certificates");
  app.add_option("--data-root", o.data_root,
                 "a site's data_dir is DATA_ROOT/SITE (default: placeholders)");
  app.add_option("--coordinator-metrics", o.coordinator_metrics,
                 "HOST:PORT of the coordinator's /metrics (default: none)");
  app.add_option("--max-epsilon", o.max_epsilon, "each site's privacy budget cap");
  app.add_option("--delta", o.delta, "the delta of that cap");
  app.add_flag("--add", args->add, "only add participants (what every run does)");
  app.add_flag("--allow-non-dp", o.allow_non_dp,
               "sites' kits also train jobs without DP (policy { require_dp: false })");
  app.add_flag("--installed", o.installed,
               "configs name the paths deploy/ installs kits at (systemd units, containers, "
               "Kubernetes): /etc/fl-coordinator + /var/lib/fl-coordinator, /etc/fl-client + "
               "/var/lib/fl-client; metrics on 0.0.0.0:9464 (coordinator) and 127.0.0.1:9465 "
               "(site)");
  app.add_option("--renew", args->renew,
                 "existing kits to re-key: coordinator and/or site or admin names, "
                 "comma-separated");
  return [&app, args] { return RunProvision(app, *args); };
}

}  // namespace

FL_COMMAND("provision", "create the consortium CA and a kit per participant", SetUpProvision);

}  // namespace fl
