// Reads one DICOM file as the client trains on it, with DCMTK: every transfer syntax the DCMTK
// codecs decode (uncompressed, RLE, JPEG baseline/extended/lossless, JPEG-LS), modality LUT,
// VOI LUT / window, MONOCHROME1 inversion, resize to a square size.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace fl {

struct DicomImage {
  // Header facts, as in the file.
  int rows = 0;
  int cols = 0;
  int bits_stored = 0;
  std::string photometric;      // e.g. "MONOCHROME2"
  std::string transfer_syntax;  // UID, e.g. "1.2.840.10008.1.2.1"
  std::string transfer_syntax_name;
  std::string sop_instance_uid;
  std::string patient_id;
  std::string sex;     // "M", "F" or "" (from PatientSex)
  int age_years = -1;  // from PatientAge (e.g. "063Y"), -1 when absent
  std::string view_position;
  // Pixels after LUTs and inversion, scaled to [0, 1], size x size row-major (empty if size 0).
  int size = 0;
  std::vector<float> pixels;
};

// Registers the DCMTK decoders once per process. Thread-safe; DecodeDicom calls it itself.
void RegisterDicomCodecs();

// Decodes `path`; `size` > 0 resizes to size x size (area-averaging), 0 reads the header and
// checks that the pixel data decodes without keeping it. Never throws; a file that cannot be
// decoded gives an error that says why (truncated, no pixel data, unsupported syntax, ...).
absl::StatusOr<DicomImage> DecodeDicom(const std::string& path, int size);

// Reads the header facts of `path` without decoding pixels (fast; used by LoadDataset). Checks
// what can be checked without decompressing: the pixel data element is present, the dimensions
// are sane, the transfer syntax is one the registered codecs decode, and uncompressed pixel data
// is as long as rows x columns x bits says. `pixels` stays empty and `size` 0.
absl::StatusOr<DicomImage> ReadDicomHeader(const std::string& path);

}  // namespace fl
