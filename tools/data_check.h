// flctl data check on any data source (client/data_source.h): lists it as fl-client does, then
// decodes every listed image; prints one line (or one fl.DataCheckFile) per image and skip, and
// the totals.
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "fl/config.pb.h"

namespace fl {

// Lists `config`'s source with no test split, reports every file skipped while listing, then
// decodes every listed sample (at 64 x 64) and reports it: "ok    PATH[ labelled]" or
// "skip  PATH: REASON" on stdout, or with `json` a JSON list of fl.DataCheckFile on stdout; the
// totals last (on stderr with `json`). Returns the exit status: 0, or 2 when the source cannot
// be opened or listed (the reason on stderr).
int CheckDataSource(const DataSourceConfig& config, bool json);

// flctl data sync: fetches what the cache of `config`'s pacs source lacks (SyncPacs, as fl-client
// does at start) and prints the report: totals, each object refused with its reason, the cache.
// Returns the exit status: 0; 1 when the sync failed (the reason on stderr, after what it did);
// 2 when `config` names no pacs source or its options are invalid.
int SyncDataSource(const DataSourceConfig& config, bool retry_rejected, bool verify);

// The source of `kind` ("dicom_folder", "chexpert", "mimic_cxr", "chestxray14", "vindr_cxr")
// at `root` with its defaults; `labels` is a dicom_folder's labels CSV.
absl::StatusOr<DataSourceConfig> SourceOfKind(const std::string& kind, const std::string& root,
                                              const std::string& labels);

}  // namespace fl
