#include "common/daemon_util.h"

#include <pthread.h>

#include <csignal>
#include <filesystem>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/cli.h"
#include "common/file_util.h"
#include "common/log.h"

namespace fl {
namespace {

sigset_t StopSignals() {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  return signals;
}

}  // namespace

void BlockStopSignals() {
  const sigset_t signals = StopSignals();
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  std::signal(SIGPIPE, SIG_IGN);
}

int WaitForStopSignal() {
  const sigset_t signals = StopSignals();
  int signal_number = 0;
  sigwait(&signals, &signal_number);
  return signal_number;
}

std::optional<std::string> ConfigFlag(int argc, char** argv, const char* program,
                                      const char* summary, int* exit_code) {
  CLI::App app(summary, program);
  ConfigureApp(app);
  std::string config;
  app.add_option("--config", config,
                 "the daemon's config: a text-format protobuf message (proto/fl/config.proto); "
                 "unknown fields and invalid values are refused at start-up")
      ->required();
  if (std::optional<int> code =
          ParseCommandLine(app, std::vector<std::string>(argv + 1, argv + argc))) {
    *exit_code = *code;
    return std::nullopt;
  }
  return config;
}

int ExitWithError(const char* program, const absl::Status& status) {
  LogLine(program, std::string(status.message()));
  return 1;
}

absl::Status WritePortFile(const std::string& path, int port) {
  if (path.empty()) return absl::OkStatus();
  return WriteFileAtomic(path, absl::StrCat(port, "\n"), 0644);
}

absl::StatusOr<std::unique_ptr<prometheus::Exposer>> StartMetricsExposer(
    const char* program, const std::string& address, std::shared_ptr<prometheus::Registry> registry,
    const std::string& port_file) {
  if (address.empty()) return nullptr;
  std::unique_ptr<prometheus::Exposer> exposer;
  try {
    exposer = std::make_unique<prometheus::Exposer>(address);
  } catch (const std::exception& e) {
    return absl::UnavailableError(
        absl::StrCat("cannot serve metrics on ", address, ": ", e.what()));
  }
  exposer->RegisterCollectable(registry);
  for (int port : exposer->GetListeningPorts()) {
    LogLine(program, absl::StrCat("metrics on port ", port));
    if (absl::Status s = WritePortFile(port_file, port); !s.ok()) return s;
  }
  return exposer;
}

absl::StatusOr<std::unique_ptr<TlsWatcher>> StartTlsWatcher(
    const char* program, const TlsConfig& tls, const std::string& state_dir,
    prometheus::Family<prometheus::Counter>* reloads) {
  const std::string active = (std::filesystem::path(state_dir) / "tls").string();
  return TlsWatcher::Start(tls, active, [program, reloads](const absl::Status& status) {
    reloads->Add({{"result", status.ok() ? "ok" : "refused"}}).Increment();
    LogLine(program, status.ok() ? "TLS files changed and checked: new connections use them within "
                                   "reload_seconds"
                                 : absl::StrCat("TLS files changed but refused (still using the "
                                                "previous ones): ",
                                                status.message()));
  });
}

}  // namespace fl
