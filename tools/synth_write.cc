#include <cmath>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/file_util.h"
#include "common/status.h"
#include "dcmtk/dcmdata/dcdeftag.h"
#include "dcmtk/dcmdata/dcfilefo.h"
#include "dcmtk/dcmdata/dcuid.h"
#include "tools/dicom_write.h"
#include "tools/synth.h"
#include "tools/synth_eval.h"
#include "client/dataset.h"
#include "client/dicom.h"

namespace fl {

std::vector<SynthClass> SynthClasses(const std::vector<std::string>& labels) {
  if (labels.empty()) return {{"unconditional", {}}};
  std::vector<SynthClass> classes = {{"no_finding", std::vector<int>(labels.size(), 0)}};
  for (size_t f = 0; f < labels.size(); ++f) {
    classes.push_back({labels[f], std::vector<int>(labels.size(), 0)});
    classes.back().states[f] = 1;
  }
  return classes;
}

namespace {

// "SYNTHETIC-<n>-<the series UID's last digits>": unique per image and set, within the 64
// characters of a DICOM LO, and nothing of any training patient.
std::string PatientIdOf(const std::string& series_uid, int index) {
  const std::string tail = series_uid.substr(series_uid.size() > 24 ? series_uid.size() - 24 : 0);
  return absl::StrFormat("SYNTHETIC-%06d-%s", index + 1, tail);
}

absl::Status WriteImage(const SyntheticSet& set, const SyntheticSet::Image& image, int index,
                        const std::string& study_uid, const std::string& series_uid,
                        const std::string& sop_uid, const std::string& path) {
  std::vector<uint16_t> stored(image.pixels.size());
  for (size_t i = 0; i < stored.size(); ++i) {
    const float v = std::isfinite(image.pixels[i]) ? image.pixels[i] : 0.0f;
    stored[i] = static_cast<uint16_t>(std::lround(std::clamp(v, 0.0f, 1.0f) * 4095.0f));
  }
  DcmFileFormat file;
  DcmDataset* ds = file.getDataset();
  const std::string size = std::to_string(set.size);
  const std::string comment =
      absl::StrCat("SYNTHETIC image (class ", set.classes[image.cls].name, "), not of any patient");
  RETURN_IF_ERROR(PutAll(ds, {{DCM_SOPClassUID, UID_SecondaryCaptureImageStorage},
                              {DCM_SOPInstanceUID, sop_uid},
                              {DCM_StudyInstanceUID, study_uid},
                              {DCM_SeriesInstanceUID, series_uid},
                              {DCM_Modality, "OT"},
                              {DCM_ConversionType, "SYN"},
                              {DCM_ImageType, "DERIVED\\SECONDARY"},
                              {DCM_BurnedInAnnotation, "NO"},
                              {DCM_SeriesDescription, "SYNTHETIC - federated latent diffusion"},
                              {DCM_StudyDescription, "SYNTHETIC"},
                              {DCM_ImageComments, comment},
                              {DCM_DerivationDescription, set.provenance.substr(0, 1024)},
                              {DCM_PatientName, "SYNTHETIC"},
                              // One "patient" per image: the client splits by patient.
                              {DCM_PatientID, PatientIdOf(series_uid, index)},
                              {DCM_PatientSex, ""},
                              {DCM_PatientBirthDate, ""},
                              {DCM_StudyDate, ""},
                              {DCM_StudyTime, ""},
                              {DCM_ReferringPhysicianName, ""},
                              {DCM_StudyID, "SYNTH"},
                              {DCM_AccessionNumber, ""},
                              {DCM_SeriesNumber, "1"},
                              {DCM_InstanceNumber, std::to_string(index + 1)},
                              {DCM_SamplesPerPixel, "1"},
                              {DCM_PhotometricInterpretation, "MONOCHROME2"},
                              {DCM_Rows, size},
                              {DCM_Columns, size},
                              {DCM_BitsAllocated, "16"},
                              {DCM_BitsStored, "12"},
                              {DCM_HighBit, "11"},
                              {DCM_PixelRepresentation, "0"},
                              {DCM_WindowCenter, "2048"},
                              {DCM_WindowWidth, "4096"}}));
  return SaveWithPixels(file, stored, path);
}

}  // namespace

absl::StatusOr<ImageFolder> ReadImageFolder(const std::string& dir, int side) {
  ASSIGN_OR_RETURN(std::vector<std::string> files, ListDataFiles(dir, ""));
  ImageFolder folder;
  folder.pixels.cols = int64_t{side} * side;
  for (const std::string& path : files) {
    if (path.size() >= 4 && path.compare(path.size() - 4, 4, ".csv") == 0) continue;
    absl::StatusOr<DicomImage> image = DecodeDicom(path, side);
    if (!image.ok()) {
      ++folder.skipped;
      continue;
    }
    folder.pixels.data.insert(folder.pixels.data.end(), image->pixels.begin(), image->pixels.end());
    folder.paths.push_back(path);
    ++folder.pixels.rows;
  }
  if (folder.pixels.rows == 0) {
    return absl::InvalidArgumentError(absl::StrCat("no DICOM image decodes in ", dir));
  }
  return folder;
}

absl::Status WriteSyntheticSet(const SyntheticSet& set, const std::string& out_dir) {
  RETURN_IF_ERROR(MakeDirs(out_dir, 0755));
  const std::string study_uid = NewUid(), series_uid = NewUid();
  std::string csv =
      absl::StrCat("key", set.labels.empty() ? "" : ",", absl::StrJoin(set.labels, ","), "\n");
  for (size_t i = 0; i < set.images.size(); ++i) {
    const std::string sop_uid = NewUid();
    RETURN_IF_ERROR(WriteImage(set, set.images[i], static_cast<int>(i), study_uid, series_uid,
                               sop_uid, absl::StrFormat("%s/synth_%06d.dcm", out_dir, i)));
    csv += sop_uid;
    for (int state : set.classes[set.images[i].cls].states) absl::StrAppend(&csv, ",", state);
    csv += "\n";
  }
  return WriteFileAtomic(out_dir + "/labels.csv", csv, 0644);
}

}  // namespace fl
