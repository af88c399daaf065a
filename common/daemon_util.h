// Start-up and shutdown pieces shared by fl-coordinator and fl-client.
#pragma once

#include <memory>
#include <optional>
#include <string>

#include <prometheus/registry.h>

#include "absl/status/statusor.h"
#include "common/monitoring.h"

namespace fl {

// Blocks SIGINT and SIGTERM in the calling thread and every thread it starts afterwards, so that
// only WaitForStopSignal sees them; ignores SIGPIPE. Call first thing in main.
void BlockStopSignals();

// Waits for SIGINT or SIGTERM and returns its number. REQUIRES: BlockStopSignals() was called.
int WaitForStopSignal();

// FILE from "PROGRAM --config FILE" (CLI11, common/cli.h). Otherwise nullopt, and `*exit_code`
// is what to exit with: 0 after --help (the help on stdout), kUsageExit after a usage error (the
// error on stderr). `summary` opens the help.
std::optional<std::string> ConfigFlag(int argc, char** argv, const char* program,
                                      const char* summary, int* exit_code);

// Logs "PROGRAM: <status message>" and returns exit code 1.
int ExitWithError(const char* program, const absl::Status& status);

// Writes `port` to `path` atomically; a no-op when `path` is empty.
absl::Status WritePortFile(const std::string& path, int port);

// Serves `registry` and the health probes on http://ADDRESS/{metrics,healthz,readyz}
// (common/monitoring.h); nullptr when `address` is empty. The bound port is logged and, when
// `port_file` is set, written to it. Not ready until the caller adds its readiness checks.
absl::StatusOr<std::unique_ptr<MonitoringServer>> StartMonitoring(
    const char* program, const std::string& address, std::shared_ptr<prometheus::Registry> registry,
    const std::string& port_file);

// Readiness of the TLS material a daemon serves: the copies under STATE_DIR/tls/current that
// gRPC reads (TlsWatcher) are readable and the certificate verifies against the CA now (not
// expired, not yet valid, or replaced by a mismatching file: not ready).
ReadinessCheck LiveTlsReadiness(const std::string& state_dir);

// OK if `path` is a folder this process may access with `mode` (R_OK, W_OK, X_OK as for
// access(2)); else FAILED_PRECONDITION naming `what`, the path and the reason.
absl::Status CheckFolderAccess(const std::string& what, const std::string& path, int mode);

}  // namespace fl
