// The public chest-radiograph datasets as released, each a DataSource (client/data_source.h):
// the CSVs and image files laid out exactly as the official downloads unpack. Internal to
// client/data_source.cc, which opens them by the config's kind.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "client/data_source.h"
#include "fl/config.pb.h"

namespace fl {

// Each reads its CSVs first, then checks the image files they list, reporting that second pass
// (the slow one) to `scan` (images checked of those listed).
// CheXpert v1.0 (client/source_chexpert.cc).
absl::StatusOr<std::unique_ptr<DataSource>> OpenChexpertSource(const ChexpertSource& config,
                                                               ScanProgress scan = {});
// MIMIC-CXR-JPG v2.0.0 (client/source_chexpert.cc: the same CheXpert labeler's values).
absl::StatusOr<std::unique_ptr<DataSource>> OpenMimicCxrSource(const MimicCxrSource& config,
                                                               ScanProgress scan = {});
// NIH ChestX-ray14 (client/source_nih_vindr.cc).
absl::StatusOr<std::unique_ptr<DataSource>> OpenChestXray14Source(const ChestXray14Source& config,
                                                                  ScanProgress scan = {});
// VinDr-CXR v1.0.0 (client/source_nih_vindr.cc).
absl::StatusOr<std::unique_ptr<DataSource>> OpenVindrCxrSource(const VindrCxrSource& config,
                                                               ScanProgress scan = {});

namespace source_internal {

// The clinical fields the public sources carry, in Dataset::field_names order.
inline const std::vector<std::string>& ClinicalFieldNames() {
  static const std::vector<std::string> kNames = {"age_years", "sex_male"};
  return kNames;
}
// Sets sample->sex and age_years and the matching fields (NaN where unknown).
void SetClinical(const std::string& sex, int age_years, Sample* sample);
// "F"/"Female" -> "F", "M"/"Male" -> "M", anything else "".
std::string NormaliseSex(const std::string& text);
// "58", "058", "058Y" -> 58; anything else -1.
int ParseAgeYears(const std::string& text);
// A root folder that exists, or INVALID_ARGUMENT / NOT_FOUND naming `field`.
absl::Status CheckRoot(const std::string& root, const std::string& field);
// `root`/`name`, or `root`/`name`.gz when only that exists; NOT_FOUND naming both.
absl::StatusOr<std::string> FindCsv(const std::string& root, const std::vector<std::string>& names);
// Checks that an image file exists and its JPEG or PNG header reads; the reason otherwise.
absl::Status CheckImageFile(const std::string& path);

}  // namespace source_internal
}  // namespace fl
