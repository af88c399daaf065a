// JPEG and PNG files as the public datasets ship them, decoded with Debian's libjpeg-turbo and
// libpng to one gray channel in [0, 1], and the area-averaging resize every 2D source shares.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace fl {

enum class ImageFormat { kUnknown, kJpeg, kPng };

// The format by the file's first bytes (not by its name).
ImageFormat SniffImageFormat(const std::string& path);

struct GrayImage {
  int height = 0;
  int width = 0;
  int bits = 0;               // bits per sample in the file (8, or 16 for a 16-bit PNG)
  int channels = 0;           // colour channels in the file (1 gray, 3 RGB; alpha not counted)
  std::vector<float> pixels;  // height x width, row-major, in [0, 1]; empty from a header read
};

// Header facts only (dimensions, bits, channels), without decoding the pixels: fast, for
// listing. A file that is not a JPEG or PNG of sane dimensions is an error naming it.
absl::StatusOr<GrayImage> ReadImageHeader(const std::string& path);

// Decodes a JPEG (8-bit baseline or progressive; 12-bit is refused) or PNG (1 to 16 bits, gray,
// gray+alpha, palette, RGB, RGBA; alpha dropped; colour to gray with the Rec. 601 weights) to
// gray in [0, 1]: 8-bit values / 255, 16-bit / 65535. `min_side` > 0 lets a JPEG decode at a
// reduced scale (libjpeg's DCT scaling, 1/2 to 1/8) as long as both sides stay >= min_side.
// A truncated or corrupt file is an error naming the file and libjpeg's or libpng's reason
// (libjpeg's warnings, such as premature end of data, are errors here: it would pad the image).
absl::StatusOr<GrayImage> DecodeImage(const std::string& path, int min_side = 0);

// Area-averaging resize of a rows x cols image to out_rows x out_cols (each output pixel the
// mean of the source area it covers), divided by `divisor` and clamped to [0, 1]. `T`: float or
// uint16_t (DICOM's stored values, divisor 65535).
template <typename T>
std::vector<float> ResizeArea(const T* src, int rows, int cols, int out_rows, int out_cols,
                              float divisor = 1.0f);
inline std::vector<float> ResizeArea(const std::vector<float>& src, int rows, int cols,
                                     int out_rows, int out_cols) {
  return ResizeArea(src.data(), rows, cols, out_rows, out_cols);
}

}  // namespace fl
