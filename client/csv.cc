#include "client/csv.h"

#include <zlib.h>

#include <algorithm>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace fl {

absl::StatusOr<std::vector<std::string>> SplitCsvLine(const std::string& line) {
  std::vector<std::string> fields;
  std::string field;
  bool quoted = false, was_quoted = false;
  for (size_t i = 0; i < line.size(); ++i) {
    const char c = line[i];
    if (quoted) {
      if (c == '"' && i + 1 < line.size() && line[i + 1] == '"') {
        field += '"';
        ++i;
      } else if (c == '"') {
        quoted = false;
      } else {
        field += c;
      }
    } else if (c == '"' && absl::StripAsciiWhitespace(field).empty()) {
      quoted = was_quoted = true;
      field.clear();
    } else if (c == ',') {
      fields.push_back(was_quoted ? field : std::string(absl::StripAsciiWhitespace(field)));
      field.clear();
      was_quoted = false;
    } else {
      field += c;
    }
  }
  if (quoted) return absl::InvalidArgumentError("unterminated double quote");
  fields.push_back(was_quoted ? field : std::string(absl::StripAsciiWhitespace(field)));
  return fields;
}

absl::StatusOr<std::unique_ptr<CsvReader>> CsvReader::Open(const std::string& path) {
  gzFile file = gzopen(path.c_str(), "rb");
  if (file == nullptr) return absl::NotFoundError(absl::StrCat("cannot open CSV ", path));
  std::unique_ptr<CsvReader> reader(new CsvReader(path, file));
  std::string line;
  while (reader->ReadLine(&line)) {
    if (reader->line_ == 1 && line.rfind("\xEF\xBB\xBF", 0) == 0) line = line.substr(3);
    if (absl::StripAsciiWhitespace(line).empty()) continue;
    absl::StatusOr<std::vector<std::string>> fields = SplitCsvLine(line);
    if (!fields.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(reader->Where(), ": ", fields.status().message()));
    }
    reader->header_ = *std::move(fields);
    return reader;
  }
  return absl::InvalidArgumentError(absl::StrCat(path, ": empty CSV (no header row)"));
}

CsvReader::~CsvReader() { gzclose(static_cast<gzFile>(file_)); }

bool CsvReader::ReadLine(std::string* line) {
  line->clear();
  char buffer[8192];
  bool any = false;
  while (gzgets(static_cast<gzFile>(file_), buffer, sizeof(buffer)) != nullptr) {
    any = true;
    line->append(buffer);
    if (!line->empty() && line->back() == '\n') break;
  }
  if (!any) return false;
  ++line_;
  while (!line->empty() && (line->back() == '\n' || line->back() == '\r')) line->pop_back();
  return true;
}

absl::StatusOr<int> CsvReader::Column(const std::string& name) const {
  const int index = FindColumn(name);
  if (index < 0) {
    return absl::NotFoundError(absl::StrCat(path_, ": no column '", name, "' in the header"));
  }
  return index;
}

int CsvReader::FindColumn(const std::string& name) const {
  auto it = std::find(header_.begin(), header_.end(), name);
  return it == header_.end() ? -1 : static_cast<int>(it - header_.begin());
}

absl::StatusOr<bool> CsvReader::Next(std::vector<std::string>* fields) {
  std::string line;
  while (ReadLine(&line)) {
    if (absl::StripAsciiWhitespace(line).empty()) continue;
    absl::StatusOr<std::vector<std::string>> split = SplitCsvLine(line);
    if (!split.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(Where(), ": ", split.status().message()));
    }
    if (split->size() == header_.size() + 1 && split->back().empty()) split->pop_back();
    if (split->size() != header_.size()) {
      return absl::InvalidArgumentError(
          absl::StrCat(Where(), ": ", split->size(), " fields, the header has ", header_.size()));
    }
    *fields = *std::move(split);
    return true;
  }
  int error = Z_OK;
  gzerror(static_cast<gzFile>(file_), &error);
  if (error != Z_OK && error != Z_STREAM_END) {
    return absl::DataLossError(
        absl::StrCat(path_, ": read failed after line ", line_, " (corrupt gzip?)"));
  }
  return false;
}

std::string CsvReader::Where() const { return absl::StrCat(path_, " line ", line_); }

}  // namespace fl
