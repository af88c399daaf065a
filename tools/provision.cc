#include "tools/provision.h"

#include <arpa/inet.h>
#include <google/protobuf/message.h>
#include <google/protobuf/text_format.h>
#include <sys/stat.h>

#include <algorithm>
#include <filesystem>
#include <set>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/status.h"
#include "common/x509.h"
#include "fl/config.pb.h"

namespace fl {
namespace {

constexpr int kMinCaDays = 3650;
constexpr char kCaName[] = "fl consortium CA";

bool FileExists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

struct HostPort {
  std::string host;
  int port = 0;
};

// "host:port" or "[v6]:port".
absl::StatusOr<HostPort> ParseHostPort(const std::string& address) {
  size_t colon = address.rfind(':');
  auto bad = [&address](const std::string& why) {
    return absl::InvalidArgumentError(
        absl::StrCat("--coordinator-address '", address, "' must be HOST:PORT (", why, ")"));
  };
  if (colon == std::string::npos || colon == 0) return bad("no host or port");
  HostPort out;
  out.host = address.substr(0, colon);
  if (out.host.size() > 2 && out.host.front() == '[' && out.host.back() == ']') {
    out.host = out.host.substr(1, out.host.size() - 2);
  }
  if (!absl::SimpleAtoi(address.substr(colon + 1), &out.port) || out.port <= 0 ||
      out.port > 65535) {
    return bad("port must be 1-65535");
  }
  return out;
}

bool IsIpAddress(const std::string& host) {
  unsigned char buffer[16];
  return inet_pton(AF_INET, host.c_str(), buffer) == 1 ||
         inet_pton(AF_INET6, host.c_str(), buffer) == 1;
}

// Writes the message as a text-format config headed by a comment naming its type.
absl::StatusOr<std::string> ConfigText(const google::protobuf::Message& message) {
  std::string body;
  if (!google::protobuf::TextFormat::PrintToString(message, &body)) {
    return absl::InternalError(absl::StrCat("cannot print ", message.GetTypeName()));
  }
  return absl::StrCat("# ", message.GetTypeName(), ", written by flctl provision.\n", body);
}

TlsConfig KitTls(const std::string& kit) {
  TlsConfig tls;
  tls.set_ca_file(kit + "/ca.pem");
  tls.set_cert_file(kit + "/cert.pem");
  tls.set_key_file(kit + "/key.pem");
  return tls;
}

// The CA in <out>/ca, created if neither of its files exists.
absl::StatusOr<KeyAndCert> LoadOrCreateCa(const std::string& out, int valid_days,
                                          ProvisionReport* report) {
  std::string dir = out + "/ca";
  std::string key_path = dir + "/ca.key", cert_path = dir + "/ca.pem";
  bool has_key = FileExists(key_path), has_cert = FileExists(cert_path);
  if (has_key && has_cert) {
    KeyAndCert ca;
    ASSIGN_OR_RETURN(ca.key_pem, ReadFileToString(key_path));
    ASSIGN_OR_RETURN(ca.cert_pem, ReadFileToString(cert_path));
    RETURN_IF_ERROR(Annotate(CheckKeyMatchesCert(ca.key_pem, ca.cert_pem),
                             absl::StrCat("existing CA in ", dir)));
    report->kept.push_back(dir);
    return ca;
  }
  if (has_key || has_cert) {
    return absl::FailedPreconditionError(absl::StrCat(
        dir, " holds only one of ca.key and ca.pem; restore the other or remove the folder"));
  }
  ASSIGN_OR_RETURN(KeyAndCert ca, CreateCa(kCaName, std::max(valid_days, kMinCaDays)));
  RETURN_IF_ERROR(MakeDirs(dir, 0700));
  RETURN_IF_ERROR(WriteFileAtomic(key_path, ca.key_pem, 0600));
  RETURN_IF_ERROR(WriteFileAtomic(cert_path, ca.cert_pem, 0644));
  report->created.push_back(dir);
  return ca;
}

// Issues and writes one kit unless its cert.pem exists. cert.pem is written last, so a kit
// interrupted half-way is completed by the next run. An existing kit named in o.renew gets a
// new key and certificate; its config is left as it is.
absl::Status WriteKit(const ProvisionOptions& o, const std::string& kit, const KeyAndCert& ca,
                      const CertRequest& request, const std::string& conf_name,
                      const google::protobuf::Message& config, ProvisionReport* report) {
  if (FileExists(kit + "/cert.pem")) {
    const std::string name = request.organizational_unit == std::string("coordinator")
                                 ? "coordinator"
                                 : request.common_name;
    if (std::find(o.renew.begin(), o.renew.end(), name) == o.renew.end()) {
      report->kept.push_back(kit);
      return absl::OkStatus();
    }
    ASSIGN_OR_RETURN(KeyAndCert own, IssueCert(ca, request));
    RETURN_IF_ERROR(WriteFileAtomic(kit + "/key.pem", own.key_pem, 0600));
    RETURN_IF_ERROR(WriteFileAtomic(kit + "/cert.pem", own.cert_pem, 0644));
    report->renewed.push_back(kit);
    return absl::OkStatus();
  }
  ASSIGN_OR_RETURN(KeyAndCert own, IssueCert(ca, request));
  ASSIGN_OR_RETURN(std::string conf, ConfigText(config));
  RETURN_IF_ERROR(MakeDirs(kit, 0700));
  if (::chmod(kit.c_str(), 0700) != 0) {
    return absl::InternalError(absl::StrCat("cannot set the mode of ", kit));
  }
  RETURN_IF_ERROR(WriteFileAtomic(kit + "/ca.pem", ca.cert_pem, 0644));
  RETURN_IF_ERROR(WriteFileAtomic(kit + "/key.pem", own.key_pem, 0600));
  RETURN_IF_ERROR(WriteFileAtomic(kit + "/" + conf_name, conf, 0600));
  RETURN_IF_ERROR(WriteFileAtomic(kit + "/cert.pem", own.cert_pem, 0644));
  report->created.push_back(kit);
  return absl::OkStatus();
}

CertRequest Participant(const std::string& name, const char* role, int valid_days) {
  CertRequest request;
  request.common_name = name;
  request.organizational_unit = role;
  request.valid_days = valid_days;
  return request;
}

absl::Status ProvisionCoordinator(const ProvisionOptions& o, const std::string& out,
                                  const HostPort& hp, const KeyAndCert& ca,
                                  ProvisionReport* report) {
  CertRequest request = Participant(o.coordinator_name, "coordinator", o.valid_days);
  std::set<std::string> dns = {o.coordinator_name, "localhost"};
  std::set<std::string> ips = {"127.0.0.1", "::1"};
  (IsIpAddress(hp.host) ? ips : dns).insert(hp.host);
  dns.insert(o.coordinator_dns.begin(), o.coordinator_dns.end());
  request.dns_names.assign(dns.begin(), dns.end());
  request.ip_addresses.assign(ips.begin(), ips.end());

  std::string kit = out + "/coordinator";
  CoordinatorConfig config;
  config.set_listen_address(absl::StrCat("0.0.0.0:", hp.port));
  config.set_state_dir(o.installed ? kInstalledCoordinator.state : kit + "/state");
  *config.mutable_tls() = KitTls(o.installed ? kInstalledCoordinator.config : kit);
  config.set_metrics_address(o.installed && o.coordinator_metrics.empty() ? "0.0.0.0:9464"
                                                                          : o.coordinator_metrics);
  return WriteKit(o, kit, ca, request, "coordinator.conf", config, report);
}

absl::Status ProvisionSite(const ProvisionOptions& o, const std::string& out,
                           const std::string& name, const KeyAndCert& ca, ProvisionReport* report) {
  std::string kit = out + "/sites/" + name;
  ClientConfig config;
  config.set_coordinator_address(o.coordinator_address);
  config.set_coordinator_name(o.coordinator_name);
  *config.mutable_tls() = KitTls(o.installed ? kInstalledSite.config : kit);
  std::string data = o.data_root.empty() ? "/path/to/dicom" : o.data_root + "/" + name;
  config.set_data_dir(data);
  config.set_labels_csv(o.data_root.empty() ? "/path/to/labels.csv" : data + "/labels.csv");
  config.set_state_dir(o.installed ? kInstalledSite.state : kit + "/state");
  if (o.installed) config.set_metrics_address("127.0.0.1:9465");
  config.set_device("auto");
  config.mutable_budget()->set_max_epsilon(o.max_epsilon);
  config.mutable_budget()->set_delta(o.delta);
  if (o.allow_non_dp) config.mutable_policy()->set_require_dp(false);
  return WriteKit(o, kit, ca, Participant(name, "site", o.valid_days), "client.conf", config,
                  report);
}

absl::Status ProvisionAdmin(const ProvisionOptions& o, const std::string& out,
                            const std::string& name, const KeyAndCert& ca,
                            ProvisionReport* report) {
  std::string kit = out + "/admins/" + name;
  AdminConfig config;
  config.set_coordinator_address(o.coordinator_address);
  config.set_coordinator_name(o.coordinator_name);
  *config.mutable_tls() = KitTls(kit);
  return WriteKit(o, kit, ca, Participant(name, "admin", o.valid_days), "admin.conf", config,
                  report);
}

absl::Status ValidateOptions(const ProvisionOptions& o) {
  if (o.out_dir.empty()) return absl::InvalidArgumentError("missing --out");
  if (o.valid_days <= 0) return absl::InvalidArgumentError("--valid-days must be positive");
  if (!(o.max_epsilon >= 0) || !(o.delta > 0 && o.delta < 1)) {
    return absl::InvalidArgumentError("--max-epsilon must be >= 0 and --delta in (0, 1)");
  }
  std::string dns_name = o.coordinator_name;
  std::replace(dns_name.begin(), dns_name.end(), '.', '-');
  RETURN_IF_ERROR(Annotate(ValidateParticipantName(dns_name), "--coordinator-name"));
  for (const std::string& name : o.renew) {
    const bool known = name == "coordinator" ||
                       std::find(o.sites.begin(), o.sites.end(), name) != o.sites.end() ||
                       std::find(o.admins.begin(), o.admins.end(), name) != o.admins.end();
    if (!known) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--renew names '", name, "', which is not the coordinator nor in --sites or --admins"));
    }
  }
  for (const auto* names : {&o.sites, &o.admins}) {
    std::set<std::string> seen;
    for (const std::string& name : *names) {
      RETURN_IF_ERROR(ValidateParticipantName(name));
      if (!seen.insert(name).second) {
        return absl::InvalidArgumentError(absl::StrCat("'", name, "' is listed twice"));
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateParticipantName(const std::string& name) {
  auto ok_first = [](char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); };
  auto ok_rest = [&](char c) { return ok_first(c) || c == '_' || c == '-'; };
  bool ok = !name.empty() && name.size() <= 63 && ok_first(name[0]) &&
            std::all_of(name.begin() + 1, name.end(), ok_rest);
  if (ok) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      "invalid name '", name,
      "': use 1-63 lowercase letters, digits, '_' or '-', starting with a letter or digit"));
}

absl::StatusOr<ProvisionReport> Provision(const ProvisionOptions& options) {
  RETURN_IF_ERROR(ValidateOptions(options));
  ASSIGN_OR_RETURN(HostPort hp, ParseHostPort(options.coordinator_address));
  std::error_code error;
  std::filesystem::path absolute = std::filesystem::absolute(options.out_dir, error);
  if (error) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot resolve --out ", options.out_dir, ": ", error.message()));
  }
  std::string out = absolute.lexically_normal().string();
  if (out.size() > 1 && out.back() == '/') out.pop_back();
  ProvisionReport report;
  RETURN_IF_ERROR(MakeDirs(out, 0700));
  ASSIGN_OR_RETURN(KeyAndCert ca, LoadOrCreateCa(out, options.valid_days, &report));
  RETURN_IF_ERROR(ProvisionCoordinator(options, out, hp, ca, &report));
  for (const std::string& site : options.sites) {
    RETURN_IF_ERROR(ProvisionSite(options, out, site, ca, &report));
  }
  for (const std::string& admin : options.admins) {
    RETURN_IF_ERROR(ProvisionAdmin(options, out, admin, ca, &report));
  }
  return report;
}

}  // namespace fl
