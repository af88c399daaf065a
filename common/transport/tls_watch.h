// Certificate rotation without a restart: a daemon's TLS files are reread periodically and a
// changed set goes live for new connections once it passes the same checks as at start-up.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <thread>

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "common/env.h"
#include "common/transport/tls.h"
#include "fl/config.pb.h"

namespace fl {

class TlsWatcher {
 public:
  // Called after each reload attempt of changed files: OK when the new set is live, else why
  // it was refused (the last good set stays in use).
  using ReloadCallback = std::function<void(const absl::Status&)>;

  // Loads `config`'s files with LoadTlsMaterial (an error fails the start-up), copies them into
  // `active_dir` (created, mode 0700; the copies written through `env`) and watches them every
  // config.reload_seconds().
  static absl::StatusOr<std::unique_ptr<TlsWatcher>> Start(const TlsConfig& config,
                                                           const std::string& active_dir,
                                                           ReloadCallback on_reload,
                                                           Env* env = Env::Default());
  ~TlsWatcher();
  TlsWatcher(const TlsWatcher&) = delete;
  TlsWatcher& operator=(const TlsWatcher&) = delete;

  // For MakeServerCredentials / MakeChannel: always serves the last good set.
  CertificateProvider provider() const { return provider_; }
  // The last good set.
  TlsMaterial current() const;
  // Rereads the files now (the watch thread calls this every reload_seconds). Returns whether
  // a changed set went live; unchanged files give OK without a reload. A changed set that fails
  // the checks is refused (an error) only when a second check finds the same files, so a
  // rotation caught between writing the key and the certificate is not reported.
  absl::StatusOr<bool> CheckNow();

 private:
  TlsWatcher(TlsConfig config, std::string active_dir, ReloadCallback on_reload, Env* env);
  // Writes `material` as a new generation folder and points active_dir/current at it.
  absl::Status Publish(const TlsMaterial& material);
  void Loop();

  const TlsConfig config_;
  const std::string active_dir_;
  const ReloadCallback on_reload_;
  Env* const env_;
  CertificateProvider provider_;
  mutable absl::Mutex mu_;
  TlsMaterial current_ ABSL_GUARDED_BY(mu_);
  std::string last_seen_ ABSL_GUARDED_BY(mu_);  // the files' bytes at the last check
  std::string unsettled_ ABSL_GUARDED_BY(mu_);  // a failing set seen once, not yet refused
  uint64_t generation_ ABSL_GUARDED_BY(mu_) = 0;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

// For the daemons.

// Sets `expiry` {file="cert"} and {file="ca"} to the Unix time at which the live certificate
// and the first certificate of the CA bundle expire (for the certificate-expiry alert).
void ExportCertificateExpiry(const TlsWatcher& watcher,
                             prometheus::Family<prometheus::Gauge>* expiry);

// Watches the daemon's TLS files (validated copies live in STATE_DIR/tls); each reload of
// changed files is logged and counted in `reloads` by result (ok, refused).
absl::StatusOr<std::unique_ptr<TlsWatcher>> StartTlsWatcher(
    const char* program, const TlsConfig& tls, const std::string& state_dir,
    prometheus::Family<prometheus::Counter>* reloads);

}  // namespace fl
