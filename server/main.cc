// fl-coordinator: the consortium's coordinator daemon. Usage: fl-coordinator --config FILE
#include <filesystem>
#include <memory>
#include <set>

#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include "common/config.h"
#include "common/daemon_util.h"
#include "common/log.h"
#include "common/status.h"
#include "common/tls.h"
#include "server/coordinator.h"
#include "server/model_init.h"
#include "server/service.h"

namespace fl {
namespace {

int Die(const absl::Status& status) { return ExitWithError("fl-coordinator", status); }

int Run(const std::string& config_path) {
  absl::StatusOr<CoordinatorConfig> config = LoadCoordinatorConfig(config_path);
  if (!config.ok()) return Die(config.status());
  absl::StatusOr<TlsMaterial> tls = LoadTlsMaterial(config->tls());
  if (!tls.ok()) return Die(tls.status());
  std::error_code ec;
  std::filesystem::create_directories(config->state_dir(), ec);
  if (ec) {
    return Die(absl::FailedPreconditionError(
        absl::StrCat("cannot create state_dir ", config->state_dir(), ": ", ec.message())));
  }
  absl::StatusOr<std::unique_ptr<Store>> store =
      Store::Open((std::filesystem::path(config->state_dir()) / "state.db").string());
  if (!store.ok()) return Die(store.status());
  auto registry = std::make_shared<prometheus::Registry>();
  CoordinatorMetrics metrics(*registry);
  absl::StatusOr<std::unique_ptr<prometheus::Exposer>> exposer = StartMetricsExposer(
      "fl-coordinator", config->metrics_address(), registry,
      config->port_file().empty() ? "" : config->port_file() + ".metrics");
  if (!exposer.ok()) return Die(exposer.status());
  Coordinator core(*config, store->get(), &metrics, InitModelFromRegistry);
  if (absl::Status s = core.Start(); !s.ok()) return Die(s);
  const Authorizer auth(std::set<std::string>(config->revoked_certificates().begin(),
                                               config->revoked_certificates().end()));
  FederationService federation(&core, &auth);
  AdminService admin(&core, &auth);
  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(config->listen_address(), MakeServerCredentials(*tls), &port);
  builder.RegisterService(&federation);
  builder.RegisterService(&admin);
  ConfigureServerBuilder(builder);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server || port == 0) {
    return Die(absl::UnavailableError(absl::StrCat("cannot listen on ", config->listen_address())));
  }
  if (absl::Status s = WritePortFile(config->port_file(), port); !s.ok()) return Die(s);
  LogLine("fl-coordinator", absl::StrCat("listening on port ", port));
  const int signal_number = WaitForStopSignal();
  LogLine("fl-coordinator", absl::StrCat("stopping on signal ", signal_number));
  core.Shutdown();
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  return 0;
}

}  // namespace
}  // namespace fl

int main(int argc, char** argv) {
  fl::BlockStopSignals();  // before any thread starts; the main thread waits for them
  std::optional<std::string> config = fl::ConfigFlag(argc, argv, "fl-coordinator");
  return config ? fl::Run(*config) : 2;
}
