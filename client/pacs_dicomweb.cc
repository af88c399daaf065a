#include "client/pacs_dicomweb.h"

#include <google/protobuf/struct.pb.h>
#include <google/protobuf/util/json_util.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <set>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/strip.h"
#include "common/status.h"
#include "dcmtk/dcmdata/dcdeftag.h"
#include "dcmtk/dcmdata/dcistrmb.h"
#include "dcmtk/dcmdata/dctag.h"

namespace fl {
namespace {

constexpr char kMultipartDicom[] = "multipart/related; type=\"application/dicom\"";

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

DicomWebConnection::DicomWebConnection(std::unique_ptr<DicomWebHttp> http, std::string base)
    : http_(std::move(http)), base_(std::move(base)) {}

DicomWebConnection::~DicomWebConnection() = default;

absl::StatusOr<std::unique_ptr<DicomWebConnection>> DicomWebConnection::Open(
    const PacsSource& config) {
  ASSIGN_OR_RETURN(std::unique_ptr<DicomWebHttp> http, DicomWebHttp::Open(config.dicomweb()));
  std::string base(absl::StripSuffix(config.dicomweb().url(), "/"));
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
  *more = http_->more_results();
  std::vector<DicomRow> rows;
  if (http_->status() == 204 || absl::StripAsciiWhitespace(http_->body()).empty()) return rows;
  google::protobuf::ListValue matches;
  const auto parsed = google::protobuf::util::JsonStringToMessage(http_->body(), &matches);
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
  const DicomWebHttp::Sink sink = [&](absl::string_view data) {
    if (reader == nullptr) {
      absl::StatusOr<std::string> boundary = MultipartBoundary(http_->content_type());
      if (!boundary.ok()) {
        return absl::FailedPreconditionError(
            absl::StrCat("DICOMweb server ", url, " answered WADO-RS with Content-Type '",
                         http_->content_type(), "', not ", kMultipartDicom));
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
