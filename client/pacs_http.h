// One HTTP(S) session with a DICOMweb service (client/pacs_dicomweb.h): a libcurl easy handle,
// its connection kept alive between requests, with the bearer token and the TLS files of
// source.pacs.dicomweb, and errors that name the URL and what to check.
#pragma once

#include <curl/curl.h>

#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "fl/config.pb.h"

namespace fl {

class DicomWebHttp {
 public:
  // Receives a 2xx body as it arrives; an error stops the transfer and is what Get returns.
  using Sink = std::function<absl::Status(absl::string_view)>;

  // Reads the token file (refused when group or others may read it, or empty: the error names
  // source.pacs.dicomweb.bearer_token_file) and checks that the TLS files can be read (the key
  // too must be private). No request is made yet.
  static absl::StatusOr<std::unique_ptr<DicomWebHttp>> Open(const PacsSource::DicomWeb& config);
  ~DicomWebHttp();

  // GET `url` with `accept`. A 2xx body goes to `sink` if given, else into body() (at most
  // 256 MiB). Errors: PERMISSION_DENIED on 401 and 403; UNAVAILABLE when the server cannot be
  // reached, breaks off, or answers 5xx, 408 or 429; NOT_FOUND on 404; FAILED_PRECONDITION for
  // a server certificate that does not verify, a redirection (not followed: the token would go
  // with it) and other statuses; INVALID_ARGUMENT for a malformed URL or unusable TLS files.
  // Each names the URL and, for HTTP errors, the status and the start of the server's answer.
  absl::Status Get(const std::string& url, const char* accept, const Sink* sink);

  // The last answer's.
  long status() const { return status_; }
  const std::string& content_type() const { return content_type_; }
  const std::string& body() const { return body_; }
  bool more_results() const { return more_results_; }  // a "Warning: 299 ..." header came

 private:
  DicomWebHttp() = default;
  static size_t OnHeader(char* data, size_t size, size_t n, void* self);
  static size_t OnData(char* data, size_t size, size_t n, void* self);
  bool Take(absl::string_view data);
  absl::Status CurlFailed(CURLcode code, const std::string& url) const;
  absl::Status HttpFailed(const std::string& url) const;

  CURL* curl_ = nullptr;
  curl_slist* auth_ = nullptr;  // the Authorization header, when there is a token
  bool has_token_ = false;
  char error_[CURL_ERROR_SIZE] = {};
  // The request under way, or the last.
  long status_ = 0;
  std::string content_type_;
  std::string body_;  // the answer when there is no sink, or the start of an error's
  bool more_results_ = false;
  const Sink* sink_ = nullptr;
  absl::Status sink_error_;
};

}  // namespace fl
