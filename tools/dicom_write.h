// Writing DICOM datasets with DCMTK: the pieces flctl phantom and flctl synth share.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "dcmtk/config/osconfig.h"
#include "dcmtk/dcmdata/dcdatset.h"
#include "dcmtk/dcmdata/dcfilefo.h"
#include "dcmtk/dcmdata/dctagkey.h"

namespace fl {

// Puts every (tag, value) into `ds`; the error names the tag.
absl::Status PutAll(DcmDataset* ds, const std::vector<std::pair<DcmTagKey, std::string>>& items);

// Puts `stored` as the pixel data of `file`'s dataset and saves it to `path` (explicit VR little
// endian); the error names the file.
absl::Status SaveWithPixels(DcmFileFormat& file, const std::vector<uint16_t>& stored,
                            const std::string& path);

// A fresh UID under DCMTK's site root.
std::string NewUid();

}  // namespace fl
