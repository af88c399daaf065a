// CheXpert and MIMIC-CXR-JPG: JPEG files labelled by the CheXpert labeler (1.0, 0.0, -1.0
// uncertain, blank unknown).
#include <algorithm>
#include <filesystem>
#include <map>
#include <set>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "client/csv.h"
#include "client/public_sources.h"
#include "common/status.h"

namespace fl {
namespace {

namespace fs = std::filesystem;
using source_internal::ChexpertValue;
using source_internal::Skip;

// The findings' values of one CSV row (columns `columns`), or the reason it cannot be read.
absl::StatusOr<std::vector<float>> ReadFindings(const std::vector<std::string>& fields,
                                                const std::vector<int>& columns,
                                                UncertainPolicy policy) {
  std::vector<float> values;
  values.reserve(columns.size());
  for (int c : columns) {
    ASSIGN_OR_RETURN(float v, ChexpertValue(fields[c], policy));
    values.push_back(v);
  }
  return values;
}

// ---- CheXpert

constexpr const char* kChexpertMeta[] = {"Path", "Sex", "Age", "Frontal/Lateral", "AP/PA"};

// "CheXpert-v1.0/train/patient00001/study1/view1_frontal.jpg" -> "patient00001".
std::string ChexpertPatient(const std::string& path) {
  for (absl::string_view part : absl::StrSplit(path, '/')) {
    if (absl::StartsWith(part, "patient")) return std::string(part);
  }
  return "";
}

class ChexpertData : public DataSource {
 public:
  ChexpertData(ChexpertSource config, ScanProgress scan)
      : config_(std::move(config)), scan_(std::move(scan)) {
    if (config_.csv_files().empty()) config_.add_csv_files("train.csv");
  }

  std::string Kind() const override { return "chexpert"; }

  absl::StatusOr<Dataset> List(double test_fraction) const override {
    RETURN_IF_ERROR(source_internal::CheckTestFraction(test_fraction));
    Dataset data;
    data.field_names = source_internal::ClinicalFieldNames();
    std::set<std::string> seen;
    std::vector<Sample> pending;  // listed; their files are checked once every CSV is read
    for (const std::string& name : config_.csv_files()) {
      RETURN_IF_ERROR(ReadCsv((fs::path(config_.root()) / name).string(), &seen, &pending, &data));
    }
    source_internal::CheckFilesAndSplit(std::move(pending), test_fraction, scan_, &data);
    return data;
  }

  absl::StatusOr<std::vector<float>> Load(const Sample& sample,
                                          const PixelShape& shape) const override {
    return LoadImageFile(sample.path, shape);
  }

 private:
  // The release's Path is relative to the folder that holds CheXpert-v1.0/, root's parent; a
  // root laid out otherwise may hold the paths itself. A file in neither place is named where
  // the release puts it.
  std::string Resolve(const std::string& relative) const {
    fs::path root(config_.root());
    if (!root.has_filename()) root = root.parent_path();  // "/data/CheXpert-v1.0/"
    const fs::path beside = root.parent_path() / relative;
    const fs::path inside = root / relative;
    std::error_code ec;
    if (!fs::exists(beside, ec) && fs::exists(inside, ec)) return inside.string();
    return beside.string();
  }

  absl::Status ReadCsv(const std::string& path, std::set<std::string>* seen,
                       std::vector<Sample>* pending, Dataset* data) const {
    ASSIGN_OR_RETURN(std::unique_ptr<CsvReader> csv, CsvReader::Open(path));
    std::vector<int> meta;
    for (const char* column : kChexpertMeta) {
      ASSIGN_OR_RETURN(int index, csv->Column(column));
      meta.push_back(index);
    }
    std::vector<int> findings;
    std::vector<std::string> names;
    for (size_t c = 0; c < csv->header().size(); ++c) {
      if (std::find(meta.begin(), meta.end(), static_cast<int>(c)) != meta.end()) continue;
      findings.push_back(static_cast<int>(c));
      names.push_back(csv->header()[c]);
    }
    if (data->label_names.empty()) {
      data->label_names = names;
    } else if (data->label_names != names) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": its findings differ from the first CSV's"));
    }
    std::vector<std::string> row;
    while (true) {
      ASSIGN_OR_RETURN(bool more, csv->Next(&row));
      if (!more) break;
      AddRow(row, meta, findings, csv->Where(), seen, pending, data);
    }
    return absl::OkStatus();
  }

  void AddRow(const std::vector<std::string>& row, const std::vector<int>& meta,
              const std::vector<int>& findings, const std::string& where,
              std::set<std::string>* seen, std::vector<Sample>* pending, Dataset* data) const {
    const std::string& relative = row[meta[0]];
    if (config_.frontal_only() && row[meta[3]] != "Frontal") {
      ++data->filtered;
      return;
    }
    absl::StatusOr<std::vector<float>> labels = ReadFindings(row, findings, config_.uncertain());
    if (!labels.ok()) {
      return Skip(where, std::string(labels.status().message()), SkipKind::kBadRow, data);
    }
    if (relative.empty()) return Skip(where, "empty Path", SkipKind::kBadRow, data);
    if (!seen->insert(relative).second) {
      return Skip(where, "duplicate Path " + relative, SkipKind::kDuplicate, data);
    }
    Sample sample;
    sample.path = Resolve(relative);
    sample.image_id = "chexpert:" + relative;
    sample.patient_id = ChexpertPatient(relative);
    sample.labels = *std::move(labels);
    source_internal::SetClinical(row[meta[1]], source_internal::ParseAgeYears(row[meta[2]]),
                                 &sample);
    pending->push_back(std::move(sample));
  }

  ChexpertSource config_;
  const ScanProgress scan_;
};

// ---- MIMIC-CXR-JPG

using StudyKey = std::pair<std::string, std::string>;  // subject_id, study_id

struct MimicLabels {
  std::vector<std::string> names;
  std::map<StudyKey, std::vector<float>> by_study;
};

absl::StatusOr<MimicLabels> ReadMimicLabels(const std::string& path, UncertainPolicy policy,
                                            Dataset* data) {
  ASSIGN_OR_RETURN(std::unique_ptr<CsvReader> csv, CsvReader::Open(path));
  ASSIGN_OR_RETURN(int subject, csv->Column("subject_id"));
  ASSIGN_OR_RETURN(int study, csv->Column("study_id"));
  MimicLabels labels;
  std::vector<int> findings;
  for (size_t c = 0; c < csv->header().size(); ++c) {
    if (static_cast<int>(c) == subject || static_cast<int>(c) == study) continue;
    findings.push_back(static_cast<int>(c));
    labels.names.push_back(csv->header()[c]);
  }
  std::vector<std::string> row;
  while (true) {
    ASSIGN_OR_RETURN(bool more, csv->Next(&row));
    if (!more) break;
    absl::StatusOr<std::vector<float>> values = ReadFindings(row, findings, policy);
    if (!values.ok()) {
      Skip(csv->Where(), std::string(values.status().message()), SkipKind::kBadRow, data);
      continue;
    }
    if (!labels.by_study.emplace(StudyKey{row[subject], row[study]}, *std::move(values)).second) {
      Skip(csv->Where(), "duplicate study " + row[study], SkipKind::kDuplicate, data);
    }
  }
  return labels;
}

class MimicCxrData : public DataSource {
 public:
  MimicCxrData(MimicCxrSource config, ScanProgress scan)
      : config_(std::move(config)), scan_(std::move(scan)) {}

  std::string Kind() const override { return "mimic_cxr"; }

  absl::StatusOr<Dataset> List(double test_fraction) const override {
    RETURN_IF_ERROR(source_internal::CheckTestFraction(test_fraction));
    ASSIGN_OR_RETURN(std::string labels_path,
                     source_internal::FindCsv(config_.root(), {"mimic-cxr-2.0.0-chexpert.csv"}));
    ASSIGN_OR_RETURN(std::string meta_path,
                     source_internal::FindCsv(config_.root(), {"mimic-cxr-2.0.0-metadata.csv"}));
    Dataset data;
    ASSIGN_OR_RETURN(MimicLabels labels, ReadMimicLabels(labels_path, config_.uncertain(), &data));
    data.label_names = labels.names;
    ASSIGN_OR_RETURN(std::unique_ptr<CsvReader> csv, CsvReader::Open(meta_path));
    std::vector<int> c;  // dicom_id, subject_id, study_id, ViewPosition
    for (const char* name : {"dicom_id", "subject_id", "study_id", "ViewPosition"}) {
      ASSIGN_OR_RETURN(int index, csv->Column(name));
      c.push_back(index);
    }
    std::set<std::string> seen;
    std::vector<Sample> pending;
    std::vector<std::string> row;
    while (true) {
      ASSIGN_OR_RETURN(bool more, csv->Next(&row));
      if (!more) break;
      AddRow(row, c, labels, csv->Where(), &seen, &pending, &data);
    }
    source_internal::CheckFilesAndSplit(std::move(pending), test_fraction, scan_, &data);
    return data;
  }

  absl::StatusOr<std::vector<float>> Load(const Sample& sample,
                                          const PixelShape& shape) const override {
    return LoadImageFile(sample.path, shape);
  }

 private:
  bool WantView(const std::string& view) const {
    if (config_.frontal_only() && view != "PA" && view != "AP") return false;
    const auto& views = config_.view_positions();
    return views.empty() || std::find(views.begin(), views.end(), view) != views.end();
  }

  // One metadata row: filtered by view, joined with its study's labels, its file checked.
  void AddRow(const std::vector<std::string>& row, const std::vector<int>& c,
              const MimicLabels& labels, const std::string& where, std::set<std::string>* seen,
              std::vector<Sample>* pending, Dataset* data) const {
    const std::string &dicom = row[c[0]], &subject = row[c[1]], &study = row[c[2]];
    if (!WantView(row[c[3]])) {
      ++data->filtered;
      return;
    }
    auto found = labels.by_study.find(StudyKey{subject, study});
    if (found == labels.by_study.end()) {
      ++data->unlabelled_files;
      return;
    }
    if (dicom.empty() || subject.size() < 2) {
      return Skip(where, "empty dicom_id or subject_id", SkipKind::kBadRow, data);
    }
    if (!seen->insert(dicom).second) {
      return Skip(where, "duplicate dicom_id " + dicom, SkipKind::kDuplicate, data);
    }
    Sample sample;
    sample.path = ImagePath(subject, study, dicom);
    sample.image_id = "mimic-cxr:" + dicom;
    sample.patient_id = subject;
    sample.labels = found->second;
    pending->push_back(std::move(sample));
  }

  // files/p10/p10000032/s50414267/02aa804e-....jpg
  std::string ImagePath(const std::string& subject, const std::string& study,
                        const std::string& dicom) const {
    return (fs::path(config_.root()) / "files" / ("p" + subject.substr(0, 2)) / ("p" + subject) /
            ("s" + study) / (dicom + ".jpg"))
        .string();
  }

  const MimicCxrSource config_;
  const ScanProgress scan_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<DataSource>> OpenChexpertSource(const ChexpertSource& config,
                                                               ScanProgress scan) {
  RETURN_IF_ERROR(source_internal::CheckRoot(config.root(), "source.chexpert.root"));
  return std::unique_ptr<DataSource>(std::make_unique<ChexpertData>(config, std::move(scan)));
}

absl::StatusOr<std::unique_ptr<DataSource>> OpenMimicCxrSource(const MimicCxrSource& config,
                                                               ScanProgress scan) {
  RETURN_IF_ERROR(source_internal::CheckRoot(config.root(), "source.mimic_cxr.root"));
  return std::unique_ptr<DataSource>(std::make_unique<MimicCxrData>(config, std::move(scan)));
}

}  // namespace fl
