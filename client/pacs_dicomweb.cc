#include "client/pacs_dicomweb.h"

#include <curl/curl.h>
#include <google/protobuf/struct.pb.h>
#include <google/protobuf/util/json_util.h>
#include <sys/stat.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <functional>
#include <mutex>
#include <set>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/strip.h"
#include "common/file_util.h"
#include "common/status.h"
#include "dcmtk/dcmdata/dcdeftag.h"
#include "dcmtk/dcmdata/dcistrmb.h"
#include "dcmtk/dcmdata/dctag.h"

namespace fl {
namespace {

constexpr int kDefaultTimeoutSeconds = 30;
constexpr size_t kMaxJsonBytes = size_t{256} << 20;
constexpr size_t kMaxErrorBytes = 2048;
constexpr char kField[] = "source.pacs.dicomweb.";
constexpr char kMultipartDicom[] = "multipart/related; type=\"application/dicom\"";

// A secret (the token, the TLS key) that others may read is refused, as common/tls.cc does.
absl::Status CheckPrivate(const std::string& field, const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(kField, field, ": cannot read ", path, ": ", std::strerror(errno)));
  }
  if ((st.st_mode & 077) != 0) {
    return absl::FailedPreconditionError(
        absl::StrFormat("%s%s: %s is readable by group or others (mode %04o); run 'chmod 600 %s'",
                        kField, field, path, st.st_mode & 07777, path));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> ReadToken(const std::string& path) {
  RETURN_IF_ERROR(CheckPrivate("bearer_token_file", path));
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
  if (!tls.key_file().empty()) RETURN_IF_ERROR(CheckPrivate("tls.key_file", tls.key_file()));
  return absl::OkStatus();
}

// "StudyDate" for (0008,0020); the hex form for a tag DCMTK's dictionary does not name.
std::string Keyword(const DcmTagKey& key) {
  DcmTag tag(key);  // owns the name
  const char* name = tag.getTagName();
  if (name != nullptr && std::strcmp(name, DcmTag_ERROR_TagName) != 0) return name;
  return absl::StrFormat("%04X%04X", key.getGroup(), key.getElement());
}

std::string Hex(const DcmTagKey& key) {
  return absl::StrFormat("%04X%04X", key.getGroup(), key.getElement());
}

// A DICOM JSON value (PS3.18 F.2): strings, numbers, person names ({"Alphabetic": ...}).
std::string ValueText(const google::protobuf::Value& v) {
  switch (v.kind_case()) {
    case google::protobuf::Value::kStringValue:
      return v.string_value();
    case google::protobuf::Value::kNumberValue: {
      const double n = v.number_value();
      return n == std::floor(n) && std::fabs(n) < 1e15 ? absl::StrCat(static_cast<int64_t>(n))
                                                       : absl::StrCat(n);
    }
    case google::protobuf::Value::kStructValue: {
      const auto& fields = v.struct_value().fields();
      auto it = fields.find("Alphabetic");
      return it != fields.end() ? ValueText(it->second) : "";
    }
    default:
      return "";
  }
}

// One match of a QIDO-RS answer: the attributes `keys` asked for, multiple values joined by '\'.
DicomRow RowOf(const google::protobuf::Struct& match, const DicomKeys& keys) {
  DicomRow row;
  for (const auto& [tag, ignored] : keys) {
    std::string& out = row[tag];
    auto attr = match.fields().find(Hex(tag));
    if (attr == match.fields().end() || !attr->second.has_struct_value()) continue;
    auto values = attr->second.struct_value().fields().find("Value");
    if (values == attr->second.struct_value().fields().end()) continue;
    std::vector<std::string> texts;
    for (const google::protobuf::Value& v : values->second.list_value().values()) {
      texts.push_back(ValueText(v));
    }
    out = std::string(absl::StripAsciiWhitespace(absl::StrJoin(texts, "\\")));
  }
  return row;
}

// A matching value as a query parameter: a list's '\' as ',' (PS3.18 8.3.4.1), characters a
// query may hold as they are, others percent-encoded, and a space as the wildcard '?' (Orthanc
// 1.10's plugin does not decode %20 or '+': see SpacesMatched).
std::string QueryValue(const std::string& value) {
  std::string out;
  for (unsigned char c : absl::StrReplaceAll(value, {{"\\", ","}})) {
    if (c == ' ') {
      out += '?';
    } else if (absl::ascii_isalnum(c) || std::strchr("-._~*?,^:/@!$'()", c) != nullptr) {
      out += static_cast<char>(c);
    } else {
      absl::StrAppendFormat(&out, "%%%02X", c);
    }
  }
  return out;
}

// DICOM wildcard matching ('*' any run, '?' one character), ignoring case as Orthanc does.
bool WildcardMatch(absl::string_view pattern, absl::string_view text) {
  size_t p = 0, t = 0, star = absl::string_view::npos, mark = 0;
  while (t < text.size()) {
    if (p < pattern.size() &&
        (pattern[p] == '?' || absl::ascii_tolower(pattern[p]) == absl::ascii_tolower(text[t]))) {
      ++p, ++t;
    } else if (p < pattern.size() && pattern[p] == '*') {
      star = p++, mark = t;
    } else if (star != absl::string_view::npos) {
      p = star + 1, t = ++mark;
    } else {
      return false;
    }
  }
  while (p < pattern.size() && pattern[p] == '*') ++p;
  return p == pattern.size();
}

// Whether `row` matches the values of `keys` with a space, sent as '?' (QueryValue): there, a
// space must be a space.
bool SpacesMatched(const DicomRow& row, const DicomKeys& keys) {
  for (const auto& [tag, value] : keys) {
    if (value.find(' ') == std::string::npos) continue;
    auto it = row.find(tag);
    if (it == row.end() || !WildcardMatch(value, it->second)) return false;
  }
  return true;
}

std::string ValueOf(const DicomKeys& keys, const DcmTagKey& tag) {
  for (const auto& [key, value] : keys) {
    if (key == tag) return value;
  }
  return "";
}

}  // namespace

// The curl handle of a connection, and what one request gathers.
struct DicomWebConnection::Http {
  CURL* curl = nullptr;
  curl_slist* auth = nullptr;  // the Authorization header, when there is a token
  bool has_token = false;
  char error[CURL_ERROR_SIZE] = {};

  // One request's state.
  long status = 0;
  std::string content_type;
  std::string body;           // the answer when there is no sink, or the start of an error's
  bool more_results = false;  // a "Warning: 299 ..." says there are more results
  const std::function<absl::Status(absl::string_view)>* sink = nullptr;  // 2xx bodies, if set
  absl::Status sink_error;

  ~Http() {
    if (curl != nullptr) curl_easy_cleanup(curl);
    curl_slist_free_all(auth);
  }

  static size_t OnHeader(char* data, size_t size, size_t n, void* self) {
    const absl::string_view line(data, size * n);
    if (absl::StartsWithIgnoreCase(line, "Warning:") && absl::StrContains(line, "299")) {
      static_cast<Http*>(self)->more_results = true;
    }
    return size * n;
  }

  static size_t OnData(char* data, size_t size, size_t n, void* self) {
    return static_cast<Http*>(self)->Take(absl::string_view(data, size * n)) ? size * n : 0;
  }

  bool Take(absl::string_view data) {
    if (status == 0) {
      curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
      char* type = nullptr;
      curl_easy_getinfo(curl, CURLINFO_CONTENT_TYPE, &type);
      content_type = type != nullptr ? type : "";
    }
    if (sink != nullptr && status / 100 == 2) {
      sink_error = (*sink)(data);
      return sink_error.ok();
    }
    const size_t cap = status / 100 == 2 ? kMaxJsonBytes : kMaxErrorBytes;
    body.append(data.data(), std::min(data.size(), cap - std::min(cap, body.size())));
    if (status / 100 == 2 && body.size() >= kMaxJsonBytes) {
      sink_error = absl::ResourceExhaustedError("a QIDO-RS answer over 256 MiB");
      return false;
    }
    return true;
  }

  // GET `url` with `accept`; a 2xx body goes to `to` if given, else into `body`.
  absl::Status Get(const std::string& url, const char* accept,
                   const std::function<absl::Status(absl::string_view)>* to);
  absl::Status CurlFailed(CURLcode code, const std::string& url) const;
  absl::Status HttpFailed(const std::string& url) const;
};

absl::Status DicomWebConnection::Http::Get(
    const std::string& url, const char* accept,
    const std::function<absl::Status(absl::string_view)>* to) {
  status = 0;
  content_type.clear();
  body.clear();
  more_results = false;
  sink = to;
  sink_error = absl::OkStatus();
  error[0] = '\0';
  curl_slist* headers = curl_slist_append(nullptr, absl::StrCat("Accept: ", accept).c_str());
  for (curl_slist* h = auth; h != nullptr; h = h->next)
    headers = curl_slist_append(headers, h->data);
  curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
  curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
  const CURLcode code = curl_easy_perform(curl);
  curl_easy_setopt(curl, CURLOPT_HTTPHEADER, nullptr);
  curl_slist_free_all(headers);
  sink = nullptr;
  if (!sink_error.ok()) return sink_error;
  if (status == 0) curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
  if (code != CURLE_OK) return CurlFailed(code, url);
  if (status / 100 != 2) return HttpFailed(url);
  return absl::OkStatus();
}

absl::Status DicomWebConnection::Http::CurlFailed(CURLcode code, const std::string& url) const {
  const std::string why = error[0] != '\0' ? error : curl_easy_strerror(code);
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

absl::Status DicomWebConnection::Http::HttpFailed(const std::string& url) const {
  const std::string said =
      body.empty() ? "" : absl::StrCat(": ", absl::StripAsciiWhitespace(body.substr(0, 300)));
  const std::string where = absl::StrCat("DICOMweb server ", url, " answered HTTP ", status);
  if (status == 401 || status == 403) {
    return absl::PermissionDeniedError(absl::StrCat(
        where, status == 401 ? " (Unauthorized)" : " (Forbidden)", said,
        has_token ? absl::StrCat(" (is the token in ", kField,
                                 "bearer_token_file valid, and allowed to read these studies?)")
                  : absl::StrCat(" (no token is sent: set ", kField, "bearer_token_file)")));
  }
  if (status / 100 == 3) {
    char* location = nullptr;
    curl_easy_getinfo(curl, CURLINFO_REDIRECT_URL, &location);
    return absl::FailedPreconditionError(absl::StrCat(where, ", a redirection to ",
                                                      location != nullptr ? location : "?",
                                                      " (set ", kField, "url to where it points)"));
  }
  if (status / 100 == 5 || status == 429 || status == 408) {
    return absl::UnavailableError(absl::StrCat(where, said));
  }
  if (status == 404) return absl::NotFoundError(absl::StrCat(where, said));
  return absl::FailedPreconditionError(absl::StrCat(where, said));
}

DicomWebConnection::DicomWebConnection(std::unique_ptr<Http> http, std::string base)
    : http_(std::move(http)), base_(std::move(base)) {}

DicomWebConnection::~DicomWebConnection() = default;

absl::StatusOr<std::unique_ptr<DicomWebConnection>> DicomWebConnection::Open(
    const PacsSource& config) {
  static std::once_flag init;
  std::call_once(init, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
  const PacsSource::DicomWeb& web = config.dicomweb();
  auto http = std::make_unique<Http>();
  if (!web.bearer_token_file().empty()) {
    ASSIGN_OR_RETURN(std::string token, ReadToken(web.bearer_token_file()));
    http->auth = curl_slist_append(nullptr, absl::StrCat("Authorization: Bearer ", token).c_str());
    http->has_token = true;
  }
  RETURN_IF_ERROR(CheckTlsFiles(web.tls()));
  http->curl = curl_easy_init();
  if (http->curl == nullptr) return absl::InternalError("curl_easy_init failed");
  CURL* c = http->curl;
  const long timeout = web.timeout_seconds() > 0 ? web.timeout_seconds() : kDefaultTimeoutSeconds;
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(c, CURLOPT_ERRORBUFFER, http->error);
  curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);  // a redirect would carry the token elsewhere
  curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, timeout);
  curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1L);  // a stall of `timeout` seconds ends it
  curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, timeout);
  curl_easy_setopt(c, CURLOPT_ACCEPT_ENCODING, "");
  curl_easy_setopt(c, CURLOPT_USERAGENT, "fl-client");
  curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, &Http::OnHeader);
  curl_easy_setopt(c, CURLOPT_HEADERDATA, http.get());
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, &Http::OnData);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, http.get());
  if (!web.tls().ca_file().empty())
    curl_easy_setopt(c, CURLOPT_CAINFO, web.tls().ca_file().c_str());
  if (!web.tls().cert_file().empty()) {
    curl_easy_setopt(c, CURLOPT_SSLCERT, web.tls().cert_file().c_str());
    curl_easy_setopt(c, CURLOPT_SSLKEY, web.tls().key_file().c_str());
  }
  std::string base(absl::StripSuffix(web.url(), "/"));
  return std::unique_ptr<DicomWebConnection>(new DicomWebConnection(std::move(http), base));
}

absl::StatusOr<std::vector<DicomRow>> DicomWebConnection::Find(const char* level,
                                                               const DicomKeys& keys) {
  const std::string study = ValueOf(keys, DCM_StudyInstanceUID);
  const std::string series = ValueOf(keys, DCM_SeriesInstanceUID);
  std::string path = "/studies";
  DcmTagKey unique = DCM_StudyInstanceUID;
  std::set<DcmTagKey> in_path;
  if (std::strcmp(level, "SERIES") == 0 || std::strcmp(level, "IMAGE") == 0) {
    absl::StrAppend(&path, "/", study, "/series");
    in_path.insert(DCM_StudyInstanceUID);
    unique = DCM_SeriesInstanceUID;
  }
  if (std::strcmp(level, "IMAGE") == 0) {
    absl::StrAppend(&path, "/", series, "/instances");
    in_path.insert(DCM_SeriesInstanceUID);
    unique = DCM_SOPInstanceUID;
  }
  std::vector<std::string> params;
  for (const auto& [tag, value] : keys) {
    if (in_path.count(tag)) continue;
    if (value.empty()) {
      params.push_back(absl::StrCat("includefield=", Keyword(tag)));
      continue;
    }
    params.push_back(absl::StrCat(Keyword(tag), "=", QueryValue(value)));
  }
  std::vector<DicomRow> rows;
  std::set<std::string> seen;
  for (size_t offset = 0;;) {
    const std::string url = absl::StrCat(base_, path, "?", absl::StrJoin(params, "&"),
                                         "&limit=", page_size_, "&offset=", offset);
    bool more = false;
    absl::StatusOr<std::vector<DicomRow>> page = FindPage(url, keys, path, &more);
    if (absl::IsNotFound(page.status()) && unique != DCM_StudyInstanceUID) break;  // gone since
    RETURN_IF_ERROR(page.status());
    size_t added = 0;
    for (DicomRow& row : *page) {
      for (const DcmTagKey& tag : in_path) row[tag] = ValueOf(keys, tag);
      if (!seen.insert(row[unique]).second) continue;
      ++added;
      if (SpacesMatched(row, keys)) rows.push_back(std::move(row));
    }
    // A page short of the limit is the last, unless the server says it cut it short.
    if (added == 0 || (page->size() < static_cast<size_t>(page_size_) && !more)) break;
    offset += page->size();
  }
  return rows;
}

absl::StatusOr<std::vector<DicomRow>> DicomWebConnection::FindPage(const std::string& url,
                                                                   const DicomKeys& keys,
                                                                   const std::string& level_path,
                                                                   bool* more) {
  RETURN_IF_ERROR(http_->Get(url, "application/dicom+json", nullptr));
  *more = http_->more_results;
  std::vector<DicomRow> rows;
  if (http_->status == 204 || absl::StripAsciiWhitespace(http_->body).empty()) return rows;
  google::protobuf::ListValue matches;
  const auto parsed = google::protobuf::util::JsonStringToMessage(http_->body, &matches);
  if (!parsed.ok()) {
    return absl::FailedPreconditionError(
        absl::StrCat("DICOMweb server ", url, " answered ", level_path,
                     " with what is not a DICOM JSON array: ", parsed.ToString()));
  }
  for (const google::protobuf::Value& match : matches.values()) {
    if (match.has_struct_value()) rows.push_back(RowOf(match.struct_value(), keys));
  }
  return rows;
}

absl::Status DicomWebConnection::Get(const char* level, const DicomKeys& keys, const StoreFn& store,
                                     GetTally* tally) {
  std::string url = absl::StrCat(base_, "/studies/", ValueOf(keys, DCM_StudyInstanceUID),
                                 "/series/", ValueOf(keys, DCM_SeriesInstanceUID));
  if (std::strcmp(level, "IMAGE") == 0) {
    absl::StrAppend(&url, "/instances/", ValueOf(keys, DCM_SOPInstanceUID));
  }
  std::unique_ptr<MultipartReader> reader;
  auto on_part = [&](MultipartPart& part) -> absl::Status {
    absl::StatusOr<std::unique_ptr<DcmFileFormat>> dicom = ReadDicomPart(part);
    if (!dicom.ok()) {
      tally->refused.push_back(
          absl::StrCat("part ", reader->parts(), " of ", url, ": ", dicom.status().message()));
      return absl::OkStatus();
    }
    absl::Status stored = store((*dicom)->getDataset());
    if (stored.ok()) ++tally->completed;
    return absl::IsDataLoss(stored) ? absl::OkStatus() : stored;
  };
  const std::function<absl::Status(absl::string_view)> sink = [&](absl::string_view data) {
    if (reader == nullptr) {
      absl::StatusOr<std::string> boundary = MultipartBoundary(http_->content_type);
      if (!boundary.ok()) {
        return absl::FailedPreconditionError(
            absl::StrCat("DICOMweb server ", url, " answered WADO-RS with Content-Type '",
                         http_->content_type, "', not ", kMultipartDicom));
      }
      reader = std::make_unique<MultipartReader>(*boundary, on_part);
    }
    return reader->Feed(data);
  };
  const absl::Status got = http_->Get(url, kMultipartDicom, &sink);
  if (absl::IsNotFound(got)) return absl::OkStatus();  // deleted since the query
  if (absl::IsDataLoss(got)) {
    return absl::UnavailableError(
        absl::StrCat("DICOMweb server ", url, " sent a malformed answer: ", got.message()));
  }
  RETURN_IF_ERROR(got);
  if (reader == nullptr) return absl::OkStatus();  // 204, or an empty body: nothing to send
  if (absl::Status finished = reader->Finish(); !finished.ok()) {
    return absl::UnavailableError(
        absl::StrCat("the answer of DICOMweb server ", url, " broke off: ", finished.message()));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<DcmFileFormat>> ReadDicomPart(const MultipartPart& part) {
  auto type = part.headers.find("content-type");
  if (type != part.headers.end() &&
      !absl::StartsWithIgnoreCase(type->second, "application/dicom")) {
    return absl::DataLossError(
        absl::StrCat("Content-Type '", type->second, "', not application/dicom"));
  }
  auto file = std::make_unique<DcmFileFormat>();
  DcmInputBufferStream in;
  in.setBuffer(part.body.data(), static_cast<offile_off_t>(part.body.size()));
  in.setEos();
  file->transferInit();
  const OFCondition read = file->read(in, EXS_Unknown, EGL_noChange, DCM_MaxReadLength);
  file->transferEnd();
  if (read.bad()) {
    return absl::DataLossError(
        absl::StrCat("not DICOM (", part.body.size(), " bytes): ", read.text()));
  }
  if (file->getDataset() == nullptr || file->getDataset()->card() == 0) {
    return absl::DataLossError(
        absl::StrCat("not DICOM (", part.body.size(), " bytes): no data set"));
  }
  return file;
}

}  // namespace fl
