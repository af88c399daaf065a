// fl-coordinator: the consortium's coordinator daemon. Usage: fl-coordinator --config FILE

#include <filesystem>
#include <memory>
#include <set>
#include <thread>

#include <unistd.h>

#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/resource_quota.h>

#include "common/config.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "common/daemon_util.h"
#include "common/transport/tls_watch.h"
#include "common/file_util.h"
#include "common/log.h"
#include "common/memory.h"
#include "common/status.h"
#include "common/transport/tls.h"
#include "server/coordinator.h"
#include "server/model_init.h"
#include "server/service.h"

namespace fl {
namespace {

int Die(const absl::Status& status) { return ExitWithError("fl-coordinator", status); }

// Rereads the config file's revocation list every `interval` until `stop` is notified: a
// certificate added to (or removed from) revoked_certificates takes effect without a restart.
void WatchRevocations(const std::string& config_path, absl::Duration interval, Authorizer* auth,
                      CoordinatorMetrics* metrics, absl::Notification* stop) {
  std::string last_error;  // a broken file is reported once per distinct error
  while (!stop->WaitForNotificationWithTimeout(interval)) {
    absl::StatusOr<CoordinatorConfig> config = LoadCoordinatorConfig(config_path);
    if (!config.ok()) {
      if (last_error != config.status().message()) {
        last_error = std::string(config.status().message());
        metrics->config_reloads.Add({{"result", "refused"}}).Increment();
        LogLine("fl-coordinator",
                absl::StrCat("config file unreadable, revocation list kept: ", last_error));
      }
      continue;
    }
    if (auth->SetRevoked(
            {config->revoked_certificates().begin(), config->revoked_certificates().end()})) {
      metrics->config_reloads.Add({{"result", "ok"}}).Increment();
      LogLine("fl-coordinator",
              absl::StrCat("revocation list reloaded: ", config->revoked_certificates_size(),
                           " revoked certificates"));
    }
  }
}

// Ready once serving: the state answers and may be written, and the TLS files gRPC serves are
// valid now. Before every scrape the mirrors of the core's sites and jobs and the
// certificates' expiry are set.
void WatchHealth(MonitoringServer& monitoring, const CoordinatorConfig& config, Store& store,
                 Coordinator& core, const TlsWatcher& tls, CoordinatorMetrics& metrics) {
  monitoring.AddReadinessCheck("state", [&store, dir = config.state_dir()] {
    RETURN_IF_ERROR(CheckFolderAccess("state_dir", dir, R_OK | W_OK | X_OK));
    return store.Check();
  });
  monitoring.AddReadinessCheck("tls", LiveTlsReadiness(config.state_dir()));
  monitoring.AddScrapeHook([&core, &tls, &metrics] {
    metrics.RefreshStatus(core.ListSites(), core.ListJobs(),
                          absl::ToDoubleSeconds(absl::Now() - absl::UnixEpoch()));
    ExportCertificateExpiry(tls, &metrics.tls_certificate_expiry);
  });
}

int Run(const std::string& config_path) {
  absl::StatusOr<CoordinatorConfig> config = LoadCoordinatorConfig(config_path);
  if (!config.ok()) return Die(config.status());
  if (absl::Status s = MakeDirs(config->state_dir(), 0700); !s.ok()) {
    return Die(Annotate(s, "state_dir"));
  }
  auto registry = std::make_shared<prometheus::Registry>();
  CoordinatorMetrics metrics(*registry);
  absl::StatusOr<std::unique_ptr<TlsWatcher>> tls =
      StartTlsWatcher("fl-coordinator", config->tls(), config->state_dir(), &metrics.tls_reloads);
  if (!tls.ok()) return Die(tls.status());
  absl::StatusOr<std::unique_ptr<Store>> store =
      Store::Open((std::filesystem::path(config->state_dir()) / "state.db").string());
  if (!store.ok()) return Die(store.status());
  absl::StatusOr<std::unique_ptr<MonitoringServer>> monitoring =
      StartMonitoring("fl-coordinator", config->metrics_address(), registry,
                      config->port_file().empty() ? "" : config->port_file() + ".metrics");
  if (!monitoring.ok()) return Die(monitoring.status());
  Coordinator core(*config, store->get(), &metrics, InitModelFromRegistry);
  if (absl::Status s = core.Start(); !s.ok()) return Die(s);
  Authorizer auth(std::set<std::string>(config->revoked_certificates().begin(),
                                        config->revoked_certificates().end()));
  FederationService federation(&core, &auth);
  AdminService admin(&core, &auth);
  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(config->listen_address(), MakeServerCredentials((*tls)->provider()),
                           &port);
  builder.RegisterService(&federation);
  builder.RegisterService(&admin);
  ConfigureServerBuilder(builder);
  grpc::ResourceQuota quota("fl-coordinator");
  quota.Resize(size_t{config->grpc_memory_mib()} << 20);
  builder.SetResourceQuota(quota);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server || port == 0) {
    return Die(absl::UnavailableError(absl::StrCat("cannot listen on ", config->listen_address())));
  }
  if (absl::Status s = WritePortFile(config->port_file(), port); !s.ok()) return Die(s);
  LogLine("fl-coordinator", absl::StrCat("listening on port ", port));
  if (*monitoring) WatchHealth(**monitoring, *config, **store, core, **tls, metrics);
  absl::Notification stop_watching;
  std::thread revocations(WatchRevocations, config_path,
                          absl::Seconds(config->tls().reload_seconds()), &auth, &metrics,
                          &stop_watching);
  const int signal_number = WaitForStopSignal();
  LogLine("fl-coordinator", absl::StrCat("stopping on signal ", signal_number));
  monitoring->reset();  // its hooks read the core: no scrape or probe from here on
  stop_watching.Notify();
  revocations.join();
  core.Shutdown();
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  return 0;
}

}  // namespace
}  // namespace fl

int main(int argc, char** argv) {
  fl::ReturnFreedModels();
  fl::BlockStopSignals();  // before any thread starts; the main thread waits for them
  int exit_code = 0;
  std::optional<std::string> config = fl::ConfigFlag(
      argc, argv, "fl-coordinator",
      "fl-coordinator: schedules the federation's jobs and rounds and aggregates the sites' "
      "updates",
      &exit_code);
  return config ? fl::Run(*config) : exit_code;
}
