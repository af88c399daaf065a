// A multipart/related body (RFC 2046 section 5.1, RFC 2387) read as it arrives, as WADO-RS
// sends instances: each part is handed over once its closing delimiter is seen, so memory
// holds one part, not the whole response. Internal to the DICOMweb transport
// (client/pacs_dicomweb.h).
#pragma once

#include <cstddef>
#include <functional>
#include <map>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace fl {

// The boundary parameter of a multipart Content-Type ('multipart/related; type="application/
// dicom"; boundary=XYZ', quoted or not). INVALID_ARGUMENT when the type is not multipart or
// has no usable boundary (1 to 70 characters).
absl::StatusOr<std::string> MultipartBoundary(absl::string_view content_type);

struct MultipartPart {
  std::map<std::string, std::string> headers;  // names in lower case, values trimmed
  std::string body;
};

class MultipartReader {
 public:
  // Receives each complete part (moved out afterwards: the callee may keep it). An error stops
  // the reading and is what Feed returns.
  using PartFn = std::function<absl::Status(MultipartPart& part)>;

  // No part may exceed max_part_bytes (RESOURCE_EXHAUSTED): a guard against a server that never
  // sends the next delimiter.
  MultipartReader(std::string boundary, PartFn on_part, size_t max_part_bytes = size_t{1} << 31);

  // The next bytes of the body, split anywhere. DATA_LOSS when the body is malformed (text
  // other than a delimiter where one must be, a header line without ':'); after an error the
  // reader takes nothing more.
  absl::Status Feed(absl::string_view data);

  // The body ended: DATA_LOSS when its closing delimiter ("--BOUNDARY--") was not seen (a
  // truncated response), naming how many parts were complete.
  absl::Status Finish() const;

  int parts() const { return parts_; }

 private:
  enum class State { kPreamble, kDelimiterEnd, kHeaders, kBody, kEpilogue, kFailed };

  absl::Status Step(bool* progressed);
  absl::Status AfterDelimiter(bool* progressed);
  absl::Status Headers(bool* progressed);
  absl::Status Body(bool* progressed);
  absl::Status Fail(absl::Status status);

  const std::string delimiter_;  // "\r\n--" + boundary
  const PartFn on_part_;
  const size_t max_part_bytes_;
  State state_ = State::kPreamble;
  std::string buffer_;  // bytes received and not yet consumed
  MultipartPart part_;  // the part being read
  int parts_ = 0;
};

}  // namespace fl
