#include "client/dicom.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <mutex>

// DCMTK's own DicomImage class is ::DicomImage; ours is fl::DicomImage.
#include "client/image_codec.h"
#include "dcmtk/config/osconfig.h"
#include "dcmtk/dcmdata/dccodec.h"
#include "dcmtk/dcmdata/dcdeftag.h"
#include "dcmtk/dcmdata/dcfilefo.h"
#include "dcmtk/dcmdata/dcrledrg.h"
#include "dcmtk/dcmdata/dcxfer.h"
#include "dcmtk/dcmimage/diregist.h"
#include "dcmtk/dcmimgle/dcmimage.h"
#include "dcmtk/dcmjpeg/djdecode.h"
#include "dcmtk/dcmjpls/djdecode.h"
#include "dcmtk/oflog/oflog.h"

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace fl {
namespace {

constexpr long kMaxDimension = 16384;

// Checks that `path` is a regular, non-empty file; tells whether it carries the Part 10 "DICM"
// magic at offset 128 (files without it are still tried, as raw datasets).
absl::Status CheckFile(const std::string& path, bool* has_magic) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) {
    return absl::NotFoundError(absl::StrCat(path, ": not a readable regular file"));
  }
  const auto bytes = std::filesystem::file_size(path, ec);
  if (ec) return absl::NotFoundError(absl::StrCat(path, ": cannot stat: ", ec.message()));
  if (bytes == 0) return absl::InvalidArgumentError(absl::StrCat(path, ": empty file (0 bytes)"));
  std::ifstream in(path, std::ios::binary);
  char head[132] = {};
  in.read(head, sizeof(head));
  *has_magic = in.gcount() == sizeof(head) && std::memcmp(head + 128, "DICM", 4) == 0;
  // Without the magic, only a raw dataset starting with group 0002 or 0008 is worth parsing.
  const int group = static_cast<unsigned char>(head[0]) | static_cast<unsigned char>(head[1]) << 8;
  if (!*has_magic && (in.gcount() < 8 || (group != 0x0002 && group != 0x0008))) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": not a DICOM file (no 'DICM' magic at byte 128, no dataset at byte 0)"));
  }
  return absl::OkStatus();
}

std::string GetString(DcmItem* item, const DcmTagKey& key) {
  OFString value;
  if (item->findAndGetOFString(key, value).bad()) return "";
  return std::string(absl::StripAsciiWhitespace(value.c_str()));
}

long GetInt(DcmItem* item, const DcmTagKey& key, long fallback) {
  Uint16 us = 0;
  if (item->findAndGetUint16(key, us).good()) return us;
  std::string text = GetString(item, key);  // e.g. NumberOfFrames (IS)
  long value = 0;
  return absl::SimpleAtoi(text, &value) ? value : fallback;
}

// "063Y" -> 63; months, weeks and days give 0; a bare number is years; anything else -1.
int ParseAge(const std::string& text) {
  if (text.empty()) return -1;
  std::string digits = text;
  char unit = 'Y';
  if (!absl::ascii_isdigit(static_cast<unsigned char>(text.back()))) {
    unit = absl::ascii_toupper(static_cast<unsigned char>(text.back()));
    digits = text.substr(0, text.size() - 1);
  }
  int value = 0;
  if (!absl::SimpleAtoi(digits, &value) || value < 0) return -1;
  if (unit == 'Y') return value;
  return (unit == 'M' || unit == 'W' || unit == 'D') ? 0 : -1;
}

// Header facts of `file` into `out`; the bits allocated, samples per pixel and frame count into
// the other outputs.
void ReadFacts(DcmFileFormat& file, DicomImage* out, long* bits_allocated, long* samples,
               long* frames) {
  DcmDataset* ds = file.getDataset();
  DcmXfer xfer(ds->getOriginalXfer());
  out->transfer_syntax = xfer.getXferID();
  out->transfer_syntax_name = xfer.getXferName();
  out->rows = static_cast<int>(GetInt(ds, DCM_Rows, 0));
  out->cols = static_cast<int>(GetInt(ds, DCM_Columns, 0));
  out->bits_stored = static_cast<int>(GetInt(ds, DCM_BitsStored, 0));
  out->photometric = GetString(ds, DCM_PhotometricInterpretation);
  out->sop_instance_uid = GetString(ds, DCM_SOPInstanceUID);
  out->patient_id = GetString(ds, DCM_PatientID);
  const std::string sex = absl::AsciiStrToUpper(GetString(ds, DCM_PatientSex));
  out->sex = (sex == "M" || sex == "F") ? sex : "";
  out->age_years = ParseAge(GetString(ds, DCM_PatientAge));
  out->view_position = GetString(ds, DCM_ViewPosition);
  *bits_allocated = GetInt(ds, DCM_BitsAllocated, 0);
  *samples = GetInt(ds, DCM_SamplesPerPixel, 1);
  *frames = GetInt(ds, DCM_NumberOfFrames, 1);
}

// The checks that need no decompression: pixel data, dimensions, transfer syntax, length.
absl::Status CheckPixelData(DcmFileFormat& file, const DicomImage& facts, long bits_allocated,
                            long samples, long frames) {
  DcmDataset* ds = file.getDataset();
  DcmElement* pixel_data = nullptr;
  if (ds->findAndGetElement(DCM_PixelData, pixel_data).bad() || pixel_data == nullptr) {
    return absl::InvalidArgumentError("no pixel data element (7FE0,0010): not an image");
  }
  if (facts.rows <= 0 || facts.cols <= 0 || facts.rows > kMaxDimension ||
      facts.cols > kMaxDimension) {
    return absl::InvalidArgumentError(absl::StrCat("absurd dimensions ", facts.rows, "x",
                                                   facts.cols, " (rows and columns ",
                                                   "must be in 1..", kMaxDimension, ")"));
  }
  if (bits_allocated <= 0 || bits_allocated > 32 || facts.bits_stored <= 0 ||
      facts.bits_stored > bits_allocated || samples <= 0 || samples > 4 || frames <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("invalid pixel description: bits allocated ", bits_allocated, ", bits stored ",
                     facts.bits_stored, ", samples per pixel ", samples, ", frames ", frames));
  }
  DcmXfer xfer(ds->getOriginalXfer());
  if (xfer.isEncapsulated()) {
    if (!DcmCodecList::canChangeCoding(xfer.getXfer(), EXS_LittleEndianExplicit)) {
      return absl::UnimplementedError(absl::StrCat("unsupported transfer syntax ",
                                                   xfer.getXferName(), " (", xfer.getXferID(),
                                                   "): no DCMTK decoder for it"));
    }
    return absl::OkStatus();
  }
  const uint64_t needed =
      (static_cast<uint64_t>(facts.rows) * facts.cols * samples * frames * bits_allocated + 7) / 8;
  const uint64_t have = pixel_data->getLength();
  if (have == DCM_UndefinedLength || have < needed) {
    return absl::InvalidArgumentError(absl::StrCat(
        "pixel data too short: ", have == DCM_UndefinedLength ? 0 : have, " bytes for ", facts.rows,
        "x", facts.cols, "x", samples, " samples x ", frames, " frames at ", bits_allocated,
        " bits (", needed, " bytes needed; truncated file?)"));
  }
  return absl::OkStatus();
}

// Loads `path` and runs every header check; `facts` gets the header fields.
absl::StatusOr<std::unique_ptr<DcmFileFormat>> LoadChecked(const std::string& path,
                                                           DicomImage* facts) {
  RegisterDicomCodecs();
  bool has_magic = false;
  RETURN_IF_ERROR(CheckFile(path, &has_magic));
  auto file = std::make_unique<DcmFileFormat>();
  OFCondition cond = file->loadFile(path.c_str());
  if (cond.bad()) {
    return absl::InvalidArgumentError(absl::StrCat(
        path,
        has_magic ? ": DICOM parse failed (truncated or corrupt file): "
                  : ": not a DICOM file (no 'DICM' magic at byte 128, not a raw dataset): ",
        cond.text()));
  }
  long bits_allocated = 0, samples = 1, frames = 1;
  ReadFacts(*file, facts, &bits_allocated, &samples, &frames);
  if (!has_magic && facts->sop_instance_uid.empty() && facts->rows == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": not a DICOM file (no 'DICM' magic at byte 128, no image header)"));
  }
  absl::Status status = CheckPixelData(*file, *facts, bits_allocated, samples, frames);
  if (!status.ok()) return Annotate(status, path);
  return file;
}

// Renders the first frame of `file`: modality LUT, VOI (first window, else first VOI LUT, else
// min-max), MONOCHROME1 polarity; into `out->pixels` when size > 0.
absl::Status Render(DcmFileFormat& file, int size, DicomImage* out) {
  ::DicomImage image(&file, file.getDataset()->getOriginalXfer(), CIF_DecompressCompletePixelData,
                     0, 1);
  if (image.getStatus() != EIS_Normal) {
    return absl::InvalidArgumentError(
        absl::StrCat("pixel data does not decode: ", ::DicomImage::getString(image.getStatus())));
  }
  std::unique_ptr<::DicomImage> mono;
  ::DicomImage* view = &image;
  if (!image.isMonochrome()) {
    mono.reset(image.createMonochromeImage());
    if (mono == nullptr || mono->getStatus() != EIS_Normal) {
      return absl::InvalidArgumentError("colour image cannot be converted to monochrome");
    }
    view = mono.get();
  }
  if (view->getWindowCount() > 0) {
    view->setWindow(0);
  } else if (view->getVoiLutCount() > 0) {
    view->setVoiLut(0);
  } else {
    view->setMinMaxWindow(0);
  }
  const auto* data = static_cast<const Uint16*>(view->getOutputData(16, 0));
  if (data == nullptr) {
    return absl::InternalError(
        absl::StrCat("rendering failed: ", ::DicomImage::getString(view->getStatus())));
  }
  if (size > 0) {
    out->pixels =
        ResizeArea(reinterpret_cast<const uint16_t*>(data), static_cast<int>(view->getHeight()),
                   static_cast<int>(view->getWidth()), size, size, 65535.0f);
    out->size = size;
  }
  return absl::OkStatus();
}

}  // namespace

void RegisterDicomCodecs() {
  static std::once_flag once;
  std::call_once(once, [] {
    OFLog::configure(OFLogger::ERROR_LOG_LEVEL);
    DJDecoderRegistration::registerCodecs();
    DJLSDecoderRegistration::registerCodecs();
    DcmRLEDecoderRegistration::registerCodecs();
  });
}

absl::StatusOr<DicomImage> ReadDicomHeader(const std::string& path) {
  DicomImage facts;
  ASSIGN_OR_RETURN(auto file, LoadChecked(path, &facts));
  return facts;
}

absl::StatusOr<DicomImage> DecodeDicom(const std::string& path, int size) {
  if (size < 0 || size > kMaxDimension) {
    return absl::InvalidArgumentError(
        absl::StrCat("decode size ", size, " out of 0..", kMaxDimension));
  }
  DicomImage facts;
  ASSIGN_OR_RETURN(auto file, LoadChecked(path, &facts));
  try {
    absl::Status status = Render(*file, size, &facts);
    if (!status.ok()) return Annotate(status, path);
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat(path, ": DCMTK threw while decoding: ", e.what()));
  }
  return facts;
}

}  // namespace fl
