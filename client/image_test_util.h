// Test-only: writes real JPEG and PNG files with libjpeg-turbo and libpng, as the public
// datasets ship them.
#pragma once

#include <jpeglib.h>
#include <png.h>

#include <cstdint>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

namespace fl::testing {

// `samples` is height x width x channels (1 gray, 3 RGB), row-major.
inline bool WriteJpeg(const std::string& path, int height, int width, int channels,
                      const std::vector<uint8_t>& samples, int quality = 95) {
  FILE* file = std::fopen(path.c_str(), "wb");
  if (file == nullptr) return false;
  jpeg_compress_struct cinfo;
  jpeg_error_mgr error;
  cinfo.err = jpeg_std_error(&error);
  jpeg_create_compress(&cinfo);
  jpeg_stdio_dest(&cinfo, file);
  cinfo.image_width = width;
  cinfo.image_height = height;
  cinfo.input_components = channels;
  cinfo.in_color_space = channels == 1 ? JCS_GRAYSCALE : JCS_RGB;
  jpeg_set_defaults(&cinfo);
  jpeg_set_quality(&cinfo, quality, TRUE);
  jpeg_start_compress(&cinfo, TRUE);
  while (cinfo.next_scanline < cinfo.image_height) {
    JSAMPROW row =
        const_cast<JSAMPROW>(&samples[static_cast<size_t>(cinfo.next_scanline) * width * channels]);
    jpeg_write_scanlines(&cinfo, &row, 1);
  }
  jpeg_finish_compress(&cinfo);
  jpeg_destroy_compress(&cinfo);
  return std::fclose(file) == 0;
}

// `samples` holds height x width x channels values of `bits` (8 or 16) bits; color_type is a
// PNG_COLOR_TYPE_*.
inline bool WritePng(const std::string& path, int height, int width, int bits, int color_type,
                     const std::vector<uint16_t>& samples) {
  FILE* file = std::fopen(path.c_str(), "wb");
  if (file == nullptr) return false;
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
  png_infop info = png_create_info_struct(png);
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_write_struct(&png, &info);
    std::fclose(file);
    return false;
  }
  png_init_io(png, file);
  png_set_IHDR(png, info, width, height, bits, color_type, PNG_INTERLACE_NONE,
               PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  png_write_info(png, info);
  const int channels = png_get_channels(png, info);
  const int bytes = bits == 16 ? 2 : 1;
  std::vector<png_byte> row(static_cast<size_t>(width) * channels * bytes);
  for (int y = 0; y < height; ++y) {
    for (int i = 0; i < width * channels; ++i) {
      const uint16_t v = samples[static_cast<size_t>(y) * width * channels + i];
      if (bytes == 2) {
        row[2 * i] = static_cast<png_byte>(v >> 8);  // PNG is big-endian
        row[2 * i + 1] = static_cast<png_byte>(v & 0xFF);
      } else {
        row[i] = static_cast<png_byte>(v);
      }
    }
    png_write_row(png, row.data());
  }
  png_write_end(png, nullptr);
  png_destroy_write_struct(&png, &info);
  return std::fclose(file) == 0;
}

// A gray gradient of height x width 8-bit samples.
inline std::vector<uint8_t> Gradient8(int height, int width) {
  std::vector<uint8_t> v(static_cast<size_t>(height) * width);
  for (int y = 0; y < height; ++y)
    for (int x = 0; x < width; ++x)
      v[y * width + x] = static_cast<uint8_t>((x * 255) / (width - 1));
  return v;
}

// A checkerboard of 3-pixel squares: busy enough that a JPEG of it has far more scan data than
// header, so that cutting the file in half leaves the header whole and the scan short.
inline std::vector<uint8_t> Busy8(int height, int width) {
  std::vector<uint8_t> v(static_cast<size_t>(height) * width);
  for (int y = 0; y < height; ++y)
    for (int x = 0; x < width; ++x) v[y * width + x] = ((x / 3 + y / 3) % 2) ? 230 : 20;
  return v;
}

// Cuts `path` to its first `keep` bytes (0: half of it).
inline void Truncate(const std::string& path, size_t keep) {
  std::ifstream in(path, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (keep == 0) keep = bytes.size() / 2;
  std::ofstream(path, std::ios::binary | std::ios::trunc).write(bytes.data(), keep);
}

}  // namespace fl::testing
