// The PACS sync: C-FIND the studies and series, C-GET what the cache lacks (over DIMSE, or the
// same as QIDO-RS and WADO-RS over DICOMweb: client/pacs_connection.h).
#include "client/pacs.h"

#include <algorithm>
#include <chrono>
#include <set>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/pacs_dicomweb.h"
#include "client/pacs_dimse.h"
#include "common/status.h"
#include "dcmtk/dcmdata/dcdeftag.h"

namespace fl {
namespace {

DicomKeys StudyKeys(const PacsSource& config, const std::string& accession) {
  return {{DCM_StudyInstanceUID, ""},
          {DCM_StudyDate, config.study_date_range()},
          {DCM_StudyDescription, config.study_description()},
          {DCM_AccessionNumber, accession},
          {DCM_ModalitiesInStudy, absl::StrJoin(config.modalities(), "\\")}};
}

bool WantedModality(const PacsSource& config, const std::string& modality) {
  if (config.modalities().empty()) return true;
  return std::any_of(config.modalities().begin(), config.modalities().end(),
                     [&](const std::string& m) { return absl::EqualsIgnoreCase(m, modality); });
}

absl::StatusOr<std::vector<PacsSeriesInfo>> FindSeries(PacsConnection& pacs,
                                                       const PacsSource& config,
                                                       const std::string& study_uid) {
  const std::string one_modality = config.modalities_size() == 1 ? config.modalities(0) : "";
  ASSIGN_OR_RETURN(std::vector<DicomRow> rows,
                   pacs.Find("SERIES", {{DCM_StudyInstanceUID, study_uid},
                                        {DCM_SeriesInstanceUID, ""},
                                        {DCM_Modality, one_modality},
                                        {DCM_BodyPartExamined, config.body_part()},
                                        {DCM_NumberOfSeriesRelatedInstances, ""}}));
  std::vector<PacsSeriesInfo> series;
  for (DicomRow& row : rows) {
    PacsSeriesInfo s{study_uid, row[DCM_SeriesInstanceUID], row[DCM_Modality],
                     row[DCM_BodyPartExamined]};
    if (s.series_uid.empty() || !WantedModality(config, s.modality)) continue;
    if (!absl::SimpleAtoi(row[DCM_NumberOfSeriesRelatedInstances], &s.instances)) {
      s.instances = -1;
    }
    series.push_back(std::move(s));
  }
  return series;
}

// At most max_instances_per_minute instances, shared by all connections of a sync. Waiting in
// the C-STORE handler holds back the PACS's next C-STORE (over DICOMweb, the reading of the
// response): the pace is the PACS's too.
class Pacer {
 public:
  explicit Pacer(int per_minute)
      : interval_(per_minute > 0 ? absl::Minutes(1) / per_minute : absl::ZeroDuration()) {}

  void Wait() {
    if (interval_ == absl::ZeroDuration()) return;
    absl::MutexLock lock(&mu_);
    const absl::Time now = absl::Now();
    if (next_ > now) absl::SleepFor(next_ - now);
    next_ = std::max(now, next_) + interval_;
  }

 private:
  const absl::Duration interval_;
  absl::Mutex mu_;
  absl::Time next_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
};

// What the associations of one sync share.
class SyncRun {
 public:
  SyncRun(const PacsSource& config, const PacsSyncOptions& options, PacsCache* cache,
          PacsSyncReport* report)
      : config_(config),
        options_(options),
        cache_(cache),
        report_(report),
        pacer_(static_cast<int>(config.max_instances_per_minute())) {}

  // Fetches what `series` lacks over `pacs`.
  absl::Status FetchSeries(PacsConnection& pacs, const PacsSeriesInfo& series);

  // The next series to fetch, or nullptr when all are taken or the sync failed.
  const PacsSeriesInfo* Next(const std::vector<PacsSeriesInfo>& work) {
    absl::MutexLock lock(&mu_);
    if (!first_error_.ok() || next_ >= work.size()) return nullptr;
    return &work[next_++];
  }
  void Fail(const absl::Status& status) {
    absl::MutexLock lock(&mu_);
    if (first_error_.ok()) first_error_ = status;
  }
  absl::Status first_error() {
    absl::MutexLock lock(&mu_);
    return first_error_;
  }

 private:
  absl::Status Store(DcmDataset* instance);
  absl::Status Get(PacsConnection& pacs, const char* level, const DicomKeys& keys);

  const PacsSource& config_;
  const PacsSyncOptions& options_;
  PacsCache* const cache_;
  absl::Mutex mu_;
  PacsSyncReport* const report_ ABSL_GUARDED_BY(mu_);
  size_t next_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Status first_error_ ABSL_GUARDED_BY(mu_);
  Pacer pacer_;
};

absl::Status SyncRun::Store(DcmDataset* instance) {
  pacer_.Wait();
  int64_t bytes = 0;
  const absl::Status stored = cache_->Put(instance, &bytes);
  int fetched = 0;
  {
    absl::MutexLock lock(&mu_);
    if (stored.ok()) {
      fetched = ++report_->fetched;
      report_->fetched_bytes += bytes;
    } else if (absl::IsDataLoss(stored)) {
      ++report_->rejected;
      report_->rejects.push_back({"PACS object", std::string(stored.message())});
    }
  }
  if (stored.ok() && options_.on_cached) options_.on_cached(fetched);
  return stored;
}

absl::Status SyncRun::Get(PacsConnection& pacs, const char* level, const DicomKeys& keys) {
  GetTally tally;
  int refused = 0;
  const absl::Status got = pacs.Get(
      level, keys,
      [this, &refused](DcmDataset* instance) {
        absl::Status stored = Store(instance);
        refused += absl::IsDataLoss(stored);
        return stored;
      },
      &tally);
  {
    absl::MutexLock lock(&mu_);
    // The PACS counts our refusals of corrupt objects among its failed sub-operations.
    report_->failed += std::max(0, tally.failed - refused);
    // Objects the transport refused before they could be read (not DICOM at all).
    report_->rejected += static_cast<int>(tally.refused.size());
    for (const std::string& why : tally.refused) report_->rejects.push_back({"PACS object", why});
  }
  if (config_.pause_ms() > 0) absl::SleepFor(absl::Milliseconds(config_.pause_ms()));
  return got;
}

absl::Status SyncRun::FetchSeries(PacsConnection& pacs, const PacsSeriesInfo& series) {
  const DicomKeys series_keys = {{DCM_StudyInstanceUID, series.study_uid},
                                 {DCM_SeriesInstanceUID, series.series_uid}};
  if (cache_->KnownInSeries(series.series_uid) == 0) return Get(pacs, "SERIES", series_keys);
  DicomKeys image_keys = series_keys;
  image_keys.push_back({DCM_SOPInstanceUID, ""});
  ASSIGN_OR_RETURN(std::vector<DicomRow> rows, pacs.Find("IMAGE", image_keys));
  for (DicomRow& row : rows) {
    const std::string& uid = row[DCM_SOPInstanceUID];
    if (uid.empty()) continue;
    if (cache_->Has(uid) || cache_->WasRejected(uid)) {
      absl::MutexLock lock(&mu_);
      ++(cache_->Has(uid) ? report_->already_cached : report_->rejected_earlier);
      continue;
    }
    image_keys.back().second = uid;
    RETURN_IF_ERROR(Get(pacs, "IMAGE", image_keys));
  }
  return absl::OkStatus();
}

// The series of `studies` the cache does not fully hold.
std::vector<PacsSeriesInfo> Work(const std::vector<PacsStudyInfo>& studies, PacsCache& cache,
                                 PacsSyncReport* report) {
  std::vector<PacsSeriesInfo> work;
  for (const PacsStudyInfo& study : studies) {
    for (const PacsSeriesInfo& series : study.series) {
      ++report->series;
      if (series.instances >= 0 && cache.KnownInSeries(series.series_uid) >= series.instances) {
        ++report->series_up_to_date;
      } else {
        work.push_back(series);
      }
    }
  }
  return work;
}

// Runs `work` on up to max_associations connections at once.
absl::Status Fetch(const PacsSource& config, const std::vector<PacsSeriesInfo>& work,
                   SyncRun& run) {
  const size_t associations =
      std::min<size_t>(std::max<uint32_t>(1, config.max_associations()), work.size());
  auto worker = [&] {
    absl::StatusOr<std::unique_ptr<PacsConnection>> pacs = OpenPacsConnection(config);
    if (!pacs.ok()) return run.Fail(pacs.status());
    while (const PacsSeriesInfo* series = run.Next(work)) {
      const absl::Status fetched = run.FetchSeries(**pacs, *series);
      if (!fetched.ok()) return run.Fail(fetched);
    }
  };
  std::vector<std::thread> threads;
  for (size_t i = 1; i < associations; ++i) threads.emplace_back(worker);
  if (associations > 0) worker();
  for (std::thread& t : threads) t.join();
  return run.first_error();
}

}  // namespace

absl::StatusOr<std::unique_ptr<PacsConnection>> OpenPacsConnection(const PacsSource& config) {
  if (config.has_dicomweb()) {
    ASSIGN_OR_RETURN(std::unique_ptr<DicomWebConnection> web, DicomWebConnection::Open(config));
    return std::unique_ptr<PacsConnection>(std::move(web));
  }
  ASSIGN_OR_RETURN(std::unique_ptr<PacsAssociation> dimse, PacsAssociation::Open(config));
  return std::unique_ptr<PacsConnection>(std::move(dimse));
}

absl::StatusOr<std::vector<PacsStudyInfo>> QueryPacs(const PacsSource& config) {
  RETURN_IF_ERROR(ValidatePacsSource(config));
  ASSIGN_OR_RETURN(std::unique_ptr<PacsConnection> pacs, OpenPacsConnection(config));
  std::vector<std::string> accessions(config.accession_numbers().begin(),
                                      config.accession_numbers().end());
  if (accessions.empty()) accessions.push_back("");
  std::vector<PacsStudyInfo> studies;
  std::set<std::string> seen;
  for (const std::string& accession : accessions) {
    ASSIGN_OR_RETURN(std::vector<DicomRow> rows, pacs->Find("STUDY", StudyKeys(config, accession)));
    for (DicomRow& row : rows) {
      PacsStudyInfo study{row[DCM_StudyInstanceUID], row[DCM_AccessionNumber], row[DCM_StudyDate],
                          row[DCM_StudyDescription]};
      if (study.study_uid.empty() || !seen.insert(study.study_uid).second) continue;
      ASSIGN_OR_RETURN(study.series, FindSeries(*pacs, config, study.study_uid));
      if (!study.series.empty()) studies.push_back(std::move(study));
    }
  }
  return studies;
}

absl::Status SyncPacs(const PacsSource& config, const PacsSyncOptions& options,
                      PacsSyncReport* report) {
  *report = PacsSyncReport();
  RETURN_IF_ERROR(ValidatePacsSource(config));
  ASSIGN_OR_RETURN(std::unique_ptr<PacsCache> cache,
                   PacsCache::Open(config.cache_dir(), &report->repair));
  if (options.retry_rejected) RETURN_IF_ERROR(cache->ForgetRejected());
  if (options.verify) {
    ASSIGN_OR_RETURN(int removed, cache->Verify());
    report->repair.stale_rows += removed;
  }
  absl::Status status = [&]() -> absl::Status {
    ASSIGN_OR_RETURN(std::vector<PacsStudyInfo> studies, QueryPacs(config));
    report->studies = static_cast<int>(studies.size());
    const std::vector<PacsSeriesInfo> work = Work(studies, *cache, report);
    SyncRun run(config, options, cache.get(), report);
    return Fetch(config, work, run);
  }();
  report->cached = cache->Count();
  if (!status.ok() && report->fetched > 0) {
    status = absl::Status(status.code(),
                          absl::StrCat(status.message(), " (", report->fetched,
                                       " instances fetched before are kept; the next sync "
                                       "resumes)"));
  }
  return status;
}

}  // namespace fl
