#include "client/pacs_http.h"

#include <algorithm>
#include <cstring>
#include <mutex>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "common/file_util.h"
#include "common/status.h"

namespace fl {
namespace {

constexpr int kDefaultTimeoutSeconds = 30;
constexpr size_t kMaxBodyBytes = size_t{256} << 20;
constexpr size_t kMaxErrorBytes = 2048;
constexpr char kField[] = "source.pacs.dicomweb.";

absl::StatusOr<std::string> ReadToken(const std::string& path) {
  RETURN_IF_ERROR(CheckOwnerOnly(absl::StrCat(kField, "bearer_token_file"), path));
  absl::StatusOr<std::string> text = ReadFileToString(path);
  if (!text.ok()) return Annotate(text.status(), absl::StrCat(kField, "bearer_token_file"));
  const std::string token(absl::StripAsciiWhitespace(*text));
  if (token.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(kField, "bearer_token_file: ", path, " holds no token"));
  }
  for (char c : token) {
    if (c < 0x21 || c > 0x7e) {
      return absl::InvalidArgumentError(absl::StrCat(
          kField, "bearer_token_file: ", path, " holds more than one line or a non-ASCII token"));
    }
  }
  return token;
}

absl::Status CheckTlsFiles(const TlsConfig& tls) {
  for (const auto& [field, path] :
       {std::pair{"tls.ca_file", &tls.ca_file()}, std::pair{"tls.cert_file", &tls.cert_file()},
        std::pair{"tls.key_file", &tls.key_file()}}) {
    if (!path->empty() && !ReadFileToString(*path).ok()) {
      return absl::InvalidArgumentError(absl::StrCat(kField, field, ": cannot read ", *path));
    }
  }
  if (!tls.key_file().empty()) {
    RETURN_IF_ERROR(CheckOwnerOnly(absl::StrCat(kField, "tls.key_file"), tls.key_file()));
  }
  return absl::OkStatus();
}

}  // namespace

DicomWebHttp::~DicomWebHttp() {
  if (curl_ != nullptr) curl_easy_cleanup(curl_);
  curl_slist_free_all(auth_);
}

absl::StatusOr<std::unique_ptr<DicomWebHttp>> DicomWebHttp::Open(const PacsSource::DicomWeb& web) {
  static std::once_flag init;
  std::call_once(init, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
  std::unique_ptr<DicomWebHttp> http(new DicomWebHttp());
  if (!web.bearer_token_file().empty()) {
    ASSIGN_OR_RETURN(std::string token, ReadToken(web.bearer_token_file()));
    http->auth_ = curl_slist_append(nullptr, absl::StrCat("Authorization: Bearer ", token).c_str());
    http->has_token_ = true;
  }
  RETURN_IF_ERROR(CheckTlsFiles(web.tls()));
  http->curl_ = curl_easy_init();
  if (http->curl_ == nullptr) return absl::InternalError("curl_easy_init failed");
  CURL* c = http->curl_;
  const long timeout = web.timeout_seconds() > 0 ? web.timeout_seconds() : kDefaultTimeoutSeconds;
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(c, CURLOPT_ERRORBUFFER, http->error_);
  curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);  // a redirect would carry the token elsewhere
  curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, timeout);
  curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1L);  // a stall of `timeout` seconds ends it
  curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, timeout);
  curl_easy_setopt(c, CURLOPT_ACCEPT_ENCODING, "");
  curl_easy_setopt(c, CURLOPT_USERAGENT, "fl-client");
  curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, &DicomWebHttp::OnHeader);
  curl_easy_setopt(c, CURLOPT_HEADERDATA, http.get());
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, &DicomWebHttp::OnData);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, http.get());
  if (!web.tls().ca_file().empty())
    curl_easy_setopt(c, CURLOPT_CAINFO, web.tls().ca_file().c_str());
  if (!web.tls().cert_file().empty()) {
    curl_easy_setopt(c, CURLOPT_SSLCERT, web.tls().cert_file().c_str());
    curl_easy_setopt(c, CURLOPT_SSLKEY, web.tls().key_file().c_str());
  }
  return http;
}

size_t DicomWebHttp::OnHeader(char* data, size_t size, size_t n, void* self) {
  const absl::string_view line(data, size * n);
  if (absl::StartsWithIgnoreCase(line, "Warning:") && absl::StrContains(line, "299")) {
    static_cast<DicomWebHttp*>(self)->more_results_ = true;
  }
  return size * n;
}

size_t DicomWebHttp::OnData(char* data, size_t size, size_t n, void* self) {
  return static_cast<DicomWebHttp*>(self)->Take(absl::string_view(data, size * n)) ? size * n : 0;
}

bool DicomWebHttp::Take(absl::string_view data) {
  if (status_ == 0) {
    curl_easy_getinfo(curl_, CURLINFO_RESPONSE_CODE, &status_);
    char* type = nullptr;
    curl_easy_getinfo(curl_, CURLINFO_CONTENT_TYPE, &type);
    content_type_ = type != nullptr ? type : "";
  }
  if (sink_ != nullptr && status_ / 100 == 2) {
    sink_error_ = (*sink_)(data);
    return sink_error_.ok();
  }
  const size_t cap = status_ / 100 == 2 ? kMaxBodyBytes : kMaxErrorBytes;
  body_.append(data.data(), std::min(data.size(), cap - std::min(cap, body_.size())));
  if (status_ / 100 == 2 && body_.size() >= kMaxBodyBytes) {
    sink_error_ = absl::ResourceExhaustedError("an answer over 256 MiB");
    return false;
  }
  return true;
}

absl::Status DicomWebHttp::Get(const std::string& url, const char* accept, const Sink* to) {
  status_ = 0;
  content_type_.clear();
  body_.clear();
  more_results_ = false;
  sink_ = to;
  sink_error_ = absl::OkStatus();
  error_[0] = '\0';
  curl_slist* headers = curl_slist_append(nullptr, absl::StrCat("Accept: ", accept).c_str());
  for (curl_slist* h = auth_; h != nullptr; h = h->next)
    headers = curl_slist_append(headers, h->data);
  curl_easy_setopt(curl_, CURLOPT_HTTPHEADER, headers);
  curl_easy_setopt(curl_, CURLOPT_URL, url.c_str());
  const CURLcode code = curl_easy_perform(curl_);
  curl_easy_setopt(curl_, CURLOPT_HTTPHEADER, nullptr);
  curl_slist_free_all(headers);
  sink_ = nullptr;
  if (!sink_error_.ok()) return sink_error_;
  if (status_ == 0) curl_easy_getinfo(curl_, CURLINFO_RESPONSE_CODE, &status_);
  if (code != CURLE_OK) return CurlFailed(code, url);
  if (status_ / 100 != 2) return HttpFailed(url);
  return absl::OkStatus();
}

absl::Status DicomWebHttp::CurlFailed(CURLcode code, const std::string& url) const {
  const std::string why = error_[0] != '\0' ? error_ : curl_easy_strerror(code);
  switch (code) {
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CACERT_BADFILE:
      return absl::FailedPreconditionError(absl::StrCat(
          "TLS: cannot verify the certificate of DICOMweb server ", url, ": ", why, " (is ", kField,
          "tls.ca_file the CA that signed it, and the URL's host name in it?)"));
    case CURLE_URL_MALFORMAT:
    case CURLE_UNSUPPORTED_PROTOCOL:
      return absl::InvalidArgumentError(absl::StrCat(kField, "url: ", why, ": ", url));
    case CURLE_SSL_CERTPROBLEM:
      return absl::InvalidArgumentError(absl::StrCat(kField, "tls.cert_file/key_file: ", why));
    case CURLE_SSL_CONNECT_ERROR:
      return absl::UnavailableError(absl::StrCat(
          "TLS handshake with DICOMweb server ", url, " failed: ", why,
          " (does it speak HTTPS there, and does it want a client certificate: ", kField,
          "tls.cert_file and key_file?)"));
    default:
      return absl::UnavailableError(absl::StrCat("DICOMweb server ", url, ": ", why,
                                                 " (is it up and reachable at this URL?)"));
  }
}

absl::Status DicomWebHttp::HttpFailed(const std::string& url) const {
  const std::string said =
      body_.empty() ? "" : absl::StrCat(": ", absl::StripAsciiWhitespace(body_.substr(0, 300)));
  const std::string where = absl::StrCat("DICOMweb server ", url, " answered HTTP ", status_);
  if (status_ == 401 || status_ == 403) {
    return absl::PermissionDeniedError(absl::StrCat(
        where, status_ == 401 ? " (Unauthorized)" : " (Forbidden)", said,
        has_token_ ? absl::StrCat(" (is the token in ", kField,
                                  "bearer_token_file valid, and allowed to read these studies?)")
                   : absl::StrCat(" (no token is sent: set ", kField, "bearer_token_file)")));
  }
  if (status_ / 100 == 3) {
    char* location = nullptr;
    curl_easy_getinfo(curl_, CURLINFO_REDIRECT_URL, &location);
    return absl::FailedPreconditionError(absl::StrCat(where, ", a redirection to ",
                                                      location != nullptr ? location : "?",
                                                      " (set ", kField, "url to where it points)"));
  }
  if (status_ / 100 == 5 || status_ == 429 || status_ == 408) {
    return absl::UnavailableError(absl::StrCat(where, said));
  }
  if (status_ == 404) return absl::NotFoundError(absl::StrCat(where, said));
  return absl::FailedPreconditionError(absl::StrCat(where, said));
}

}  // namespace fl
