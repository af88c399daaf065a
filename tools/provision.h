// `flctl provision`: the consortium's CA and one kit per participant (coordinator, sites,
// admins), each a folder holding ca.pem, cert.pem, key.pem (0600) and the daemon's config file.
//
// Layout under `out_dir`:
//   ca/ca.key, ca/ca.pem                       the consortium CA (created once, then reused)
//   coordinator/{ca.pem,cert.pem,key.pem,coordinator.conf}
//   sites/<name>/{ca.pem,cert.pem,key.pem,client.conf}
//   admins/<name>/{ca.pem,cert.pem,key.pem,admin.conf}
// Provisioning is additive: a kit whose cert.pem exists is left untouched, so running it again
// with more sites issues only the new kits and never changes a certificate already handed out,
// except for the participants named in `renew`: they get a new key and certificate in place
// (key.pem, then cert.pem, each written atomically), which running daemons pick up by
// themselves (TlsConfig.reload_seconds).
#pragma once

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace fl {

// Where deploy/ puts a daemon's kit (the ConfigurationDirectory of its systemd unit, a Secret in
// Kubernetes) and its state_dir (StateDirectory, a volume).
struct InstalledPaths {
  const char* config;
  const char* state;
};
inline constexpr InstalledPaths kInstalledCoordinator{"/etc/fl-coordinator",
                                                      "/var/lib/fl-coordinator"};
inline constexpr InstalledPaths kInstalledSite{"/etc/fl-client", "/var/lib/fl-client"};

struct ProvisionOptions {
  std::string out_dir;                           // made absolute; the configs carry absolute paths
  std::string coordinator_address;               // HOST:PORT the sites and admins dial
  std::string coordinator_name = "coordinator";  // the coordinator certificate's CN and a SAN
  std::vector<std::string> coordinator_dns;      // extra SAN DNS names of the coordinator
  std::vector<std::string> sites;
  std::vector<std::string> admins;
  int valid_days = 825;  // of participant certificates; the CA gets at least ten years
  // If set, a site's data_dir is <data_root>/<site> and labels_csv <data_root>/<site>/labels.csv;
  // otherwise placeholders that hospital IT replaces.
  std::string data_root;
  std::string coordinator_metrics;  // metrics_address of the coordinator; empty disables
  double max_epsilon = 10.0;        // each site's privacy budget cap
  double delta = 1e-6;
  // Sites' kits say policy { require_dp: false }: they also train jobs without DP.
  bool allow_non_dp = false;
  // The configs of the coordinator's and the sites' kits name where deploy/ installs them
  // (systemd units, container images, Kubernetes) instead of where they are written: the kit's
  // files in kInstalledCoordinator / kInstalledSite .config, the state in .state; metrics on
  // 0.0.0.0:9464 (coordinator, unless coordinator_metrics is set) and 127.0.0.1:9465 (site).
  // Admin kits are unaffected (flctl runs where they are).
  bool installed = false;
  // Existing kits to re-key: "coordinator" (the coordinator's kit), site or admin names.
  std::vector<std::string> renew;
};

// What one run did, as paths of kit folders (and of the CA folder).
struct ProvisionReport {
  std::vector<std::string> created;
  std::vector<std::string> kept;     // already provisioned, left untouched
  std::vector<std::string> renewed;  // existing kits given a new key and certificate
};

// Creates the CA (or reuses the one in out_dir/ca) and every missing kit.
absl::StatusOr<ProvisionReport> Provision(const ProvisionOptions& options);

// OK if `name` may name a site or an admin: [a-z0-9][a-z0-9_-]{0,62}.
absl::Status ValidateParticipantName(const std::string& name);

}  // namespace fl
