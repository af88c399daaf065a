// fl-coordinator: the consortium's coordinator daemon. Usage: fl-coordinator --config FILE
#include <csignal>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>

#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <prometheus/exposer.h>

#include "common/config.h"
#include "common/status.h"
#include "common/tls.h"
#include "server/coordinator.h"
#include "server/model_init.h"
#include "server/service.h"

namespace fl {
namespace {

int Die(const absl::Status& status) {
  std::cerr << "fl-coordinator: " << status.message() << std::endl;
  return 1;
}

absl::Status WritePortFile(const std::string& path, int port) {
  if (path.empty()) return absl::OkStatus();
  const std::string tmp = path + ".tmp";
  std::ofstream(tmp) << port << "\n";
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) return absl::UnavailableError(absl::StrCat("cannot write port file ", path));
  return absl::OkStatus();
}

std::unique_ptr<prometheus::Exposer> StartMetrics(const CoordinatorConfig& config,
                                                  std::shared_ptr<prometheus::Registry> registry) {
  if (config.metrics_address().empty()) return nullptr;
  auto exposer = std::make_unique<prometheus::Exposer>(config.metrics_address());
  exposer->RegisterCollectable(registry);
  for (int port : exposer->GetListeningPorts()) {
    std::cerr << "fl-coordinator: metrics on port " << port << std::endl;
    if (!config.port_file().empty()) WritePortFile(config.port_file() + ".metrics", port).IgnoreError();
  }
  return exposer;
}

int Run(const std::string& config_path) {
  absl::StatusOr<CoordinatorConfig> config = LoadCoordinatorConfig(config_path);
  if (!config.ok()) return Die(config.status());
  absl::StatusOr<TlsMaterial> tls = LoadTlsMaterial(config->tls());
  if (!tls.ok()) return Die(tls.status());
  std::error_code ec;
  std::filesystem::create_directories(config->state_dir(), ec);
  absl::StatusOr<std::unique_ptr<Store>> store =
      Store::Open((std::filesystem::path(config->state_dir()) / "state.db").string());
  if (!store.ok()) return Die(store.status());
  auto registry = std::make_shared<prometheus::Registry>();
  CoordinatorMetrics metrics(*registry);
  std::unique_ptr<prometheus::Exposer> exposer;
  try {
    exposer = StartMetrics(*config, registry);
  } catch (const std::exception& e) {
    return Die(absl::UnavailableError(absl::StrCat("cannot serve metrics on ",
                                                   config->metrics_address(), ": ", e.what())));
  }
  Coordinator core(*config, store->get(), &metrics, InitModelFromRegistry);
  if (absl::Status s = core.Start(); !s.ok()) return Die(s);
  FederationService federation(&core);
  AdminService admin(&core);
  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(config->listen_address(), MakeServerCredentials(*tls), &port);
  builder.RegisterService(&federation);
  builder.RegisterService(&admin);
  builder.SetMaxReceiveMessageSize(16 << 20);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 5000);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server || port == 0) {
    return Die(absl::UnavailableError(absl::StrCat("cannot listen on ", config->listen_address())));
  }
  if (absl::Status s = WritePortFile(config->port_file(), port); !s.ok()) return Die(s);
  std::cerr << "fl-coordinator: listening on port " << port << std::endl;
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  int signal_number = 0;
  sigwait(&signals, &signal_number);
  std::cerr << "fl-coordinator: stopping on signal " << signal_number << std::endl;
  core.Shutdown();
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  return 0;
}

}  // namespace
}  // namespace fl

int main(int argc, char** argv) {
  // Block the stop signals in every thread; the main thread waits for them.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  std::signal(SIGPIPE, SIG_IGN);
  if (argc != 3 || std::string(argv[1]) != "--config") {
    std::cerr << "usage: fl-coordinator --config FILE" << std::endl;
    return 2;
  }
  return fl::Run(argv[2]);
}
