// fl-client: the hospital daemon. Usage: fl-client --config FILE
#include <csignal>
#include <filesystem>
#include <iostream>
#include <memory>
#include <thread>

#include <prometheus/exposer.h>

#include "client/daemon.h"
#include "client/dataset.h"
#include "client/metrics.h"
#include "client/trainer.h"
#include "common/config.h"
#include "common/tls.h"

namespace fl {
namespace {

int Die(const absl::Status& status) {
  std::cerr << "fl-client: " << status.message() << std::endl;
  return 1;
}

int Run(const std::string& config_path) {
  absl::StatusOr<ClientConfig> config = LoadClientConfig(config_path);
  if (!config.ok()) return Die(config.status());
  absl::StatusOr<TlsMaterial> tls = LoadTlsMaterial(config->tls());
  if (!tls.ok()) return Die(tls.status());
  std::error_code ec;
  std::filesystem::create_directories(config->state_dir(), ec);
  if (ec) {
    return Die(absl::FailedPreconditionError("cannot create state_dir " + config->state_dir() +
                                             ": " + ec.message()));
  }
  absl::StatusOr<Dataset> data =
      LoadDataset(config->data_dir(), config->labels_csv(), config->test_fraction());
  if (!data.ok()) return Die(data.status());
  std::cerr << "fl-client: " << data->train.size() << " training and " << data->test.size()
            << " test images, " << data->skipped_files << " files skipped, "
            << data->unlabelled_files << " without labels" << std::endl;
  TrainerOptions options;
  options.device = config->device();
  options.loader_threads = static_cast<int>(config->loader_threads());
  options.state_dir = config->state_dir();
  absl::StatusOr<std::unique_ptr<LocalTrainer>> trainer = CreateLocalTrainer(*data, options);
  if (!trainer.ok()) return Die(trainer.status());
  auto registry = std::make_shared<prometheus::Registry>();
  ClientMetrics metrics(*registry);
  metrics.images.Set(static_cast<double>(data->train.size() + data->test.size()));
  metrics.images_skipped.Set(data->skipped_files);
  std::unique_ptr<prometheus::Exposer> exposer;
  if (!config->metrics_address().empty()) {
    try {
      exposer = std::make_unique<prometheus::Exposer>(config->metrics_address());
      exposer->RegisterCollectable(registry);
    } catch (const std::exception& e) {
      return Die(absl::UnavailableError("cannot serve metrics on " + config->metrics_address() +
                                        ": " + e.what()));
    }
  }
  ClientDaemon daemon(*config, *tls, &*data, trainer->get(), &metrics);
  std::thread([&daemon] {
    sigset_t signals;
    sigemptyset(&signals);
    sigaddset(&signals, SIGINT);
    sigaddset(&signals, SIGTERM);
    int signal_number = 0;
    sigwait(&signals, &signal_number);
    daemon.Stop();
  }).detach();
  absl::Status status = daemon.Run();
  if (!status.ok()) return Die(status);
  return 0;
}

}  // namespace
}  // namespace fl

int main(int argc, char** argv) {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  std::signal(SIGPIPE, SIG_IGN);
  if (argc != 3 || std::string(argv[1]) != "--config") {
    std::cerr << "usage: fl-client --config FILE" << std::endl;
    return 2;
  }
  return fl::Run(argv[2]);
}
