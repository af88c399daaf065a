// A site's local dataset: the DICOM files of a folder joined with a CSV of labels, split into
// train and test by patient.
#pragma once

#include <cmath>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace fl {

struct Sample {
  std::string path;
  std::string sop_instance_uid;
  std::string patient_id;
  std::string sex;       // "M", "F" or ""
  int age_years = -1;
  // One value per Dataset::label_names: 1, 0, or NaN when this sample has no value for it.
  std::vector<float> labels;
};

struct Dataset {
  std::vector<std::string> label_names;  // the CSV's label columns
  std::vector<Sample> train;
  std::vector<Sample> test;
  int skipped_files = 0;                 // files that could not be read (logged with the reason)
  int unlabelled_files = 0;              // decodable files without a CSV row
};

// Labels CSV: a header row "key,<label>,<label>..." where key is a SOP Instance UID or a path
// relative to the data folder; values 1/0, or empty for unknown. Also used by `flctl data check`.
struct LabelTable {
  std::vector<std::string> label_names;
  // key -> values (one per label; NaN for unknown)
  std::vector<std::pair<std::string, std::vector<float>>> rows;
};
absl::StatusOr<LabelTable> ReadLabelsCsv(const std::string& path);

// Scans `dir` recursively, reads each DICOM header, joins with the labels CSV by SOP Instance UID
// or relative path, and splits by patient (deterministic hash of patient id; test_fraction of the
// patients go to test). Unreadable files are skipped and counted, never fatal.
absl::StatusOr<Dataset> LoadDataset(const std::string& dir, const std::string& labels_csv,
                                    double test_fraction);

}  // namespace fl
