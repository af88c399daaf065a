#include "client/dataset.h"

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <limits>
#include <unordered_set>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "client/csv.h"
#include "client/dicom.h"
#include "common/status.h"

namespace fl {
uint64_t StableHash64(const std::string& text) {
  uint64_t hash = 14695981039346656037ull;
  for (unsigned char c : text) {
    hash ^= c;
    hash *= 1099511628211ull;
  }
  hash ^= hash >> 33;
  hash *= 0xff51afd7ed558ccdull;
  hash ^= hash >> 33;
  hash *= 0xc4ceb9fe1a85ec53ull;
  hash ^= hash >> 33;
  return hash;
}

std::vector<uint64_t> ImageHashes(const Dataset& data) {
  std::vector<uint64_t> hashes;
  hashes.reserve(data.train.size() + data.test.size());
  for (const auto* split : {&data.train, &data.test}) {
    for (const Sample& s : *split) {
      hashes.push_back(StableHash64(s.sop_instance_uid.empty() ? s.image_id : s.sop_instance_uid));
    }
  }
  return hashes;
}

namespace {

// One label value as documented on ReadLabelsCsv.
absl::StatusOr<float> ParseLabelValue(const std::string& text) {
  const std::string v = absl::AsciiStrToLower(text);
  if (v == "1" || v == "1.0" || v == "true") return 1.0f;
  if (v == "0" || v == "0.0" || v == "false") return 0.0f;
  if (v.empty() || v == "-1" || v == "-1.0" || v == "nan" || v == "na") {
    return std::numeric_limits<float>::quiet_NaN();
  }
  return absl::InvalidArgumentError(
      absl::StrCat("value '", text, "' is not 1, 0 or empty (unknown)"));
}

absl::Status ParseHeader(const std::vector<std::string>& fields, LabelTable* table) {
  if (fields.size() < 2) {
    return absl::InvalidArgumentError("header needs a key column and at least one label column");
  }
  std::unordered_set<std::string> seen;
  for (size_t i = 1; i < fields.size(); ++i) {
    if (fields[i].empty()) {
      return absl::InvalidArgumentError(absl::StrCat("column ", i + 1, " has an empty name"));
    }
    if (!seen.insert(fields[i]).second) {
      return absl::InvalidArgumentError(absl::StrCat("duplicate column '", fields[i], "'"));
    }
    table->label_names.push_back(fields[i]);
  }
  return absl::OkStatus();
}

absl::Status ParseRow(const std::vector<std::string>& fields, LabelTable* table) {
  if (fields.size() != table->label_names.size() + 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(fields.size(), " fields, the header has ", table->label_names.size() + 1));
  }
  if (fields[0].empty()) return absl::InvalidArgumentError("empty key");
  std::vector<float> values;
  for (size_t i = 1; i < fields.size(); ++i) {
    ASSIGN_OR_RETURN(float value, ParseLabelValue(fields[i]));
    values.push_back(value);
  }
  table->rows.emplace_back(fields[0], std::move(values));
  return absl::OkStatus();
}

// Patients' place in the split: StableHash64 mapped to [0, 1). Stable across platforms and
// releases: changing it would move patients between splits.
double StableFraction(const std::string& text) {
  return static_cast<double>(StableHash64(text) >> 11) * (1.0 / 9007199254740992.0);
}

std::string RelativePath(const std::string& dir, const std::string& path) {
  std::error_code ec;
  auto rel = std::filesystem::relative(path, dir, ec);
  return ec ? path : rel.generic_string();
}

// The DICOM reader's messages already start with the file's path; it is not repeated.
void LogSkip(const std::string& path, const std::string& reason) {
  std::cerr << "dataset: skipping "
            << (absl::StartsWith(reason, path) ? reason : absl::StrCat(path, ": ", reason)) << "\n";
}

}  // namespace

const char* SkipKindName(SkipKind kind) {
  switch (kind) {
    case SkipKind::kUnreadable:
      return "unreadable";
    case SkipKind::kMissingFile:
      return "missing_file";
    case SkipKind::kDuplicate:
      return "duplicate";
    case SkipKind::kBadRow:
      return "bad_row";
  }
  return "unreadable";
}

absl::StatusOr<LabelTable> ReadLabelsCsv(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open labels CSV ", path));
  LabelTable table;
  std::unordered_map<std::string, int> line_of_key;
  std::string line;
  int line_no = 0;
  bool have_header = false;
  while (std::getline(in, line)) {
    ++line_no;
    if (line_no == 1 && line.rfind("\xEF\xBB\xBF", 0) == 0) line = line.substr(3);  // BOM
    if (absl::StripAsciiWhitespace(line).empty()) continue;
    auto fields = SplitCsvLine(line);
    absl::Status status = fields.status();
    if (status.ok())
      status = have_header ? ParseRow(*fields, &table) : ParseHeader(*fields, &table);
    if (!status.ok()) return Annotate(status, absl::StrCat(path, " line ", line_no));
    if (!have_header) {
      have_header = true;
      continue;
    }
    auto [it, inserted] = line_of_key.emplace(table.rows.back().first, line_no);
    if (!inserted) {
      return absl::InvalidArgumentError(absl::StrCat(path, " line ", line_no, ": duplicate key '",
                                                     it->first, "' (first on line ", it->second,
                                                     ")"));
    }
  }
  if (!have_header) return absl::InvalidArgumentError(absl::StrCat(path, ": empty labels CSV"));
  return table;
}

LabelIndex::LabelIndex(const LabelTable& table) : table_(table) {
  for (size_t i = 0; i < table.rows.size(); ++i) row_of_key_.emplace(table.rows[i].first, i);
}

const std::vector<float>* LabelIndex::Find(const std::string& sop_instance_uid,
                                           const std::string& relative_path) const {
  auto it = sop_instance_uid.empty() ? row_of_key_.end() : row_of_key_.find(sop_instance_uid);
  if (it == row_of_key_.end()) it = row_of_key_.find(relative_path);
  return it == row_of_key_.end() ? nullptr : &table_.rows[it->second].second;
}

absl::StatusOr<std::vector<std::string>> ListDataFiles(const std::string& dir,
                                                       const std::string& exclude) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    return absl::NotFoundError(absl::StrCat("data folder ", dir, " is not a directory"));
  }
  const fs::path excluded = exclude.empty() ? fs::path() : fs::weakly_canonical(exclude, ec);
  std::vector<std::string> files;
  fs::recursive_directory_iterator it(dir, fs::directory_options::skip_permission_denied, ec);
  if (ec) return absl::NotFoundError(absl::StrCat("cannot list ", dir, ": ", ec.message()));
  for (; it != fs::recursive_directory_iterator(); it.increment(ec)) {
    if (ec) break;
    if (!it->is_regular_file(ec)) continue;
    if (!excluded.empty() && fs::weakly_canonical(it->path(), ec) == excluded) continue;
    files.push_back(it->path().string());
  }
  if (ec) return absl::InternalError(absl::StrCat("listing ", dir, " failed: ", ec.message()));
  std::sort(files.begin(), files.end());
  return files;
}

absl::StatusOr<Dataset> LoadDataset(const std::string& dir, const std::string& labels_csv,
                                    double test_fraction, const ScanProgress& progress) {
  if (!(test_fraction >= 0.0 && test_fraction <= 1.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("test_fraction ", test_fraction, " is not in [0, 1]"));
  }
  LabelTable table;
  if (!labels_csv.empty()) {
    ASSIGN_OR_RETURN(table, ReadLabelsCsv(labels_csv));
  }
  const LabelIndex index(table);
  ASSIGN_OR_RETURN(std::vector<std::string> files, ListDataFiles(dir, labels_csv));
  Dataset dataset;
  dataset.label_names = table.label_names;
  std::unordered_set<std::string> seen_uids;
  size_t done = 0;
  for (const std::string& path : files) {
    if (progress) progress(done++, files.size());
    auto header = ReadDicomHeader(path);
    if (!header.ok()) {
      LogSkip(path, std::string(header.status().message()));
      dataset.skips.push_back(
          {path, std::string(header.status().message()),
           absl::IsNotFound(header.status()) ? SkipKind::kMissingFile : SkipKind::kUnreadable});
      ++dataset.skipped_files;
      continue;
    }
    if (!header->sop_instance_uid.empty() && !seen_uids.insert(header->sop_instance_uid).second) {
      LogSkip(path, "duplicate SOP Instance UID " + header->sop_instance_uid);
      dataset.skips.push_back(
          {path, "duplicate SOP Instance UID " + header->sop_instance_uid, SkipKind::kDuplicate});
      ++dataset.skipped_files;
      continue;
    }
    Sample sample;
    sample.path = path;
    sample.sop_instance_uid = header->sop_instance_uid;
    sample.patient_id = header->patient_id;
    sample.sex = header->sex;
    sample.age_years = header->age_years;
    if (!labels_csv.empty()) {
      const std::vector<float>* labels =
          index.Find(sample.sop_instance_uid, RelativePath(dir, path));
      if (labels == nullptr) {
        ++dataset.unlabelled_files;
        continue;
      }
      sample.labels = *labels;
    }
    const std::string& key =
        sample.patient_id.empty() ? sample.sop_instance_uid : sample.patient_id;
    (StableFraction(key) < test_fraction ? dataset.test : dataset.train)
        .push_back(std::move(sample));
  }
  if (progress) progress(files.size(), files.size());
  if (dataset.unlabelled_files > 0) {
    std::cerr << "dataset: " << dataset.unlabelled_files << " decodable files in " << dir
              << " have no row in " << labels_csv << "\n";
  }
  return dataset;
}

}  // namespace fl
