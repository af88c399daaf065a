// CSV files as the datasets ship them: a header row, then rows read by column name. Plain or
// gzip-compressed (zlib reads both; MIMIC-CXR ships its CSVs as .csv.gz).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace fl {

// Splits one CSV line into fields, trimmed of surrounding whitespace; double-quoted fields may
// hold commas and "" escapes (kept as they are, untrimmed).
absl::StatusOr<std::vector<std::string>> SplitCsvLine(const std::string& line);

class CsvReader {
 public:
  // Opens `path` (plain or gzip) and reads its header; a missing file is NOT_FOUND, an empty one
  // INVALID_ARGUMENT, both naming it. A UTF-8 byte order mark is dropped.
  static absl::StatusOr<std::unique_ptr<CsvReader>> Open(const std::string& path);
  ~CsvReader();

  // The column's index, or NOT_FOUND naming the file and the column.
  absl::StatusOr<int> Column(const std::string& name) const;
  // The column's index, or -1.
  int FindColumn(const std::string& name) const;
  const std::vector<std::string>& header() const { return header_; }

  // The next non-blank row into `fields` (as many as the header has; a row that differs is an
  // error naming its line, except for one extra empty field at the end). False at the end.
  absl::StatusOr<bool> Next(std::vector<std::string>* fields);
  // "PATH line N" of the row Next returned last.
  std::string Where() const;

 private:
  CsvReader(std::string path, void* file) : path_(std::move(path)), file_(file) {}
  bool ReadLine(std::string* line);

  const std::string path_;
  void* file_;  // gzFile
  std::vector<std::string> header_;
  int line_ = 0;
};

}  // namespace fl
