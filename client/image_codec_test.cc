#include "client/image_codec.h"

#include <cmath>
#include <fstream>

#include "client/data_source.h"
#include "client/image_test_util.h"
#include "common/test_dir.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fl {
namespace {

using ::fl::testing::Gradient8;
using ::fl::testing::Truncate;
using ::fl::testing::WriteJpeg;
using ::fl::testing::WritePng;
using ::testing::HasSubstr;

TEST(ImageCodecTest, Png8BitGrayIsExact) {
  const std::string path = FreshTestDir("codec_png8") + "/a.png";
  std::vector<uint16_t> samples;
  for (int i = 0; i < 6 * 4; ++i) samples.push_back(static_cast<uint16_t>(i * 11));
  ASSERT_TRUE(WritePng(path, 4, 6, 8, PNG_COLOR_TYPE_GRAY, samples));
  auto image = DecodeImage(path);
  ASSERT_TRUE(image.ok()) << image.status();
  EXPECT_EQ(image->height, 4);
  EXPECT_EQ(image->width, 6);
  EXPECT_EQ(image->bits, 8);
  ASSERT_EQ(image->pixels.size(), 24u);
  for (int i = 0; i < 24; ++i) EXPECT_FLOAT_EQ(image->pixels[i], samples[i] / 255.0f) << i;
}

// 16-bit samples keep their low byte and their byte order (PNG is big-endian): 1 and 256 differ.
TEST(ImageCodecTest, Png16BitGrayKeepsFullPrecision) {
  const std::string path = FreshTestDir("codec_png16") + "/a.png";
  const std::vector<uint16_t> samples = {0, 1, 256, 4095, 32768, 65535};
  ASSERT_TRUE(WritePng(path, 2, 3, 16, PNG_COLOR_TYPE_GRAY, samples));
  auto image = DecodeImage(path);
  ASSERT_TRUE(image.ok()) << image.status();
  EXPECT_EQ(image->bits, 16);
  for (size_t i = 0; i < samples.size(); ++i) {
    EXPECT_FLOAT_EQ(image->pixels[i], samples[i] / 65535.0f) << i;
  }
}

TEST(ImageCodecTest, PngColourBecomesRec601GrayAndAlphaIsDropped) {
  const std::string dir = FreshTestDir("codec_png_rgb");
  // red, green, blue, white; alpha 0 must not darken anything.
  ASSERT_TRUE(WritePng(dir + "/rgba.png", 1, 4, 8, PNG_COLOR_TYPE_RGBA,
                       {255, 0, 0, 0, 0, 255, 0, 0, 0, 0, 255, 0, 255, 255, 255, 0}));
  auto image = DecodeImage(dir + "/rgba.png");
  ASSERT_TRUE(image.ok()) << image.status();
  EXPECT_EQ(image->channels, 3);
  EXPECT_NEAR(image->pixels[0], 0.299, 0.01);
  EXPECT_NEAR(image->pixels[1], 0.587, 0.01);
  EXPECT_NEAR(image->pixels[2], 0.114, 0.01);
  EXPECT_NEAR(image->pixels[3], 1.0, 0.01);
  ASSERT_TRUE(WritePng(dir + "/rgb16.png", 1, 1, 16, PNG_COLOR_TYPE_RGB, {65535, 0, 0}));
  auto wide = DecodeImage(dir + "/rgb16.png");
  ASSERT_TRUE(wide.ok()) << wide.status();
  EXPECT_NEAR(wide->pixels[0], 0.299, 0.01);
  ASSERT_TRUE(WritePng(dir + "/ga.png", 1, 2, 8, PNG_COLOR_TYPE_GRAY_ALPHA, {200, 0, 50, 255}));
  auto gray_alpha = DecodeImage(dir + "/ga.png");
  ASSERT_TRUE(gray_alpha.ok()) << gray_alpha.status();
  EXPECT_FLOAT_EQ(gray_alpha->pixels[0], 200 / 255.0f);
  EXPECT_FLOAT_EQ(gray_alpha->pixels[1], 50 / 255.0f);
}

TEST(ImageCodecTest, JpegGrayAndColourDecodeCloseToTheirSource) {
  const std::string dir = FreshTestDir("codec_jpeg");
  const std::vector<uint8_t> gradient = Gradient8(32, 64);
  ASSERT_TRUE(WriteJpeg(dir + "/gray.jpg", 32, 64, 1, gradient, 100));
  auto gray = DecodeImage(dir + "/gray.jpg");
  ASSERT_TRUE(gray.ok()) << gray.status();
  EXPECT_EQ(gray->height, 32);
  EXPECT_EQ(gray->width, 64);
  EXPECT_EQ(gray->channels, 1);
  for (size_t i = 0; i < gradient.size(); ++i) {
    ASSERT_NEAR(gray->pixels[i], gradient[i] / 255.0f, 3 / 255.0f) << i;
  }
  std::vector<uint8_t> red(16 * 16 * 3, 0);
  for (size_t i = 0; i < red.size(); i += 3) red[i] = 255;
  ASSERT_TRUE(WriteJpeg(dir + "/red.jpg", 16, 16, 3, red, 100));
  auto colour = DecodeImage(dir + "/red.jpg");
  ASSERT_TRUE(colour.ok()) << colour.status();
  EXPECT_EQ(colour->channels, 3);
  EXPECT_NEAR(colour->pixels[8 * 16 + 8], 0.299, 0.02);
}

TEST(ImageCodecTest, JpegDecodesAtAReducedScaleWhenAskedForASmallerSide) {
  const std::string path = FreshTestDir("codec_jpeg_scale") + "/big.jpg";
  ASSERT_TRUE(WriteJpeg(path, 512, 256, 1, Gradient8(512, 256)));
  auto eighth = DecodeImage(path, 32);
  ASSERT_TRUE(eighth.ok()) << eighth.status();
  EXPECT_EQ(eighth->height, 64);
  EXPECT_EQ(eighth->width, 32);
  auto half = DecodeImage(path, 100);
  ASSERT_TRUE(half.ok()) << half.status();
  EXPECT_EQ(half->width, 128);
  auto full = DecodeImage(path);
  ASSERT_TRUE(full.ok()) << full.status();
  EXPECT_EQ(full->width, 256);
  auto header = ReadImageHeader(path);
  ASSERT_TRUE(header.ok()) << header.status();
  EXPECT_EQ(header->height, 512);
  EXPECT_EQ(header->bits, 8);
  EXPECT_TRUE(header->pixels.empty());
}

TEST(ImageCodecTest, CorruptFilesGiveReasonsNamingTheFile) {
  const std::string dir = FreshTestDir("codec_corrupt");
  ASSERT_TRUE(WriteJpeg(dir + "/cut.jpg", 128, 128, 1, ::fl::testing::Busy8(128, 128)));
  Truncate(dir + "/cut.jpg", 0);
  ASSERT_TRUE(WritePng(dir + "/cut.png", 64, 64, 8, PNG_COLOR_TYPE_GRAY,
                       std::vector<uint16_t>(64 * 64, 7)));
  Truncate(dir + "/cut.png", 60);
  std::ofstream(dir + "/text.png") << "not an image at all";
  std::ofstream(dir + "/empty.jpg");
  struct Case {
    std::string file, words;
  };
  for (const Case& c : std::vector<Case>{{"cut.jpg", "JPEG does not decode"},
                                         {"cut.png", "PNG does not decode"},
                                         {"text.png", "neither a JPEG nor a PNG"},
                                         {"empty.jpg", "empty file"},
                                         {"missing.jpg", "cannot open"}}) {
    auto image = DecodeImage(dir + "/" + c.file);
    ASSERT_FALSE(image.ok()) << c.file;
    EXPECT_THAT(std::string(image.status().message()), HasSubstr(c.words)) << c.file;
    EXPECT_THAT(std::string(image.status().message()), HasSubstr(dir + "/" + c.file));
  }
  // A truncated JPEG's header still reads: listing passes it, decoding refuses it.
  EXPECT_TRUE(ReadImageHeader(dir + "/cut.jpg").ok());
}

TEST(ImageCodecTest, ResizeAreaAveragesTheCoveredArea) {
  const std::vector<float> src = {0.0f, 0.1f, 0.2f, 0.3f,  //
                                  0.4f, 0.5f, 0.6f, 0.7f};
  const std::vector<float> half = ResizeArea(src, 2, 4, 1, 2);
  ASSERT_EQ(half.size(), 2u);
  EXPECT_NEAR(half[0], 0.25f, 1e-6);
  EXPECT_NEAR(half[1], 0.45f, 1e-6);
  const std::vector<float> small = {0.0f, 0.2f, 0.4f, 0.6f};
  const std::vector<float> out = ResizeArea(small, 2, 2, 1, 1);
  EXPECT_NEAR(out[0], 0.3f, 1e-6);
  const std::vector<float> up = ResizeArea(small, 2, 2, 4, 4);
  EXPECT_FLOAT_EQ(up[0], 0.0f);
  EXPECT_FLOAT_EQ(up[15], 0.6f);
}

TEST(ImageCodecTest, LoadImageFileResizesToTheShape) {
  const std::string path = FreshTestDir("codec_load") + "/a.png";
  ASSERT_TRUE(WritePng(path, 8, 16, 8, PNG_COLOR_TYPE_GRAY, std::vector<uint16_t>(128, 255)));
  auto pixels = LoadImageFile(path, PixelShape{0, 4, 6});
  ASSERT_TRUE(pixels.ok()) << pixels.status();
  EXPECT_EQ(pixels->size(), 24u);
  EXPECT_FLOAT_EQ((*pixels)[5], 1.0f);
  EXPECT_EQ(LoadImageFile(path, PixelShape{3, 4, 4}).status().code(),
            absl::StatusCode::kUnimplemented);
}

}  // namespace
}  // namespace fl
