// One DIMSE association with a PACS (DCMTK's dcmnet DcmSCU, or dcmtls's DcmTLSSCU with TLS):
// C-FIND in the Study Root model, and C-GET, whose images come back as C-STORE requests on the
// same association (we play the storage SCP role; no listening port, no firewall opening).
// Internal to the pacs source (client/pacs.h).
#pragma once

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "client/pacs_connection.h"
#include "fl/config.pb.h"

class DcmSCU;

namespace fl {

class PacsAssociation : public PacsConnection {
 public:
  // StoreFn (client/pacs_connection.h): a DATA_LOSS refusal is a failed C-STORE to the PACS.

  // Opens an association with config's PACS, proposing C-FIND and C-GET (Study Root) and the
  // image storage classes (CR, DX, MG, CT, MR, enhanced CT/MR, secondary capture, US, XA) in
  // explicit and implicit VR little endian and the lossless JPEG syntaxes the client decodes.
  // Errors: UNAVAILABLE when the PACS cannot be reached; PERMISSION_DENIED when it rejects the
  // association (with the PACS's reason, e.g. "Called AE Title Not Recognized");
  // FAILED_PRECONDITION when it accepts neither C-FIND nor C-GET; a TLS file that cannot be
  // read is INVALID_ARGUMENT naming it.
  static absl::StatusOr<std::unique_ptr<PacsAssociation>> Open(const PacsSource& config);
  ~PacsAssociation() override;  // releases the association (aborts it when it is broken)

  // C-FIND at `level` ("STUDY", "SERIES", "IMAGE") with `keys` (matching values, or empty to
  // have the attribute returned). Returns one row per match with the keys' values.
  absl::StatusOr<std::vector<DicomRow>> Find(const char* level, const DicomKeys& keys) override;

  // C-GET at `level` of the unique keys in `keys`; every instance received goes to `store`.
  // A connection lost mid-transfer is UNAVAILABLE (what `store` accepted before stays); a
  // refusal by the PACS is FAILED_PRECONDITION with its status.
  absl::Status Get(const char* level, const DicomKeys& keys, const StoreFn& store,
                   GetTally* tally) override;

  // "HOST:PORT (AE TITLE)", for messages.
  const std::string& peer() const override { return peer_; }

  struct Hook;  // how C-STOREs reach the StoreFn (pacs_dimse.cc)

 private:
  PacsAssociation(std::unique_ptr<Hook> hook, std::unique_ptr<DcmSCU> scu, std::string peer);

  std::unique_ptr<Hook> hook_;
  std::unique_ptr<DcmSCU> scu_;
  const std::string peer_;
  bool broken_ = false;
};

}  // namespace fl
