#include "common/transport/tls_watch.h"

#include <sys/stat.h>

#include <filesystem>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/log.h"
#include "common/status.h"
#include "common/x509.h"

namespace fl {
namespace fs = std::filesystem;

namespace {

// The three files' bytes, length-prefixed so that moving bytes between files is a change, and
// the key's mode (a key made world-readable is a change, and refused).
std::string Snapshot(const TlsConfig& config) {
  struct stat st {};
  std::string out = absl::StrCat(::stat(config.key_file().c_str(), &st) == 0 ? st.st_mode : 0, ";");
  for (const std::string& path : {config.ca_file(), config.cert_file(), config.key_file()}) {
    absl::StatusOr<std::string> bytes = ReadFileToString(path);
    const std::string& part = bytes.ok() ? *bytes : std::string(bytes.status().message());
    absl::StrAppend(&out, bytes.ok() ? "+" : "!", part.size(), ":", part);
  }
  return out;
}

}  // namespace

TlsWatcher::TlsWatcher(TlsConfig config, std::string active_dir, ReloadCallback on_reload, Env* env)
    : config_(std::move(config)),
      active_dir_(std::move(active_dir)),
      on_reload_(std::move(on_reload)),
      env_(env) {}

absl::StatusOr<std::unique_ptr<TlsWatcher>> TlsWatcher::Start(const TlsConfig& config,
                                                              const std::string& active_dir,
                                                              ReloadCallback on_reload, Env* env) {
  std::unique_ptr<TlsWatcher> watcher(
      new TlsWatcher(config, active_dir, std::move(on_reload), env));
  const std::string snapshot = Snapshot(config);
  ASSIGN_OR_RETURN(TlsMaterial material, LoadTlsMaterial(config));
  // Copies left by an earlier run are stale: start from an empty folder.
  std::error_code ec;
  fs::remove_all(active_dir, ec);
  RETURN_IF_ERROR(MakeDirs(active_dir, 0700, env));
  {
    absl::MutexLock lock(&watcher->mu_);
    RETURN_IF_ERROR(watcher->Publish(material));
    watcher->current_ = std::move(material);
    watcher->last_seen_ = snapshot;
  }
  const std::string live = (fs::path(active_dir) / "current").string();
  watcher->provider_ = std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
      live + "/key.pem", live + "/cert.pem", live + "/ca.pem", config.reload_seconds());
  watcher->thread_ = std::thread([w = watcher.get()] { w->Loop(); });
  return watcher;
}

TlsWatcher::~TlsWatcher() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

TlsMaterial TlsWatcher::current() const {
  absl::MutexLock lock(&mu_);
  return current_;
}

absl::StatusOr<bool> TlsWatcher::CheckNow() {
  absl::MutexLock lock(&mu_);
  const std::string snapshot = Snapshot(config_);
  if (snapshot == last_seen_) return false;
  absl::StatusOr<TlsMaterial> material = LoadTlsMaterial(config_);
  absl::Status status = material.status();
  // Renewing writes the key and the certificate one after the other: a mismatch may just mean
  // the second file is on its way, so a set is refused only once it stays the same for a check.
  if (!status.ok() && snapshot != unsettled_) {
    unsettled_ = snapshot;
    return false;
  }
  // A refused set is reported once, not at every check; a good set that could not be written
  // (a full disk) is tried again at the next check.
  if (status.ok()) status = Publish(*material);
  if (status.ok()) current_ = *std::move(material);
  if (status.ok() || !material.ok()) last_seen_ = snapshot;
  if (on_reload_) on_reload_(status);
  if (!status.ok()) return status;
  return true;
}

absl::Status TlsWatcher::Publish(const TlsMaterial& material) {
  const uint64_t generation = ++generation_;
  const fs::path dir = fs::path(active_dir_) / absl::StrCat("gen-", generation);
  RETURN_IF_ERROR(MakeDirs(dir.string(), 0700, env_));
  RETURN_IF_ERROR(WriteFileAtomic((dir / "ca.pem").string(), material.ca_pem, 0600, env_));
  RETURN_IF_ERROR(WriteFileAtomic((dir / "cert.pem").string(), material.cert_pem, 0600, env_));
  RETURN_IF_ERROR(WriteFileAtomic((dir / "key.pem").string(), material.key_pem, 0600, env_));
  // gRPC's file watcher reads active_dir/current/*: swapping one symlink changes all three
  // files at once, so it never pairs an old key with a new certificate.
  const fs::path link = fs::path(active_dir_) / "current";
  const fs::path tmp = fs::path(active_dir_) / "current.tmp";
  std::error_code ec;
  fs::remove(tmp, ec);
  fs::create_directory_symlink(dir.filename(), tmp, ec);
  if (!ec) fs::rename(tmp, link, ec);
  if (ec) {
    return absl::InternalError(
        absl::StrCat("cannot switch ", link.string(), " to ", dir.string(), ": ", ec.message()));
  }
  // Keep the previous generation: a reader may be in the middle of it.
  if (generation > 2) {
    fs::remove_all(fs::path(active_dir_) / absl::StrCat("gen-", generation - 2), ec);
  }
  return absl::OkStatus();
}

void TlsWatcher::Loop() {
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      if (mu_.AwaitWithTimeout(absl::Condition(&stop_), absl::Seconds(config_.reload_seconds()))) {
        return;
      }
    }
    (void)CheckNow();  // the callback has reported the outcome
  }
}

void ExportCertificateExpiry(const TlsWatcher& watcher,
                             prometheus::Family<prometheus::Gauge>* expiry) {
  const TlsMaterial material = watcher.current();
  for (const auto& [file, pem] :
       {std::pair<const char*, const std::string&>{"cert", material.cert_pem},
        {"ca", material.ca_pem}}) {
    absl::StatusOr<int64_t> not_after = EarliestNotAfter(pem);
    // The live set passed LoadTlsMaterial's checks, so it parses; keep the last value if not.
    if (not_after.ok()) expiry->Add({{"file", file}}).Set(static_cast<double>(*not_after));
  }
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
