#include "common/daemon_util.h"

#include <pthread.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/cli.h"
#include "common/file_util.h"
#include "common/env.h"
#include "common/log.h"
#include "common/status.h"
#include "common/x509.h"

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

absl::StatusOr<std::unique_ptr<MonitoringServer>> StartMonitoring(
    const char* program, const std::string& address, std::shared_ptr<prometheus::Registry> registry,
    const std::string& port_file) {
  if (address.empty()) return nullptr;
  ASSIGN_OR_RETURN(std::unique_ptr<MonitoringServer> server,
                   MonitoringServer::Start(address, std::move(registry)));
  for (int port : server->ports()) {
    LogLine(program, absl::StrCat("metrics on port ", port, " (/metrics, /healthz, /readyz)"));
    RETURN_IF_ERROR(WritePortFile(port_file, port));
  }
  return server;
}

ReadinessCheck LiveTlsReadiness(const std::string& state_dir) {
  const std::string live = (std::filesystem::path(state_dir) / "tls" / "current").string();
  return [live]() -> absl::Status {
    ASSIGN_OR_RETURN(std::string cert, ReadFileToString(live + "/cert.pem"));
    ASSIGN_OR_RETURN(std::string ca, ReadFileToString(live + "/ca.pem"));
    if (::access((live + "/key.pem").c_str(), R_OK) != 0) {
      return ErrnoStatus("reading", live + "/key.pem", errno);
    }
    return VerifyCertChain(ca, cert);
  };
}

absl::Status CheckFolderAccess(const std::string& what, const std::string& path, int mode) {
  auto refused = [&](const char* why) {
    return absl::FailedPreconditionError(absl::StrCat(what, " ", path, ": ", why));
  };
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return refused(std::strerror(errno));
  if (!S_ISDIR(st.st_mode)) return refused("not a folder");
  if (::access(path.c_str(), mode) != 0) return refused(std::strerror(errno));
  return absl::OkStatus();
}

}  // namespace fl
