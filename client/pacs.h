// A PACS as a data source (fl.PacsSource in proto/fl/config.proto), over DICOM DIMSE (studies
// found by C-FIND, their instances fetched by C-GET; client/pacs_dimse.h) or DICOMweb (QIDO-RS
// and WADO-RS; client/pacs_dicomweb.h), into a local cache (client/pacs_cache.h), which the
// source lists and loads like a DICOM folder (LoadDataset, the same labels CSV). The sync below
// is the same for both protocols (client/pacs_connection.h is the seam). Rounds never wait on
// the PACS: only a sync talks to it (the daemon's at start, or `flctl data sync`), and a sync
// fetches only what the cache lacks.
//
// Not done here: C-MOVE, STOW-RS, and syncing while the daemon runs.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "client/data_source.h"
#include "client/dataset.h"
#include "client/pacs_cache.h"
#include "fl/config.pb.h"

namespace fl {

// Checks the options; the error names the field (source.pacs.FIELD). cache_dir must be set
// (SourceOf sets it to state_dir/pacs when a client config leaves it empty).
absl::Status ValidatePacsSource(const PacsSource& config);

// The pacs source: lists cache_dir/instances with the labels CSV (LoadDataset) and loads the
// cached files. NOT_FOUND, saying to sync, when nothing was ever fetched into the cache.
absl::StatusOr<std::unique_ptr<DataSource>> OpenPacsSource(const PacsSource& config);

struct PacsSeriesInfo {
  std::string study_uid;
  std::string series_uid;
  std::string modality;
  std::string body_part;
  int instances = -1;  // NumberOfSeriesRelatedInstances; -1 when the PACS did not say
};

struct PacsStudyInfo {
  std::string study_uid;
  std::string accession_number;
  std::string study_date;
  std::string study_description;
  std::vector<PacsSeriesInfo> series;  // those matching the modality and body-part filters
};

// C-FIND on one association (or QIDO-RS on one HTTP session): the studies matching config's
// filters (STUDY level; once per accession number when there are any), then their series
// (SERIES level). Studies without a matching series are left out. Errors as
// PacsAssociation::Open and Find (client/pacs_dimse.h) or DicomWebConnection's
// (client/pacs_dicomweb.h: PERMISSION_DENIED on HTTP 401/403, UNAVAILABLE when unreachable).
absl::StatusOr<std::vector<PacsStudyInfo>> QueryPacs(const PacsSource& config);

struct PacsSyncReport {
  int studies = 0;            // studies the query matched (with a matching series)
  int series = 0;             // their matching series
  int series_up_to_date = 0;  // series whose instances were all known: not asked for again
  int fetched = 0;            // instances newly cached
  int64_t fetched_bytes = 0;
  int already_cached = 0;            // instances listed by the PACS (IMAGE level) and cached before
  int rejected = 0;                  // objects refused as corrupt in this sync (never cached)
  int rejected_earlier = 0;          // objects refused in an earlier sync, not asked for again
  int failed = 0;                    // C-STORE sub-operations the PACS reported as failed (DIMSE)
  int cached = 0;                    // instances in the cache after the sync
  CacheRepair repair;                // what an interrupted sync had left, removed
  std::vector<SkippedItem> rejects;  // this sync's refused objects, with the reasons
};

struct PacsSyncOptions {
  bool retry_rejected = false;  // ask again for objects refused as corrupt before
  bool verify = false;          // re-hash every cached file first (PacsCache::Verify)
  // Called after each instance entered the cache (tests stop the PACS here).
  std::function<void(int fetched_so_far)> on_cached;
};

// Queries the PACS and fetches into the cache what it lacks, within config's limits
// (max_associations series at once, pause_ms after each C-GET or WADO-RS request,
// max_instances_per_minute).
// `report` holds what was done even when the sync fails part-way: what was fully received stays
// cached, partial files are removed, and the next sync resumes. An empty query result is OK
// (report->studies == 0). Errors: as QueryPacs; UNAVAILABLE when the PACS goes away
// mid-transfer; FAILED_PRECONDITION when another sync holds the cache; the cache's disk errors.
absl::Status SyncPacs(const PacsSource& config, const PacsSyncOptions& options,
                      PacsSyncReport* report);

// The report as lines for people: totals, then each refused object with its reason.
std::string DescribePacsSync(const PacsSyncReport& report);

// What the daemon's sync at start did (for its metrics): the sync's report and status, and the
// instances in the cache after it.
struct PacsSyncOutcome {
  PacsSyncReport report;
  absl::Status sync;
  int cached = 0;
};

// The daemon's sync before it lists its data: a PACS that is down or refuses, or a query that
// matches nothing, is logged and the daemon goes on with what is cached; only when the cache
// then holds no image at all is it an error (FAILED_PRECONDITION, with the sync's reason).
// `outcome` (may be null) gets what the sync did, also when it fails.
absl::Status SyncPacsAtStart(const PacsSource& config, const char* program,
                             PacsSyncOutcome* outcome = nullptr);

}  // namespace fl
