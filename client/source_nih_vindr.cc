// NIH ChestX-ray14 (PNG, findings joined by '|') and VinDr-CXR (DICOM, one labels row per
// radiologist).
#include <algorithm>
#include <filesystem>
#include <map>
#include <set>
#include <unordered_map>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "client/csv.h"
#include "client/dicom.h"
#include "client/public_sources.h"
#include "common/status.h"

namespace fl {
namespace {

namespace fs = std::filesystem;
using source_internal::AddToSplit;
using source_internal::Skip;

// ---- ChestX-ray14

// The 14 findings of the release, in the order of Wang et al. 2017's tables.
const std::vector<std::string>& Nih14Findings() {
  static const std::vector<std::string> kFindings = {
      "Atelectasis", "Cardiomegaly", "Effusion",           "Infiltration",  "Mass",
      "Nodule",      "Pneumonia",    "Pneumothorax",       "Consolidation", "Edema",
      "Emphysema",   "Fibrosis",     "Pleural_Thickening", "Hernia"};
  return kFindings;
}

// "Cardiomegaly|Effusion" -> 1 for those two, 0 for the rest; "No Finding" -> all 0.
absl::StatusOr<std::vector<float>> ParseNihFindings(const std::string& text) {
  const std::vector<std::string>& names = Nih14Findings();
  std::vector<float> values(names.size(), 0.0f);
  if (text == "No Finding") return values;
  for (absl::string_view part : absl::StrSplit(text, '|')) {
    auto it = std::find(names.begin(), names.end(), part);
    if (it == names.end()) {
      return absl::InvalidArgumentError(absl::StrCat("unknown finding '", part, "' in '", text,
                                                     "' (not one of the 14, nor No Finding)"));
    }
    values[it - names.begin()] = 1.0f;
  }
  return values;
}

// Every PNG under root by its file name (the release spreads them over images_001/images/ to
// images_012/images/).
absl::StatusOr<std::unordered_map<std::string, std::string>> IndexPngs(const std::string& root) {
  std::unordered_map<std::string, std::string> index;
  std::error_code ec;
  fs::recursive_directory_iterator it(root, fs::directory_options::skip_permission_denied, ec);
  for (; !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
    if (it->path().extension() == ".png" && it->is_regular_file(ec)) {
      index.emplace(it->path().filename().string(), it->path().string());
    }
  }
  if (ec) return absl::InternalError(absl::StrCat("listing ", root, " failed: ", ec.message()));
  return index;
}

class ChestXray14Data : public DataSource {
 public:
  ChestXray14Data(ChestXray14Source config, ScanProgress scan)
      : config_(std::move(config)), scan_(std::move(scan)) {}

  std::string Kind() const override { return "chestxray14"; }

  absl::StatusOr<Dataset> List(double test_fraction) const override {
    RETURN_IF_ERROR(source_internal::CheckTestFraction(test_fraction));
    ASSIGN_OR_RETURN(std::string path,
                     source_internal::FindCsv(
                         config_.root(), {"Data_Entry_2017.csv", "Data_Entry_2017_v2020.csv"}));
    ASSIGN_OR_RETURN(std::unique_ptr<CsvReader> csv, CsvReader::Open(path));
    std::vector<int> c;
    for (const char* name : {"Image Index", "Finding Labels", "Patient ID", "Patient Age",
                             "Patient Gender", "View Position"}) {
      ASSIGN_OR_RETURN(int index, csv->Column(name));
      c.push_back(index);
    }
    ASSIGN_OR_RETURN(auto pngs, IndexPngs(config_.root()));
    Dataset data;
    data.label_names = Nih14Findings();
    data.field_names = source_internal::ClinicalFieldNames();
    std::set<std::string> seen;
    std::vector<Sample> pending;
    std::vector<std::string> row;
    while (true) {
      ASSIGN_OR_RETURN(bool more, csv->Next(&row));
      if (!more) break;
      AddRow(row, c, pngs, csv->Where(), &seen, &pending, &data);
    }
    source_internal::CheckFilesAndSplit(std::move(pending), test_fraction, scan_, &data);
    return data;
  }

  absl::StatusOr<std::vector<float>> Load(const Sample& sample,
                                          const PixelShape& shape) const override {
    return LoadImageFile(sample.path, shape);
  }

 private:
  void AddRow(const std::vector<std::string>& row, const std::vector<int>& c,
              const std::unordered_map<std::string, std::string>& pngs, const std::string& where,
              std::set<std::string>* seen, std::vector<Sample>* pending, Dataset* data) const {
    const std::string& name = row[c[0]];
    if (config_.frontal_only() && row[c[5]] != "PA" && row[c[5]] != "AP") {
      ++data->filtered;
      return;
    }
    absl::StatusOr<std::vector<float>> labels = ParseNihFindings(row[c[1]]);
    if (!labels.ok()) {
      return Skip(where, std::string(labels.status().message()), SkipKind::kBadRow, data);
    }
    if (!seen->insert(name).second) {
      return Skip(where, "duplicate Image Index " + name, SkipKind::kDuplicate, data);
    }
    auto file = pngs.find(name);
    if (file == pngs.end()) {
      return Skip(where,
                  absl::StrCat(name,
                               ": missing file (listed in the CSV, under no images*/ "
                               "folder)"),
                  SkipKind::kMissingFile, data);
    }
    Sample sample;
    sample.path = file->second;
    sample.image_id = "chestxray14:" + name;
    sample.patient_id = row[c[2]];
    sample.labels = *std::move(labels);
    source_internal::SetClinical(row[c[4]], source_internal::ParseAgeYears(row[c[3]]), &sample);
    pending->push_back(std::move(sample));
  }

  const ChestXray14Source config_;
  const ScanProgress scan_;
};

// ---- VinDr-CXR

// One image's readings: per finding, how many readers said yes, and how many read it.
struct Readings {
  std::vector<int> positives;
  int readers = 0;
  std::set<std::string> rad_ids;
};

absl::StatusOr<int> ReadBinary(const std::string& text) {
  if (text == "1" || text == "1.0") return 1;
  if (text == "0" || text == "0.0") return 0;
  return absl::InvalidArgumentError(absl::StrCat("value '", text, "' is not 0 or 1"));
}

class VindrCxrData : public DataSource {
 public:
  VindrCxrData(VindrCxrSource config, ScanProgress scan)
      : config_(std::move(config)), scan_(std::move(scan)) {
    if (config_.labels_csv().empty()) config_.set_labels_csv("annotations/image_labels_train.csv");
    if (config_.image_dir().empty()) config_.set_image_dir("train");
  }

  std::string Kind() const override { return "vindr_cxr"; }

  absl::StatusOr<Dataset> List(double test_fraction) const override {
    RETURN_IF_ERROR(source_internal::CheckTestFraction(test_fraction));
    Dataset data;
    std::vector<std::string> order;
    std::map<std::string, Readings> images;
    RETURN_IF_ERROR(ReadLabels(&data, &order, &images));
    data.field_names = source_internal::ClinicalFieldNames();
    for (size_t i = 0; i < order.size(); ++i) {  // reads each file's DICOM header: slow
      AddImage(order[i], images.at(order[i]), test_fraction, &data);
      if (scan_) scan_(i + 1, order.size());
    }
    return data;
  }

  absl::StatusOr<std::vector<float>> Load(const Sample& sample,
                                          const PixelShape& shape) const override {
    return LoadImageFile(sample.path, shape);
  }

 private:
  // Gathers every radiologist's row per image_id (first-seen order in `order`).
  absl::Status ReadLabels(Dataset* data, std::vector<std::string>* order,
                          std::map<std::string, Readings>* images) const {
    const std::string path = (fs::path(config_.root()) / config_.labels_csv()).string();
    ASSIGN_OR_RETURN(std::unique_ptr<CsvReader> csv, CsvReader::Open(path));
    ASSIGN_OR_RETURN(int image, csv->Column("image_id"));
    const int rad = csv->FindColumn("rad_id");  // absent from the test set's consensus labels
    std::vector<int> findings;
    for (size_t c = 0; c < csv->header().size(); ++c) {
      if (static_cast<int>(c) == image || static_cast<int>(c) == rad) continue;
      findings.push_back(static_cast<int>(c));
      data->label_names.push_back(csv->header()[c]);
    }
    std::vector<std::string> row;
    while (true) {
      ASSIGN_OR_RETURN(bool more, csv->Next(&row));
      if (!more) break;
      absl::Status s = AddReading(row, image, rad, findings, order, images);
      if (!s.ok()) Skip(csv->Where(), std::string(s.message()), SkipKind::kBadRow, data);
    }
    return absl::OkStatus();
  }

  static absl::Status AddReading(const std::vector<std::string>& row, int image, int rad,
                                 const std::vector<int>& findings, std::vector<std::string>* order,
                                 std::map<std::string, Readings>* images) {
    if (row[image].empty()) return absl::InvalidArgumentError("empty image_id");
    std::vector<int> values;
    for (int c : findings) {
      ASSIGN_OR_RETURN(int v, ReadBinary(row[c]));
      values.push_back(v);
    }
    auto [it, inserted] = images->try_emplace(row[image]);
    Readings& r = it->second;
    if (inserted) {
      order->push_back(row[image]);
      r.positives.assign(findings.size(), 0);
    }
    if (rad >= 0 && !r.rad_ids.insert(row[rad]).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("second row of radiologist ", row[rad], " for image ", row[image]));
    }
    for (size_t k = 0; k < values.size(); ++k) r.positives[k] += values[k];
    ++r.readers;
    return absl::OkStatus();
  }

  // Majority: more than half of the readers; any: at least one.
  std::vector<float> Merge(const Readings& r) const {
    std::vector<float> labels(r.positives.size());
    for (size_t k = 0; k < labels.size(); ++k) {
      const bool positive =
          config_.merge() == MERGE_ANY ? r.positives[k] > 0 : 2 * r.positives[k] > r.readers;
      labels[k] = positive ? 1.0f : 0.0f;
    }
    return labels;
  }

  void AddImage(const std::string& id, const Readings& readings, double test_fraction,
                Dataset* data) const {
    const std::string path =
        (fs::path(config_.root()) / config_.image_dir() / (id + ".dicom")).string();
    std::error_code ec;
    if (!fs::is_regular_file(path, ec)) {
      return Skip(path, "missing file (listed in the labels CSV)", SkipKind::kMissingFile, data);
    }
    absl::StatusOr<DicomImage> header = ReadDicomHeader(path);
    if (!header.ok()) return Skip(path, header.status(), data);
    Sample sample;
    sample.path = path;
    sample.sop_instance_uid = header->sop_instance_uid;
    sample.image_id = "vindr-cxr:" + id;
    sample.patient_id = header->patient_id.empty() ? sample.image_id : header->patient_id;
    sample.labels = Merge(readings);
    source_internal::SetClinical(header->sex, header->age_years, &sample);
    AddToSplit(std::move(sample), test_fraction, data);
  }

  VindrCxrSource config_;
  const ScanProgress scan_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<DataSource>> OpenChestXray14Source(const ChestXray14Source& config,
                                                                  ScanProgress scan) {
  RETURN_IF_ERROR(source_internal::CheckRoot(config.root(), "source.chestxray14.root"));
  return std::unique_ptr<DataSource>(std::make_unique<ChestXray14Data>(config, std::move(scan)));
}

absl::StatusOr<std::unique_ptr<DataSource>> OpenVindrCxrSource(const VindrCxrSource& config,
                                                               ScanProgress scan) {
  RETURN_IF_ERROR(source_internal::CheckRoot(config.root(), "source.vindr_cxr.root"));
  return std::unique_ptr<DataSource>(std::make_unique<VindrCxrData>(config, std::move(scan)));
}

}  // namespace fl
