// The pacs source's config, its DataSource over the cache, and the daemon's sync at start.
#include <algorithm>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "client/pacs.h"
#include "common/env.h"
#include "common/log.h"
#include "common/status.h"

namespace fl {
namespace {

absl::Status Invalid(const std::string& field, const std::string& why) {
  return absl::InvalidArgumentError(absl::StrCat("source.pacs.", field, ": ", why));
}

// AE titles: 1 to 16 characters of printable ASCII without '\', not all spaces.
absl::Status CheckAeTitle(const std::string& field, const std::string& title) {
  if (title.empty() || title.size() > 16 || absl::StripAsciiWhitespace(title).empty()) {
    return Invalid(field, absl::StrCat("an AE title of 1 to 16 characters, got '", title, "'"));
  }
  for (char c : title) {
    if (c == '\\' || c < 0x20 || c > 0x7e) {
      return Invalid(field, absl::StrCat("'", title, "' holds a character AE titles may not"));
    }
  }
  return absl::OkStatus();
}

bool IsDate(absl::string_view text) {
  return text.size() == 8 && std::all_of(text.begin(), text.end(), absl::ascii_isdigit);
}

// "YYYYMMDD", "YYYYMMDD-YYYYMMDD", "YYYYMMDD-" or "-YYYYMMDD" (DICOM range matching).
absl::Status CheckDateRange(const std::string& range) {
  if (range.empty() || IsDate(range)) return absl::OkStatus();
  const size_t dash = range.find('-');
  const absl::string_view from = absl::string_view(range).substr(0, dash);
  const absl::string_view to =
      dash == std::string::npos ? "" : absl::string_view(range).substr(dash + 1);
  if (dash == std::string::npos || (from.empty() && to.empty()) ||
      (!from.empty() && !IsDate(from)) || (!to.empty() && !IsDate(to)) ||
      (!from.empty() && !to.empty() && from > to)) {
    return Invalid("study_date_range", absl::StrCat("'", range,
                                                    "' is not YYYYMMDD-YYYYMMDD (either end may be "
                                                    "left open)"));
  }
  return absl::OkStatus();
}

// A matching key value: no '\' (it would be read as several values).
absl::Status CheckKey(const std::string& field, const std::string& value, size_t max_size) {
  if (value.find('\\') != std::string::npos || value.size() > max_size) {
    return Invalid(field, absl::StrCat("'", value, "' must be at most ", max_size,
                                       " characters without '\\'"));
  }
  return absl::OkStatus();
}

absl::Status CheckLists(const PacsSource& config) {
  for (const std::string& m : config.modalities()) {
    if (m.empty()) return Invalid("modalities", "an empty modality");
    RETURN_IF_ERROR(CheckKey("modalities", m, 16));
  }
  for (const std::string& a : config.accession_numbers()) {
    if (a.empty()) return Invalid("accession_numbers", "an empty accession number");
    RETURN_IF_ERROR(CheckKey("accession_numbers", a, 16));
  }
  return absl::OkStatus();
}

absl::Status CheckTls(const TlsConfig& tls) {
  if (tls.ca_file().empty()) {
    return Invalid("tls.ca_file", "required for TLS (the CA that signed the PACS's certificate)");
  }
  if (tls.cert_file().empty() != tls.key_file().empty()) {
    return Invalid(tls.cert_file().empty() ? "tls.cert_file" : "tls.key_file",
                   "set both cert_file and key_file, or neither");
  }
  return absl::OkStatus();
}

// The DICOMweb service: an http(s) URL; TLS only with https; cert and key together.
absl::Status CheckDicomWeb(const PacsSource::DicomWeb& web) {
  const std::string url = absl::AsciiStrToLower(web.url());
  const bool https = absl::StartsWith(url, "https://");
  if (!https && !absl::StartsWith(url, "http://")) {
    return Invalid("dicomweb.url", absl::StrCat("'", web.url(),
                                                "' is not an http:// or https:// URL (e.g. "
                                                "https://pacs.hospital.local/dicom-web)"));
  }
  if (url.size() <= (https ? 8u : 7u) || url.find_first_of("?# \\") != std::string::npos) {
    return Invalid("dicomweb.url",
                   absl::StrCat("'", web.url(), "' has no host, or a query, fragment or space"));
  }
  if (web.has_tls()) {
    if (!https) return Invalid("dicomweb.tls", "set for an http:// URL: use https://");
    if (web.tls().cert_file().empty() != web.tls().key_file().empty()) {
      return Invalid(
          web.tls().cert_file().empty() ? "dicomweb.tls.cert_file" : "dicomweb.tls.key_file",
          "set both cert_file and key_file, or neither");
    }
  }
  if (web.timeout_seconds() > 3600) {
    return Invalid("dicomweb.timeout_seconds",
                   absl::StrCat(web.timeout_seconds(), " is over 3600"));
  }
  return absl::OkStatus();
}

// Where the PACS is: DIMSE's host, port and AE titles, or the DICOMweb service.
absl::Status CheckPeer(const PacsSource& config) {
  if (config.has_dicomweb()) return CheckDicomWeb(config.dicomweb());
  if (config.host().empty()) return Invalid("host", "required (or set dicomweb)");
  if (config.port() < 1 || config.port() > 65535) {
    return Invalid("port", absl::StrCat(config.port(), " is not in 1..65535"));
  }
  RETURN_IF_ERROR(CheckAeTitle("called_ae_title", config.called_ae_title()));
  RETURN_IF_ERROR(CheckAeTitle("calling_ae_title", config.calling_ae_title()));
  if (config.has_tls()) RETURN_IF_ERROR(CheckTls(config.tls()));
  return absl::OkStatus();
}

class PacsData : public DataSource {
 public:
  explicit PacsData(PacsSource config) : config_(std::move(config)) {}

  std::string Kind() const override { return "pacs"; }

  absl::StatusOr<Dataset> List(double test_fraction) const override {
    const std::string dir = PacsCache::InstancesDir(config_.cache_dir());
    if (!Env::Default()->IsDirectory(dir)) {
      return absl::NotFoundError(absl::StrCat("the PACS cache ", config_.cache_dir(),
                                              " holds nothing yet: sync it first (start "
                                              "fl-client, or flctl data sync --config FILE)"));
    }
    return LoadDataset(dir, config_.labels_csv(), test_fraction);
  }

  absl::StatusOr<std::vector<float>> Load(const Sample& sample,
                                          const PixelShape& shape) const override {
    return LoadImageFile(sample.path, shape);
  }

 private:
  const PacsSource config_;
};

int CachedFiles(const std::string& cache_dir) {
  absl::StatusOr<std::vector<std::string>> names =
      Env::Default()->ListDir(PacsCache::InstancesDir(cache_dir));
  if (!names.ok()) return 0;
  return static_cast<int>(std::count_if(names->begin(), names->end(), [](const std::string& n) {
    return absl::EndsWith(n, ".dcm");
  }));
}

}  // namespace

absl::Status ValidatePacsSource(const PacsSource& config) {
  RETURN_IF_ERROR(CheckPeer(config));
  RETURN_IF_ERROR(CheckLists(config));
  RETURN_IF_ERROR(CheckKey("body_part", config.body_part(), 16));
  RETURN_IF_ERROR(CheckKey("study_description", config.study_description(), 64));
  RETURN_IF_ERROR(CheckDateRange(config.study_date_range()));
  if (config.cache_dir().empty()) {
    return Invalid("cache_dir", "required (from a client config: state_dir/pacs by default)");
  }
  if (config.max_associations() > 16) {
    return Invalid("max_associations", absl::StrCat(config.max_associations(), " is over 16"));
  }
  if (config.timeout_seconds() > 3600) {
    return Invalid("timeout_seconds", absl::StrCat(config.timeout_seconds(), " is over 3600"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<DataSource>> OpenPacsSource(const PacsSource& config) {
  RETURN_IF_ERROR(ValidatePacsSource(config));
  return std::unique_ptr<DataSource>(std::make_unique<PacsData>(config));
}

std::string DescribePacsSync(const PacsSyncReport& r) {
  std::string text = absl::StrFormat(
      "studies: %d, series: %d (%d up to date), fetched: %d instances (%.1f MiB), already "
      "cached: %d, rejected as corrupt: %d (and %d earlier, not asked for again), failed at "
      "the PACS: %d, in the cache: %d",
      r.studies, r.series, r.series_up_to_date, r.fetched, r.fetched_bytes / 1048576.0,
      r.already_cached, r.rejected, r.rejected_earlier, r.failed, r.cached);
  const CacheRepair& fix = r.repair;
  if (fix.partial_files + fix.unindexed_files + fix.stale_rows > 0) {
    absl::StrAppend(&text, "\nrepaired the cache: removed ", fix.partial_files,
                    " partial files of an interrupted sync, ", fix.unindexed_files,
                    " files not in the index, ", fix.stale_rows,
                    " index entries whose file was missing or changed");
  }
  for (const SkippedItem& reject : r.rejects) {
    absl::StrAppend(&text, "\nrejected ", reject.reason);
  }
  return text;
}

absl::Status SyncPacsAtStart(const PacsSource& config, const char* program,
                             PacsSyncOutcome* outcome) {
  PacsSyncOutcome local;
  if (outcome == nullptr) outcome = &local;
  PacsSyncReport& report = outcome->report;
  report = PacsSyncReport();
  outcome->sync = SyncPacs(config, PacsSyncOptions(), &report);
  const absl::Status& synced = outcome->sync;
  for (absl::string_view line : absl::StrSplit(DescribePacsSync(report), '\n')) {
    LogLine(program, absl::StrCat("PACS sync: ", line));
  }
  const int cached = synced.ok() ? report.cached : CachedFiles(config.cache_dir());
  outcome->cached = cached;
  if (!synced.ok()) {
    if (cached > 0) {
      LogLine(program, absl::StrCat("PACS sync failed: ", synced.message(), "; going on with the ",
                                    cached, " cached instances"));
    }
  } else if (report.studies == 0) {
    LogLine(program, "PACS sync: the query matched no studies (check source.pacs's filters)");
  }
  if (cached > 0) return absl::OkStatus();
  if (!synced.ok()) {
    return absl::FailedPreconditionError(
        absl::StrCat("the PACS cache ", config.cache_dir(),
                     " is empty and the sync failed: ", synced.message()));
  }
  return absl::FailedPreconditionError(absl::StrCat("the PACS cache ", config.cache_dir(),
                                                    " is empty: the query matched ", report.studies,
                                                    " studies with ", report.series,
                                                    " series and no image could be fetched (check "
                                                    "source.pacs's filters)"));
}

}  // namespace fl
