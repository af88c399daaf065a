#include "client/image_codec.h"

#include <jpeglib.h>
#include <png.h>

#include <algorithm>
#include <cmath>
#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>
#include <memory>

#include "absl/strings/str_cat.h"

namespace fl {
namespace {

constexpr int kMaxSide = 32768;

absl::Status Corrupt(const std::string& path, const std::string& what, const std::string& why) {
  return absl::InvalidArgumentError(absl::StrCat(path, ": ", what, " does not decode: ", why));
}

// The file's bytes, at most `max_bytes` of them.
absl::StatusOr<std::string> ReadFile(const std::string& path, size_t max_bytes) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open (missing file?)"));
  std::string bytes;
  char buffer[1 << 16];
  while (bytes.size() < max_bytes && in.read(buffer, sizeof(buffer)).gcount() > 0) {
    bytes.append(buffer, static_cast<size_t>(in.gcount()));
  }
  if (in.bad()) return absl::UnavailableError(absl::StrCat(path, ": read failed"));
  if (bytes.empty())
    return absl::InvalidArgumentError(absl::StrCat(path, ": empty file (0 bytes)"));
  return bytes;
}

absl::Status CheckSides(const std::string& path, long height, long width) {
  if (height < 1 || width < 1 || height > kMaxSide || width > kMaxSide) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": image of ", width, "x", height,
                                                   " pixels (sides must be 1..", kMaxSide, ")"));
  }
  return absl::OkStatus();
}

// ---- JPEG (libjpeg-turbo). Errors and warnings leave through longjmp with libjpeg's message.

struct JpegError {
  jpeg_error_mgr manager;
  std::jmp_buf jump;
  char message[JMSG_LENGTH_MAX] = {};
};

[[noreturn]] void JpegErrorExit(j_common_ptr cinfo) {
  auto* error = reinterpret_cast<JpegError*>(cinfo->err);
  (*cinfo->err->format_message)(cinfo, error->message);
  std::longjmp(error->jump, 1);
}

// A warning (level -1) is corrupt data that libjpeg would paper over (premature end of data:
// the rest of the image padded with gray), so it fails the decode. Trace messages are dropped.
void JpegEmitMessage(j_common_ptr cinfo, int level) {
  if (level < 0) JpegErrorExit(cinfo);
}

// The largest DCT scale denominator (8, 4, 2, 1) that keeps both sides >= min_side.
int JpegScaleDenominator(int height, int width, int min_side) {
  if (min_side <= 0) return 1;
  for (int d : {8, 4, 2}) {
    if ((height + d - 1) / d >= min_side && (width + d - 1) / d >= min_side) return d;
  }
  return 1;
}

// REQUIRES: out and row outlive the call (they are heap objects: nothing the longjmp skips).
bool RunJpeg(const std::string& bytes, int min_side, bool header_only, GrayImage* out,
             std::vector<JSAMPLE>* row, JpegError* error) {
  jpeg_decompress_struct cinfo;
  cinfo.err = jpeg_std_error(&error->manager);
  error->manager.error_exit = JpegErrorExit;
  error->manager.emit_message = JpegEmitMessage;
  if (setjmp(error->jump)) {
    jpeg_destroy_decompress(&cinfo);
    return false;
  }
  jpeg_create_decompress(&cinfo);
  jpeg_mem_src(&cinfo, reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size());
  jpeg_read_header(&cinfo, TRUE);
  out->height = static_cast<int>(cinfo.image_height);
  out->width = static_cast<int>(cinfo.image_width);
  out->bits = cinfo.data_precision;
  out->channels = cinfo.num_components;
  if (header_only || out->height < 1 || out->width < 1 || out->height > kMaxSide ||
      out->width > kMaxSide) {
    jpeg_destroy_decompress(&cinfo);
    return true;
  }
  cinfo.out_color_space = JCS_GRAYSCALE;  // YCbCr: the luma; RGB: Rec. 601 weights
  cinfo.scale_num = 1;
  cinfo.scale_denom = JpegScaleDenominator(out->height, out->width, min_side);
  jpeg_start_decompress(&cinfo);
  const int h = static_cast<int>(cinfo.output_height), w = static_cast<int>(cinfo.output_width);
  out->pixels.assign(static_cast<size_t>(h) * w, 0.0f);
  row->resize(static_cast<size_t>(w) * cinfo.output_components);
  JSAMPROW rows[1] = {row->data()};
  while (cinfo.output_scanline < cinfo.output_height) {
    const int y = static_cast<int>(cinfo.output_scanline);
    jpeg_read_scanlines(&cinfo, rows, 1);
    float* dst = &out->pixels[static_cast<size_t>(y) * w];
    for (int x = 0; x < w; ++x) dst[x] = (*row)[x] / 255.0f;
  }
  jpeg_finish_decompress(&cinfo);
  jpeg_destroy_decompress(&cinfo);
  out->height = h;
  out->width = w;
  return true;
}

absl::StatusOr<GrayImage> DecodeJpeg(const std::string& path, const std::string& bytes,
                                     int min_side, bool header_only) {
  auto out = std::make_unique<GrayImage>();
  auto row = std::make_unique<std::vector<JSAMPLE>>();
  auto error = std::make_unique<JpegError>();
  if (!RunJpeg(bytes, min_side, header_only, out.get(), row.get(), error.get())) {
    return Corrupt(path, "JPEG", error->message);
  }
  if (absl::Status s = CheckSides(path, out->height, out->width); !s.ok()) return s;
  return std::move(*out);
}

// ---- PNG (libpng). Errors leave through png_jmpbuf; warnings (e.g. a known-incorrect sRGB
// profile) are harmless to the pixels and dropped.

struct PngReader {
  const std::string* bytes = nullptr;
  size_t offset = 0;
  char message[256] = {};
};

void PngRead(png_structp png, png_bytep data, png_size_t length) {
  auto* reader = static_cast<PngReader*>(png_get_io_ptr(png));
  if (reader->bytes->size() - reader->offset < length) {
    png_error(png, "file ends early (truncated)");
  }
  std::memcpy(data, reader->bytes->data() + reader->offset, length);
  reader->offset += length;
}

void PngErrorFn(png_structp png, png_const_charp message) {
  auto* reader = static_cast<PngReader*>(png_get_error_ptr(png));
  std::snprintf(reader->message, sizeof(reader->message), "%s", message);
  png_longjmp(png, 1);
}

void PngWarningFn(png_structp, png_const_charp) {}

// Gray (1..16 bits), palette, RGB and alpha all become one gray channel of 8 or 16 bits.
void SetPngTransforms(png_structp png, png_infop info) {
  const int color = png_get_color_type(png, info);
  const int depth = png_get_bit_depth(png, info);
  if (color == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
  if (color == PNG_COLOR_TYPE_GRAY && depth < 8) png_set_expand_gray_1_2_4_to_8(png);
  if (color & PNG_COLOR_MASK_ALPHA) png_set_strip_alpha(png);
  if ((color & PNG_COLOR_MASK_COLOR) != 0) {
    png_set_rgb_to_gray_fixed(png, 1, 29900, 58700);  // Rec. 601: 0.299 R + 0.587 G + 0.114 B
  }
  png_set_interlace_handling(png);
  png_read_update_info(png, info);
}

// REQUIRES: out and rows outlive the call (heap objects: nothing the longjmp skips).
bool RunPng(PngReader* reader, bool header_only, GrayImage* out, std::vector<png_byte>* buffer,
            std::vector<png_bytep>* rows) {
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, reader, PngErrorFn, PngWarningFn);
  if (png == nullptr) return false;
  png_infop info = png_create_info_struct(png);
  if (info == nullptr || setjmp(png_jmpbuf(png))) {
    png_destroy_read_struct(&png, &info, nullptr);
    return false;
  }
  png_set_read_fn(png, reader, PngRead);
  png_read_info(png, info);
  out->height = static_cast<int>(png_get_image_height(png, info));
  out->width = static_cast<int>(png_get_image_width(png, info));
  out->bits = png_get_bit_depth(png, info);
  out->channels = (png_get_color_type(png, info) & PNG_COLOR_MASK_COLOR) ? 3 : 1;
  if (header_only || out->height > kMaxSide || out->width > kMaxSide) {
    png_destroy_read_struct(&png, &info, nullptr);
    return true;
  }
  SetPngTransforms(png, info);
  const size_t stride = png_get_rowbytes(png, info);
  const int depth = png_get_bit_depth(png, info);
  buffer->resize(stride * out->height);
  rows->resize(out->height);
  for (int y = 0; y < out->height; ++y) (*rows)[y] = buffer->data() + stride * y;
  png_read_image(png, rows->data());
  png_read_end(png, nullptr);
  png_destroy_read_struct(&png, &info, nullptr);
  const size_t n = static_cast<size_t>(out->height) * out->width;
  out->pixels.resize(n);
  for (int y = 0; y < out->height; ++y) {
    const png_byte* src = (*rows)[y];
    float* dst = &out->pixels[static_cast<size_t>(y) * out->width];
    for (int x = 0; x < out->width; ++x) {
      dst[x] = depth == 16 ? static_cast<float>(src[2 * x] << 8 | src[2 * x + 1]) / 65535.0f
                           : src[x] / 255.0f;
    }
  }
  return true;
}

absl::StatusOr<GrayImage> DecodePng(const std::string& path, const std::string& bytes,
                                    bool header_only) {
  auto out = std::make_unique<GrayImage>();
  auto buffer = std::make_unique<std::vector<png_byte>>();
  auto rows = std::make_unique<std::vector<png_bytep>>();
  auto reader = std::make_unique<PngReader>();
  reader->bytes = &bytes;
  if (!RunPng(reader.get(), header_only, out.get(), buffer.get(), rows.get())) {
    return Corrupt(path, "PNG", reader->message[0] ? reader->message : "libpng failed");
  }
  if (absl::Status s = CheckSides(path, out->height, out->width); !s.ok()) return s;
  return std::move(*out);
}

ImageFormat FormatOf(const std::string& bytes) {
  static const unsigned char kPng[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  if (bytes.size() >= 3 && static_cast<unsigned char>(bytes[0]) == 0xFF &&
      static_cast<unsigned char>(bytes[1]) == 0xD8 &&
      static_cast<unsigned char>(bytes[2]) == 0xFF) {
    return ImageFormat::kJpeg;
  }
  if (bytes.size() >= 8 && std::memcmp(bytes.data(), kPng, 8) == 0) return ImageFormat::kPng;
  return ImageFormat::kUnknown;
}

// A header read looks at the first MiB only (a JPEG's EXIF and ICC segments come before its
// frame header, and stay well below that).
constexpr size_t kHeaderBytes = 1 << 20;

absl::StatusOr<GrayImage> Decode(const std::string& path, int min_side, bool header_only) {
  absl::StatusOr<std::string> bytes =
      ReadFile(path, header_only ? kHeaderBytes : std::numeric_limits<size_t>::max());
  if (!bytes.ok()) return bytes.status();
  switch (FormatOf(*bytes)) {
    case ImageFormat::kJpeg:
      return DecodeJpeg(path, *bytes, min_side, header_only);
    case ImageFormat::kPng:
      return DecodePng(path, *bytes, header_only);
    case ImageFormat::kUnknown:
      break;
  }
  return absl::InvalidArgumentError(
      absl::StrCat(path, ": neither a JPEG nor a PNG file (by its first bytes)"));
}

// Area-averaging weights of one axis: output index o covers source [o*n/m, (o+1)*n/m).
struct AxisWeights {
  std::vector<int> first;
  std::vector<std::vector<float>> weight;  // from `first` on, summing to 1
};

AxisWeights MakeAxisWeights(int source, int target) {
  AxisWeights w;
  w.first.resize(target);
  w.weight.resize(target);
  const double step = static_cast<double>(source) / target;
  for (int o = 0; o < target; ++o) {
    const double lo = o * step, hi = (o + 1) * step;
    const int first = static_cast<int>(lo);
    const int last = std::min(source - 1, static_cast<int>(std::ceil(hi)) - 1);
    w.first[o] = first;
    for (int s = first; s <= last; ++s) {
      const double overlap = std::min<double>(hi, s + 1) - std::max<double>(lo, s);
      w.weight[o].push_back(static_cast<float>(std::max(0.0, overlap) / step));
    }
  }
  return w;
}

}  // namespace

ImageFormat SniffImageFormat(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::string head(8, '\0');
  in.read(head.data(), 8);
  head.resize(static_cast<size_t>(std::max<std::streamsize>(0, in.gcount())));
  return FormatOf(head);
}

absl::StatusOr<GrayImage> ReadImageHeader(const std::string& path) {
  return Decode(path, 0, /*header_only=*/true);
}

absl::StatusOr<GrayImage> DecodeImage(const std::string& path, int min_side) {
  return Decode(path, min_side, /*header_only=*/false);
}

template <typename T>
std::vector<float> ResizeArea(const T* src, int rows, int cols, int out_rows, int out_cols,
                              float divisor) {
  const AxisWeights wx = MakeAxisWeights(cols, out_cols);
  const AxisWeights wy = MakeAxisWeights(rows, out_rows);
  std::vector<float> horizontal(static_cast<size_t>(rows) * out_cols);
  for (int r = 0; r < rows; ++r) {
    const T* line = src + static_cast<size_t>(r) * cols;
    for (int o = 0; o < out_cols; ++o) {
      float sum = 0;
      for (size_t k = 0; k < wx.weight[o].size(); ++k)
        sum += wx.weight[o][k] * line[wx.first[o] + k];
      horizontal[static_cast<size_t>(r) * out_cols + o] = sum;
    }
  }
  std::vector<float> out(static_cast<size_t>(out_rows) * out_cols, 0.0f);
  for (int o = 0; o < out_rows; ++o) {
    float* dst = &out[static_cast<size_t>(o) * out_cols];
    for (size_t k = 0; k < wy.weight[o].size(); ++k) {
      const float* line = &horizontal[static_cast<size_t>(wy.first[o] + k) * out_cols];
      for (int c = 0; c < out_cols; ++c) dst[c] += wy.weight[o][k] * line[c];
    }
    for (int c = 0; c < out_cols; ++c) dst[c] = std::clamp(dst[c] / divisor, 0.0f, 1.0f);
  }
  return out;
}

template std::vector<float> ResizeArea<float>(const float*, int, int, int, int, float);
template std::vector<float> ResizeArea<uint16_t>(const uint16_t*, int, int, int, int, float);

}  // namespace fl
