// fl-client: the hospital daemon. Usage: fl-client --config FILE
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <memory>
#include <optional>
#include <thread>
#include <utility>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/daemon.h"
#include "client/data_source.h"
#include "client/frozen_models.h"
#include "client/dataset.h"
#include "client/grpc_link.h"
#include "client/metrics.h"
#include "client/pacs.h"
#include "client/pixel_cache.h"
#include "client/trainer.h"
#include "common/config.h"
#include "common/daemon_util.h"
#include "common/transport/tls_watch.h"
#include "common/file_util.h"
#include "common/log.h"
#include "common/memory.h"
#include "common/status.h"
#include "common/transport/tls.h"

namespace fl {
namespace {

int Die(const absl::Status& status) { return ExitWithError("fl-client", status); }

// The folder the source reads and its labels file, if it names one of its own.
std::pair<std::string, std::string> DataFilesOf(const DataSourceConfig& source) {
  switch (source.kind_case()) {
    case DataSourceConfig::kDicomFolder:
      return {source.dicom_folder().dir(), source.dicom_folder().labels_csv()};
    case DataSourceConfig::kChexpert:
      return {source.chexpert().root(), ""};
    case DataSourceConfig::kMimicCxr:
      return {source.mimic_cxr().root(), ""};
    case DataSourceConfig::kChestxray14:
      return {source.chestxray14().root(), ""};
    case DataSourceConfig::kVindrCxr:
      return {source.vindr_cxr().root(), ""};  // its labels file lies under root
    case DataSourceConfig::kPacs:
      return {PacsCache::InstancesDir(source.pacs().cache_dir()), source.pacs().labels_csv()};
    default:
      return {"", ""};
  }
}

// Ready once loaded: the data (the source's folder and labels file) can still be read, and the
// TLS files gRPC serves are valid now. Before every scrape the privacy budget and the
// certificates' expiry are set.
void WatchHealth(MonitoringServer& monitoring, const ClientConfig& config,
                 const std::string& dataset_id, PrivacyLedger& ledger, const TlsWatcher& tls,
                 ClientMetrics& metrics) {
  const auto [data_dir, labels_csv] = DataFilesOf(SourceOf(config));
  monitoring.AddReadinessCheck("data", [data_dir = data_dir, csv = labels_csv] {
    RETURN_IF_ERROR(CheckFolderAccess("data folder", data_dir, R_OK | X_OK));
    if (!csv.empty() && ::access(csv.c_str(), R_OK) != 0) {
      return absl::FailedPreconditionError(
          absl::StrCat("labels_csv ", csv, ": ", std::strerror(errno)));
    }
    return absl::OkStatus();
  });
  monitoring.AddReadinessCheck("tls", LiveTlsReadiness(config.state_dir()));
  monitoring.AddScrapeHook([&config, dataset_id, &ledger, &tls, &metrics] {
    ExportCertificateExpiry(tls, &metrics.tls_certificate_expiry);
    const PrivacyBudget& cap = config.budget();
    if (cap.max_epsilon() <= 0) return;
    metrics.privacy_budget_epsilon.Set(cap.max_epsilon());
    absl::StatusOr<double> spent = ledger.Epsilon(std::nullopt, dataset_id, cap.delta());
    if (spent.ok()) metrics.privacy_spent_epsilon.Set(*spent);
  });
}

// The data scan's progress: in the gauges after every file, in the log every 10 s (a large
// folder takes minutes).
ScanProgress ScanReporter(ClientMetrics& metrics) {
  auto last_logged =
      std::make_shared<std::chrono::steady_clock::time_point>(std::chrono::steady_clock::now());
  return [&metrics, last_logged](size_t done, size_t total) {
    metrics.data_scan_files_done.Set(static_cast<double>(done));
    metrics.data_scan_files.Set(static_cast<double>(total));
    const auto now = std::chrono::steady_clock::now();
    if (done < total && now - *last_logged >= std::chrono::seconds(10)) {
      *last_logged = now;
      LogLine("fl-client",
              absl::StrCat("scanning the data folder: ", done, " of ", total, " files looked at"));
    }
  };
}

int Run(const std::string& config_path) {
  absl::StatusOr<ClientConfig> config = LoadClientConfig(config_path);
  if (!config.ok()) return Die(config.status());
  if (absl::Status s = MakeDirs(config->state_dir(), 0700); !s.ok()) {
    return Die(Annotate(s, "state_dir"));
  }
  auto registry = std::make_shared<prometheus::Registry>();
  ClientMetrics metrics(*registry);
  absl::StatusOr<std::unique_ptr<TlsWatcher>> tls =
      StartTlsWatcher("fl-client", config->tls(), config->state_dir(), &metrics.tls_reloads);
  if (!tls.ok()) return Die(tls.status());
  // Served from the start: live while the data is scanned, ready only once all is loaded.
  absl::StatusOr<std::unique_ptr<MonitoringServer>> monitoring =
      StartMonitoring("fl-client", config->metrics_address(), registry, "");
  if (!monitoring.ok()) return Die(monitoring.status());
  absl::StatusOr<std::unique_ptr<DataSource>> source =
      OpenDataSource(SourceOf(*config), ScanReporter(metrics));
  if (!source.ok()) return Die(source.status());
  if (SourceOf(*config).has_pacs()) {  // once, before listing: rounds read the cache only
    PacsSyncOutcome outcome;
    const absl::Status s = SyncPacsAtStart(SourceOf(*config).pacs(), "fl-client", &outcome);
    metrics.ExportPacsSync(outcome, absl::ToDoubleSeconds(absl::Now() - absl::UnixEpoch()));
    if (!s.ok()) return Die(s);
  }
  absl::StatusOr<Dataset> data = (*source)->List(config->test_fraction());
  if (!data.ok()) return Die(data.status());
  if (metrics.data_scan_files.Value() == 0) {  // a source that does not report its scan
    const double listed =
        static_cast<double>(data->train.size() + data->test.size() + data->skipped_files +
                            data->unlabelled_files + data->filtered);
    metrics.data_scan_files_done.Set(listed);
    metrics.data_scan_files.Set(listed);
  }
  LogLine(
      "fl-client",
      absl::StrCat((*source)->Kind(), " source: ", data->train.size(), " training and ",
                   data->test.size(), " test images, ", data->skipped_files, " files skipped, ",
                   data->unlabelled_files, " without labels",
                   data->filtered > 0 ? absl::StrCat(", ", data->filtered, " filtered out") : ""));
  TrainerOptions options;
  options.loader = [src = source->get()](const Sample& sample, int size) {
    return src->Load(sample, PixelShape::Square(size));
  };
  std::unique_ptr<PixelCache> pixel_cache;
  if (config->pixel_cache_mib() > 0) {
    absl::StatusOr<std::unique_ptr<PixelCache>> opened =
        PixelCache::Open((std::filesystem::path(config->state_dir()) / "pixel_cache").string(),
                         static_cast<int64_t>(config->pixel_cache_mib()) << 20);
    if (!opened.ok()) return Die(opened.status());
    pixel_cache = *std::move(opened);
    const PixelCacheStats stats = pixel_cache->stats();
    LogLine("fl-client",
            absl::StrCat("pixel cache: ", stats.entries, " entries, ", stats.bytes >> 20, " of ",
                         config->pixel_cache_mib(), " MiB"));
    options.loader = CachedLoader(source->get(), pixel_cache.get());
  }
  options.device = config->device();
  options.loader_threads = static_cast<int>(config->loader_threads());
  options.state_dir = config->state_dir();
  std::atomic<bool> stopping{false};
  options.cancelled = [&stopping] { return stopping.load(); };
  FrozenModelCache frozen((std::filesystem::path(config->state_dir()) / "frozen").string());
  options.frozen_models = [&frozen](const std::string& job) { return frozen.Get(job); };
  absl::StatusOr<std::unique_ptr<LocalTrainer>> trainer = CreateLocalTrainer(*data, options);
  if (!trainer.ok()) return Die(trainer.status());
  metrics.images.Set(static_cast<double>(data->train.size() + data->test.size()));
  for (SkipKind kind : kSkipKinds) {  // every reason, 0 included, so alerts see the series
    metrics.images_skipped.Add({{"reason", SkipKindName(kind)}})
        .Set(static_cast<double>(
            std::count_if(data->skips.begin(), data->skips.end(),
                          [kind](const SkippedItem& s) { return s.kind == kind; })));
  }
  absl::StatusOr<std::unique_ptr<PrivacyLedger>> ledger =
      PrivacyLedger::Open((std::filesystem::path(config->state_dir()) / "privacy.db").string());
  if (!ledger.ok()) return Die(ledger.status());
  absl::StatusOr<std::string> dataset_id = BindDatasetId(*config, *data, **ledger);
  if (!dataset_id.ok()) return Die(dataset_id.status());
  LogLine("fl-client", absl::StrCat("privacy ledger: dataset id '", *dataset_id, "'"));
  ClientDaemon daemon(
      *config,
      GrpcConnector(config->coordinator_address(), config->coordinator_name(), (*tls)->provider()),
      *dataset_id, &*data, trainer->get(), ledger->get(), &metrics, &SystemClock(), &frozen);
  if (*monitoring) WatchHealth(**monitoring, *config, *dataset_id, **ledger, **tls, metrics);
  std::thread([&daemon, &stopping] {
    WaitForStopSignal();
    stopping = true;
    daemon.Stop();
  }).detach();
  absl::Status status = daemon.Run();
  monitoring->reset();  // its hooks read the ledger: no scrape or probe from here on
  if (!status.ok()) return Die(status);
  return 0;
}

}  // namespace
}  // namespace fl

int main(int argc, char** argv) {
  fl::BlockStopSignals();   // before any thread starts; one thread waits for them
  fl::RetainFreedMemory();  // training steps reuse memory instead of faulting in fresh pages
  int exit_code = 0;
  std::optional<std::string> config = fl::ConfigFlag(
      argc, argv, "fl-client",
      "fl-client: a hospital's site daemon; trains the federation's tasks on local DICOM data "
      "within the site's privacy budget",
      &exit_code);
  return config ? fl::Run(*config) : exit_code;
}
