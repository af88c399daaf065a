#include "client/data_source.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <iostream>
#include <limits>
#include <map>
#include <set>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "client/dicom.h"
#include "client/image_codec.h"
#include "client/pacs.h"
#include "client/public_sources.h"
#include "common/status.h"

namespace fl {
namespace source_internal {

void AddToSplit(Sample sample, double test_fraction, Dataset* data) {
  const std::string& key =
      sample.patient_id.empty()
          ? (sample.sop_instance_uid.empty() ? sample.image_id : sample.sop_instance_uid)
          : sample.patient_id;
  // As LoadDataset: StableHash64 mapped to [0, 1).
  const double fraction = static_cast<double>(StableHash64(key) >> 11) * (1.0 / 9007199254740992.0);
  (fraction < test_fraction ? data->test : data->train).push_back(std::move(sample));
}

void Skip(const std::string& what, const std::string& reason, SkipKind kind, Dataset* data) {
  std::cerr << "dataset: skipping "
            << (absl::StartsWith(reason, what) ? reason : absl::StrCat(what, ": ", reason)) << "\n";
  data->skips.push_back({what, reason, kind});
  ++data->skipped_files;
}

void Skip(const std::string& what, const absl::Status& status, Dataset* data) {
  Skip(what, std::string(status.message()),
       absl::IsNotFound(status) ? SkipKind::kMissingFile : SkipKind::kUnreadable, data);
}

void CheckFilesAndSplit(std::vector<Sample> pending, double test_fraction, const ScanProgress& scan,
                        Dataset* data) {
  for (size_t i = 0; i < pending.size(); ++i) {
    if (absl::Status s = CheckImageFile(pending[i].path); !s.ok()) {
      Skip(pending[i].path, s, data);
    } else {
      AddToSplit(std::move(pending[i]), test_fraction, data);
    }
    if (scan) scan(i + 1, pending.size());
  }
}

absl::Status CheckTestFraction(double test_fraction) {
  if (!(test_fraction >= 0.0 && test_fraction <= 1.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("test_fraction ", test_fraction, " is not in [0, 1]"));
  }
  return absl::OkStatus();
}

absl::StatusOr<float> ChexpertValue(const std::string& text, UncertainPolicy policy) {
  constexpr float kUnknown = std::numeric_limits<float>::quiet_NaN();
  if (text.empty()) return kUnknown;
  if (text == "1.0" || text == "1") return 1.0f;
  if (text == "0.0" || text == "0") return 0.0f;
  if (text == "-1.0" || text == "-1") {
    switch (policy) {
      case UNCERTAIN_POSITIVE:
        return 1.0f;
      case UNCERTAIN_NEGATIVE:
        return 0.0f;
      default:
        return kUnknown;
    }
  }
  return absl::InvalidArgumentError(
      absl::StrCat("value '", text, "' is not 1.0, 0.0, -1.0 (uncertain) or blank (unknown)"));
}

void SetClinical(const std::string& sex, int age_years, Sample* sample) {
  constexpr float kUnknown = std::numeric_limits<float>::quiet_NaN();
  sample->sex = NormaliseSex(sex);
  sample->age_years = age_years;
  sample->fields = {age_years >= 0 ? static_cast<float>(age_years) : kUnknown,
                    sample->sex == "M"   ? 1.0f
                    : sample->sex == "F" ? 0.0f
                                         : kUnknown};
}

std::string NormaliseSex(const std::string& text) {
  const std::string v = absl::AsciiStrToLower(text);
  if (v == "m" || v == "male") return "M";
  if (v == "f" || v == "female") return "F";
  return "";
}

int ParseAgeYears(const std::string& text) {
  std::string digits = text;
  if (!digits.empty() && (digits.back() == 'Y' || digits.back() == 'y')) digits.pop_back();
  int age = -1;
  if (digits.empty() || !absl::SimpleAtoi(digits, &age) || age < 0 || age > 150) return -1;
  return age;
}

absl::Status CheckRoot(const std::string& root, const std::string& field) {
  if (root.empty()) return absl::InvalidArgumentError(absl::StrCat(field, ": required"));
  std::error_code ec;
  if (!std::filesystem::is_directory(root, ec)) {
    return absl::NotFoundError(absl::StrCat(field, ": ", root, " is not a directory"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> FindCsv(const std::string& root,
                                    const std::vector<std::string>& names) {
  std::error_code ec;
  for (const std::string& name : names) {
    for (const std::string& candidate : {name, name + ".gz"}) {
      const std::string path = (std::filesystem::path(root) / candidate).string();
      if (std::filesystem::is_regular_file(path, ec)) return path;
    }
  }
  return absl::NotFoundError(
      absl::StrCat("no ", absl::StrJoin(names, " or "), " (or .gz) in ", root));
}

absl::Status CheckImageFile(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) {
    return absl::NotFoundError(absl::StrCat(path, ": missing file (listed in the CSV)"));
  }
  return ReadImageHeader(path).status();
}

}  // namespace source_internal

namespace {

// The folder of DICOM files with its labels CSV: LoadDataset, unchanged.
class DicomFolderData : public DataSource {
 public:
  DicomFolderData(DicomFolderSource config, ScanProgress scan)
      : config_(std::move(config)), scan_(std::move(scan)) {}

  std::string Kind() const override { return "dicom_folder"; }

  absl::StatusOr<Dataset> List(double test_fraction) const override {
    return LoadDataset(config_.dir(), config_.labels_csv(), test_fraction, scan_);
  }

  absl::StatusOr<std::vector<float>> Load(const Sample& sample,
                                          const PixelShape& shape) const override {
    return LoadImageFile(sample.path, shape);
  }

 private:
  const DicomFolderSource config_;
  const ScanProgress scan_;
};

// Another source with findings renamed onto the job's label space.
class RenamedSource : public DataSource {
 public:
  RenamedSource(std::unique_ptr<DataSource> inner, std::map<std::string, std::string> renames)
      : inner_(std::move(inner)), renames_(std::move(renames)) {}

  std::string Kind() const override { return inner_->Kind(); }

  absl::StatusOr<Dataset> List(double test_fraction) const override {
    ASSIGN_OR_RETURN(Dataset data, inner_->List(test_fraction));
    std::set<std::string> unused;
    for (const auto& [from, to] : renames_) unused.insert(from);
    std::set<std::string> seen;
    for (std::string& name : data.label_names) {
      auto it = renames_.find(name);
      if (it != renames_.end()) {
        unused.erase(name);
        name = it->second;
      }
      if (!seen.insert(name).second) {
        return absl::InvalidArgumentError(absl::StrCat("source.rename_labels: two findings of the ",
                                                       Kind(), " source become '", name, "'"));
      }
    }
    if (!unused.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "source.rename_labels: the ", Kind(), " source has no finding '", *unused.begin(), "'"));
    }
    return data;
  }

  absl::StatusOr<std::vector<float>> Load(const Sample& sample,
                                          const PixelShape& shape) const override {
    return inner_->Load(sample, shape);
  }

 private:
  const std::unique_ptr<DataSource> inner_;
  const std::map<std::string, std::string> renames_;
};

absl::StatusOr<std::unique_ptr<DataSource>> OpenKind(const DataSourceConfig& config,
                                                     ScanProgress scan) {
  switch (config.kind_case()) {
    case DataSourceConfig::kDicomFolder:
      if (config.dicom_folder().dir().empty()) {
        return absl::InvalidArgumentError("source.dicom_folder.dir: required");
      }
      return std::unique_ptr<DataSource>(
          std::make_unique<DicomFolderData>(config.dicom_folder(), std::move(scan)));
    case DataSourceConfig::kChexpert:
      return OpenChexpertSource(config.chexpert(), std::move(scan));
    case DataSourceConfig::kMimicCxr:
      return OpenMimicCxrSource(config.mimic_cxr(), std::move(scan));
    case DataSourceConfig::kChestxray14:
      return OpenChestXray14Source(config.chestxray14(), std::move(scan));
    case DataSourceConfig::kVindrCxr:
      return OpenVindrCxrSource(config.vindr_cxr(), std::move(scan));
    case DataSourceConfig::kPacs:
      return OpenPacsSource(config.pacs());
    case DataSourceConfig::KIND_NOT_SET:
      break;
  }
  return absl::InvalidArgumentError(
      "source: no kind set (dicom_folder, chexpert, mimic_cxr, chestxray14, vindr_cxr or pacs)");
}

}  // namespace

absl::StatusOr<std::unique_ptr<DataSource>> OpenDataSource(const DataSourceConfig& config,
                                                           ScanProgress scan) {
  ASSIGN_OR_RETURN(std::unique_ptr<DataSource> source, OpenKind(config, std::move(scan)));
  if (config.rename_labels().empty()) return source;
  std::map<std::string, std::string> renames(config.rename_labels().begin(),
                                             config.rename_labels().end());
  return std::unique_ptr<DataSource>(
      std::make_unique<RenamedSource>(std::move(source), std::move(renames)));
}

DataSourceConfig SourceOf(const ClientConfig& config) {
  if (config.has_source()) {
    DataSourceConfig source = config.source();
    if (source.has_pacs() && source.pacs().cache_dir().empty()) {
      source.mutable_pacs()->set_cache_dir(
          (std::filesystem::path(config.state_dir()) / "pacs").string());
    }
    return source;
  }
  DataSourceConfig source;
  source.mutable_dicom_folder()->set_dir(config.data_dir());
  source.mutable_dicom_folder()->set_labels_csv(config.labels_csv());
  return source;
}

absl::StatusOr<std::vector<float>> LoadImageFile(const std::string& path, const PixelShape& shape) {
  if (shape.depth != 0) {
    return absl::UnimplementedError(
        absl::StrCat(path, ": volumes (depth ", shape.depth, ") are not loaded yet"));
  }
  if (shape.height < 1 || shape.width < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": load shape ", shape.height, "x", shape.width, " is empty"));
  }
  if (SniffImageFormat(path) == ImageFormat::kUnknown) {
    if (shape.height != shape.width) {
      return absl::UnimplementedError(absl::StrCat(
          path, ": DICOM decodes to a square size only, not ", shape.height, "x", shape.width));
    }
    ASSIGN_OR_RETURN(DicomImage image, DecodeDicom(path, shape.height));
    return std::move(image.pixels);
  }
  ASSIGN_OR_RETURN(GrayImage image, DecodeImage(path, std::max(shape.height, shape.width)));
  return ResizeArea(image.pixels, image.height, image.width, shape.height, shape.width);
}

}  // namespace fl
