// The seam between the PACS sync (client/pacs.cc) and its transports: DIMSE (client/pacs_dimse.h)
// and DICOMweb (client/pacs_dicomweb.h). The sync speaks C-FIND and C-GET in the Study Root
// model; a DICOMweb connection maps them onto QIDO-RS and WADO-RS. Internal to the pacs source
// (client/pacs.h).
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "dcmtk/config/osconfig.h"
#include "dcmtk/dcmdata/dcdatset.h"
#include "dcmtk/dcmdata/dctagkey.h"
#include "fl/config.pb.h"

namespace fl {

// A query's identifier or a match: tag -> value (multiple values joined by '\').
using DicomKeys = std::vector<std::pair<DcmTagKey, std::string>>;
using DicomRow = std::map<DcmTagKey, std::string>;

// What one retrieval brought: instances the PACS reported completed and failed, and objects
// the transport itself refused before they reached the StoreFn (not DICOM at all), each with
// the reason.
struct GetTally {
  int completed = 0;
  int failed = 0;
  int warning = 0;
  std::vector<std::string> refused;
};

// One connection to the PACS (a DIMSE association, or a DICOMweb HTTP session). Used by one
// thread at a time; a sync opens max_associations of them.
class PacsConnection {
 public:
  // Receives each instance of a retrieval (the caller keeps ownership). OK: stored.
  // DATA_LOSS: refused as corrupt (the PACS is told where the protocol allows; the retrieval
  // goes on). Anything else stops the retrieval (e.g. the disk is full).
  using StoreFn = std::function<absl::Status(DcmDataset* instance)>;

  virtual ~PacsConnection() = default;

  // Finds the matches at `level` ("STUDY", "SERIES", "IMAGE") of `keys` (matching values, or
  // empty to have the attribute returned): one row per match with the keys' values. At SERIES
  // level `keys` hold the StudyInstanceUID, at IMAGE level the series' too.
  virtual absl::StatusOr<std::vector<DicomRow>> Find(const char* level, const DicomKeys& keys) = 0;

  // Retrieves the instances at `level` ("SERIES" or "IMAGE") of the unique keys in `keys`;
  // every instance received goes to `store`. A connection lost mid-transfer is UNAVAILABLE
  // (what `store` accepted before stays).
  virtual absl::Status Get(const char* level, const DicomKeys& keys, const StoreFn& store,
                           GetTally* tally) = 0;

  // Who the PACS is, for messages ("HOST:PORT (AE TITLE)", or the DICOMweb URL).
  virtual const std::string& peer() const = 0;
};

// A connection over the protocol config names: DICOMweb when config.dicomweb is set, else
// DIMSE. Errors as PacsAssociation::Open or DicomWebConnection::Open.
absl::StatusOr<std::unique_ptr<PacsConnection>> OpenPacsConnection(const PacsSource& config);

}  // namespace fl
