#include "tools/dicom_write.h"

#include "absl/strings/str_cat.h"
#include "dcmtk/dcmdata/dcdeftag.h"
#include "dcmtk/dcmdata/dctag.h"
#include "dcmtk/dcmdata/dcuid.h"

namespace fl {

absl::Status PutAll(DcmDataset* ds, const std::vector<std::pair<DcmTagKey, std::string>>& items) {
  for (const auto& [key, value] : items) {
    OFCondition cond = ds->putAndInsertString(key, value.c_str());
    if (cond.bad()) {
      return absl::InternalError(
          absl::StrCat("setting ", DcmTag(key).getTagName(), ": ", cond.text()));
    }
  }
  return absl::OkStatus();
}

absl::Status SaveWithPixels(DcmFileFormat& file, const std::vector<uint16_t>& stored,
                            const std::string& path) {
  OFCondition cond = file.getDataset()->putAndInsertUint16Array(
      DCM_PixelData, stored.data(), static_cast<unsigned long>(stored.size()));
  if (cond.good()) cond = file.saveFile(path.c_str(), EXS_LittleEndianExplicit);
  if (cond.bad()) return absl::InternalError(absl::StrCat("writing ", path, ": ", cond.text()));
  return absl::OkStatus();
}

std::string NewUid() {
  char buffer[100];
  return dcmGenerateUniqueIdentifier(buffer, SITE_INSTANCE_UID_ROOT);
}

}  // namespace fl
