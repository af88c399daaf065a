// A PACS over DICOMweb (PS3.18) with libcurl: the sync's C-FIND becomes a QIDO-RS search
// (GET {url}/studies, {url}/studies/{study}/series, .../series/{series}/instances, the matching
// keys as query parameters, the others as includefield), its C-GET a WADO-RS retrieval (GET
// {url}/studies/{study}/series/{series}[/instances/{sop}], multipart/related;
// type="application/dicom"), read part by part as it arrives (client/pacs_multipart.h).
// Internal to the pacs source (client/pacs.h), behind client/pacs_connection.h.
#pragma once

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "client/pacs_connection.h"
#include "client/pacs_http.h"
#include "client/pacs_multipart.h"
#include "dcmtk/dcmdata/dcfilefo.h"
#include "fl/config.pb.h"

namespace fl {

class DicomWebConnection : public PacsConnection {
 public:
  // Prepares requests to config.dicomweb's service (no request is made yet): reads the bearer
  // token file and checks the TLS files. Errors name the field: INVALID_ARGUMENT for a file
  // that cannot be read or an empty token; FAILED_PRECONDITION for a token or key file
  // readable by group or others.
  static absl::StatusOr<std::unique_ptr<DicomWebConnection>> Open(const PacsSource& config);
  ~DicomWebConnection() override;

  // QIDO-RS, page by page (limit/offset) until a page brings nothing new. Multiple values
  // ('CR\DX') are sent as a list ("CR,DX"). Errors: PERMISSION_DENIED on HTTP 401 or 403 (the
  // URL and the status); UNAVAILABLE when the server cannot be reached, breaks off, or answers
  // 5xx; NOT_FOUND when {url}/studies is not there; FAILED_PRECONDITION for TLS verification
  // failures and other refusals, with the server's words.
  absl::StatusOr<std::vector<DicomRow>> Find(const char* level, const DicomKeys& keys) override;

  // WADO-RS of a series or an instance. Each part is read with DCMTK before it reaches `store`;
  // one that is not DICOM is counted in tally->refused with the reason and never stored. A
  // response that ends before its closing delimiter is UNAVAILABLE (the parts before it were
  // stored); other errors as Find. A series or instance the server no longer has (404) brings
  // nothing and is no error.
  absl::Status Get(const char* level, const DicomKeys& keys, const StoreFn& store,
                   GetTally* tally) override;

  // The service's base URL.
  const std::string& peer() const override { return base_; }

  // QIDO-RS results per request (default 500); tests set it small to exercise paging.
  void set_page_size(int page_size) { page_size_ = page_size; }

 private:
  DicomWebConnection(std::unique_ptr<DicomWebHttp> http, std::string base);
  absl::StatusOr<std::vector<DicomRow>> FindPage(const std::string& url, const DicomKeys& keys,
                                                 const std::string& level_path, bool* more);

  std::unique_ptr<DicomWebHttp> http_;
  const std::string base_;
  int page_size_ = 500;
};

// One WADO-RS part as a DICOM object: DATA_LOSS with the reason when its Content-Type is not
// application/dicom or DCMTK cannot read it.
absl::StatusOr<std::unique_ptr<DcmFileFormat>> ReadDicomPart(const MultipartPart& part);

}  // namespace fl
