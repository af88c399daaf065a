#include "client/dicom.h"

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <random>
#include <thread>

#include "dcmtk/config/osconfig.h"
#include "dcmtk/dcmdata/dcdeftag.h"
#include "dcmtk/dcmdata/dcfilefo.h"
#include "dcmtk/dcmdata/dcrleerg.h"
#include "dcmtk/dcmjpeg/djencode.h"
#include "dcmtk/dcmjpeg/djrplol.h"
#include "dcmtk/dcmjpeg/djrploss.h"
#include "dcmtk/dcmjpls/djencode.h"
#include "dcmtk/dcmjpls/djrparam.h"
#include "gtest/gtest.h"
#include "common/test_dir.h"
#include "tools/phantom.h"

namespace fl {
namespace {

namespace fs = std::filesystem;

std::string MakeTempDir(const std::string& name) { return FreshTestDir(name); }

// One phantom file (seed 7) in `dir`, with the given photometric interpretation.
std::string WritePhantom(const std::string& dir, const std::string& photometric) {
  PhantomOptions options;
  options.count = 1;
  options.seed = 7;
  options.photometric = photometric;
  options.prevalence.fill(1.0);
  EXPECT_TRUE(WritePhantomDataset(options, dir).ok());
  return dir + "/img_000000.dcm";
}

void RegisterEncoders() {
  static std::once_flag once;
  std::call_once(once, [] {
    DJEncoderRegistration::registerCodecs();
    DJLSEncoderRegistration::registerCodecs();
    DcmRLEEncoderRegistration::registerCodecs();
  });
}

// Re-encodes `in` into `out` with transfer syntax `xfer` through the DCMTK API.
void Transcode(const std::string& in, const std::string& out, E_TransferSyntax xfer,
               const DcmRepresentationParameter* param) {
  RegisterEncoders();
  DcmFileFormat file;
  ASSERT_TRUE(file.loadFile(in.c_str()).good());
  ASSERT_TRUE(file.getDataset()->chooseRepresentation(xfer, param).good())
      << DcmXfer(xfer).getXferName();
  ASSERT_TRUE(file.getDataset()->canWriteXfer(xfer));
  ASSERT_TRUE(file.saveFile(out.c_str(), xfer).good()) << DcmXfer(xfer).getXferName();
}

// Loads `in`, lets `edit` change the dataset, saves to `out` (explicit little endian).
template <typename Fn>
void Edit(const std::string& in, const std::string& out, Fn edit) {
  DcmFileFormat file;
  ASSERT_TRUE(file.loadFile(in.c_str()).good());
  edit(file.getDataset());
  ASSERT_TRUE(file.saveFile(out.c_str(), EXS_LittleEndianExplicit).good());
}

float MaxAbsDiff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  float worst = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i)
    worst = std::max(worst, std::abs(a[i] - b[i]));
  return worst;
}

float MeanAbsDiff(const std::vector<float>& a, const std::vector<float>& b) {
  double sum = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) sum += std::abs(a[i] - b[i]);
  return static_cast<float>(sum / std::max<size_t>(1, a.size()));
}

TEST(DicomTest, DecodesPhantomHeaderAndPixels) {
  const std::string path = WritePhantom(MakeTempDir("header"), "MONOCHROME2");
  auto image = DecodeDicom(path, 64);
  ASSERT_TRUE(image.ok()) << image.status();
  EXPECT_EQ(image->rows, 256);
  EXPECT_EQ(image->cols, 256);
  EXPECT_EQ(image->bits_stored, 12);
  EXPECT_EQ(image->photometric, "MONOCHROME2");
  EXPECT_EQ(image->transfer_syntax, "1.2.840.10008.1.2.1");
  EXPECT_EQ(image->view_position, "PA");
  EXPECT_TRUE(image->sex == "M" || image->sex == "F");
  EXPECT_GE(image->age_years, 20);
  EXPECT_FALSE(image->sop_instance_uid.empty());
  EXPECT_FALSE(image->patient_id.empty());
  ASSERT_EQ(image->size, 64);
  ASSERT_EQ(image->pixels.size(), 64u * 64u);
  float lo = 1, hi = 0;
  for (float v : image->pixels) lo = std::min(lo, v), hi = std::max(hi, v);
  EXPECT_GE(lo, 0.0f);
  EXPECT_LE(hi, 1.0f);
  EXPECT_GT(hi - lo, 0.5f);  // a real image, not a flat field

  auto header_only = DecodeDicom(path, 0);
  ASSERT_TRUE(header_only.ok());
  EXPECT_TRUE(header_only->pixels.empty());
  EXPECT_EQ(header_only->sop_instance_uid, image->sop_instance_uid);
  auto fast = ReadDicomHeader(path);
  ASSERT_TRUE(fast.ok());
  EXPECT_EQ(fast->patient_id, image->patient_id);
}

TEST(DicomTest, AreaAveragingPreservesTheMean) {
  const std::string path = WritePhantom(MakeTempDir("resize"), "MONOCHROME2");
  auto full = DecodeDicom(path, 256), small = DecodeDicom(path, 100);
  ASSERT_TRUE(full.ok() && small.ok());
  double mean_full = 0, mean_small = 0;
  for (float v : full->pixels) mean_full += v / full->pixels.size();
  for (float v : small->pixels) mean_small += v / small->pixels.size();
  EXPECT_NEAR(mean_full, mean_small, 1e-3);
}

struct SyntaxCase {
  std::string name;
  E_TransferSyntax xfer;
  std::shared_ptr<DcmRepresentationParameter> param;
  float max_diff;  // 0 for lossless
  float mean_diff;
};

std::vector<SyntaxCase> SyntaxCases() {
  return {
      {"implicit_little", EXS_LittleEndianImplicit, nullptr, 0, 0},
      {"explicit_big", EXS_BigEndianExplicit, nullptr, 0, 0},
      {"deflated", EXS_DeflatedLittleEndianExplicit, nullptr, 0, 0},
      {"rle", EXS_RLELossless, nullptr, 0, 0},
      {"jpeg_lossless_sv1", EXS_JPEGProcess14SV1, std::make_shared<DJ_RPLossless>(), 0, 0},
      {"jpeg_lossless_p14", EXS_JPEGProcess14, std::make_shared<DJ_RPLossless>(), 0, 0},
      {"jpeg_extended_12bit", EXS_JPEGProcess2_4, std::make_shared<DJ_RPLossy>(95), 0.15f, 0.01f},
      {"jpeg_baseline_8bit", EXS_JPEGProcess1, std::make_shared<DJ_RPLossy>(95), 0.2f, 0.02f},
      {"jpegls_lossless", EXS_JPEGLSLossless, std::make_shared<DJLSRepresentationParameter>(), 0,
       0},
      {"jpegls_near_lossless", EXS_JPEGLSLossy,
       std::make_shared<DJLSRepresentationParameter>(2, OFFalse), 0.02f, 0.005f},
  };
}

TEST(DicomTest, EveryTransferSyntaxDecodesToTheSamePixels) {
  const std::string dir = MakeTempDir("syntaxes");
  const std::string original = WritePhantom(dir, "MONOCHROME2");
  auto reference = DecodeDicom(original, 256);
  ASSERT_TRUE(reference.ok()) << reference.status();
  for (const SyntaxCase& c : SyntaxCases()) {
    SCOPED_TRACE(c.name);
    const std::string path = dir + "/" + c.name + ".dcm";
    Transcode(original, path, c.xfer, c.param.get());
    auto decoded = DecodeDicom(path, 256);
    ASSERT_TRUE(decoded.ok()) << decoded.status();
    EXPECT_EQ(decoded->transfer_syntax, DcmXfer(c.xfer).getXferID());
    EXPECT_EQ(decoded->sop_instance_uid.empty(), false);
    const float max_diff = MaxAbsDiff(reference->pixels, decoded->pixels);
    if (c.max_diff == 0) {
      EXPECT_EQ(max_diff, 0.0f);
    } else {
      EXPECT_LE(max_diff, c.max_diff);
      EXPECT_LE(MeanAbsDiff(reference->pixels, decoded->pixels), c.mean_diff);
    }
  }
}

TEST(DicomTest, Monochrome1ComesOutWithBoneBright) {
  const std::string m2 = WritePhantom(MakeTempDir("m2"), "MONOCHROME2");
  const std::string m1 = WritePhantom(MakeTempDir("m1"), "MONOCHROME1");
  auto a = DecodeDicom(m2, 256), b = DecodeDicom(m1, 256);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(b->photometric, "MONOCHROME1");
  EXPECT_LE(MaxAbsDiff(a->pixels, b->pixels), 0.01f);
  // The stored values really are inverted: air is stored high in MONOCHROME1, shown dark.
  DcmFileFormat file;
  ASSERT_TRUE(file.loadFile(m1.c_str()).good());
  const Uint16* raw = nullptr;
  ASSERT_TRUE(file.getDataset()->findAndGetUint16Array(DCM_PixelData, raw).good());
  const size_t brightest_stored = std::max_element(raw, raw + 256 * 256) - raw;
  EXPECT_GT(raw[brightest_stored], 3000);
  EXPECT_LT(b->pixels[brightest_stored], 0.1f);
}

TEST(DicomTest, VoiWindowFromTheFileIsApplied) {
  const std::string dir = MakeTempDir("window");
  const std::string original = WritePhantom(dir, "MONOCHROME2");
  const std::string narrow = dir + "/narrow.dcm";
  const double center = 1500, width = 400;
  Edit(original, narrow, [&](DcmDataset* ds) {
    ds->putAndInsertString(DCM_WindowCenter, "1500");
    ds->putAndInsertString(DCM_WindowWidth, "400");
  });
  auto image = DecodeDicom(narrow, 256);
  ASSERT_TRUE(image.ok()) << image.status();
  DcmFileFormat file;
  ASSERT_TRUE(file.loadFile(narrow.c_str()).good());
  const Uint16* raw = nullptr;
  ASSERT_TRUE(file.getDataset()->findAndGetUint16Array(DCM_PixelData, raw).good());
  int below = 0, above = 0;
  for (size_t i = 0; i < image->pixels.size(); ++i) {
    const double expected = std::clamp((raw[i] - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0);
    ASSERT_NEAR(image->pixels[i], expected, 0.005) << "pixel " << i << " stored " << raw[i];
    below += raw[i] < center - width / 2;
    above += raw[i] > center + width / 2;
  }
  EXPECT_GT(below, 100);  // the window really clips on both sides
  EXPECT_GT(above, 100);
}

TEST(DicomTest, ModalityLutIsAppliedBeforeTheWindow) {
  const std::string dir = MakeTempDir("modality");
  const std::string original = WritePhantom(dir, "MONOCHROME2");
  const std::string rescaled = dir + "/rescaled.dcm";
  DcmFileFormat file;
  ASSERT_TRUE(file.loadFile(original.c_str()).good());
  Float64 center = 0, width = 0;
  file.getDataset()->findAndGetFloat64(DCM_WindowCenter, center);
  file.getDataset()->findAndGetFloat64(DCM_WindowWidth, width);
  // value = 2 * stored - 100, so the same display needs center 2c - 100, width 2w.
  Edit(original, rescaled, [&](DcmDataset* ds) {
    ds->putAndInsertString(DCM_RescaleSlope, "2");
    ds->putAndInsertString(DCM_RescaleIntercept, "-100");
    ds->putAndInsertString(DCM_WindowCenter, std::to_string(2 * center - 100).c_str());
    ds->putAndInsertString(DCM_WindowWidth, std::to_string(2 * width).c_str());
  });
  auto a = DecodeDicom(original, 128), b = DecodeDicom(rescaled, 128);
  ASSERT_TRUE(a.ok() && b.ok()) << b.status();
  EXPECT_LE(MaxAbsDiff(a->pixels, b->pixels), 0.01f);
}

TEST(DicomTest, WithoutWindowTheMinMaxWindowIsUsed) {
  const std::string dir = MakeTempDir("minmax");
  const std::string original = WritePhantom(dir, "MONOCHROME2");
  const std::string bare = dir + "/bare.dcm";
  Edit(original, bare, [](DcmDataset* ds) {
    delete ds->remove(DCM_WindowCenter);
    delete ds->remove(DCM_WindowWidth);
  });
  auto image = DecodeDicom(bare, 256);
  ASSERT_TRUE(image.ok()) << image.status();
  const auto [lo, hi] = std::minmax_element(image->pixels.begin(), image->pixels.end());
  EXPECT_FLOAT_EQ(*lo, 0.0f);
  EXPECT_FLOAT_EQ(*hi, 1.0f);
}

void ExpectError(const std::string& path, const std::string& words) {
  for (int size : {0, 64}) {
    auto image = DecodeDicom(path, size);
    ASSERT_FALSE(image.ok()) << path;
    EXPECT_NE(std::string(image.status().message()).find(words), std::string::npos)
        << image.status();
  }
  EXPECT_FALSE(ReadDicomHeader(path).ok());
}

TEST(DicomTest, BrokenFilesGiveErrorsThatSayWhy) {
  const std::string dir = MakeTempDir("broken");
  const std::string original = WritePhantom(dir, "MONOCHROME2");
  std::ifstream in(original, std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::ofstream(dir + "/empty.dcm").close();
  std::ofstream(dir + "/truncated.dcm", std::ios::binary) << bytes.substr(0, bytes.size() / 2);
  std::mt19937 rng(3);
  std::string noise(5000, '\0');
  for (char& c : noise) c = static_cast<char>(rng());
  std::ofstream(dir + "/random.dcm", std::ios::binary) << noise;
  Edit(original, dir + "/nopixels.dcm", [](DcmDataset* ds) { delete ds->remove(DCM_PixelData); });
  Edit(original, dir + "/zero_rows.dcm",
       [](DcmDataset* ds) { ds->putAndInsertUint16(DCM_Rows, 0); });
  Edit(original, dir + "/huge.dcm",
       [](DcmDataset* ds) { ds->putAndInsertUint16(DCM_Columns, 20000); });
  Edit(original, dir + "/short.dcm", [](DcmDataset* ds) { ds->putAndInsertUint16(DCM_Rows, 512); });

  ExpectError(dir + "/empty.dcm", "empty file");
  ExpectError(dir + "/truncated.dcm", "truncated");
  ExpectError(dir + "/random.dcm", "not a DICOM file");
  ExpectError(dir + "/nopixels.dcm", "no pixel data");
  ExpectError(dir + "/zero_rows.dcm", "absurd dimensions");
  ExpectError(dir + "/huge.dcm", "absurd dimensions");
  ExpectError(dir + "/short.dcm", "pixel data too short");
  ExpectError(dir + "/does_not_exist.dcm", "not a readable");
}

TEST(DicomTest, UnsupportedTransferSyntaxIsNamed) {
  const std::string dir = MakeTempDir("unsupported");
  const std::string original = WritePhantom(dir, "MONOCHROME2");
  const std::string jpeg = dir + "/jpeg.dcm";
  Transcode(original, jpeg, EXS_JPEGProcess14SV1, nullptr);
  // Relabel the JPEG lossless file as JPEG 2000 (same UID length), which DCMTK cannot decode.
  std::ifstream in(jpeg, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const size_t at = bytes.find("1.2.840.10008.1.2.4.70");
  ASSERT_NE(at, std::string::npos);
  bytes.replace(at, 22, "1.2.840.10008.1.2.4.90");
  std::ofstream(dir + "/j2k.dcm", std::ios::binary) << bytes;
  ExpectError(dir + "/j2k.dcm", "unsupported transfer syntax");
}

TEST(DicomTest, ParallelDecodesAgreeWithSequentialOnes) {
  const std::string dir = MakeTempDir("parallel");
  const std::string original = WritePhantom(dir, "MONOCHROME2");
  std::vector<std::string> paths = {original};
  for (const SyntaxCase& c : SyntaxCases()) {
    if (c.max_diff != 0) continue;
    paths.push_back(dir + "/" + c.name + ".dcm");
    Transcode(original, paths.back(), c.xfer, c.param.get());
  }
  std::vector<std::vector<float>> expected;
  for (const auto& p : paths) expected.push_back(DecodeDicom(p, 64).value().pixels);
  std::vector<std::thread> threads;
  std::vector<int> failures(4, 0);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < 3; ++round) {
        for (size_t i = 0; i < paths.size(); ++i) {
          auto image = DecodeDicom(paths[(i + t) % paths.size()], 64);
          if (!image.ok() || image->pixels != expected[(i + t) % paths.size()]) ++failures[t];
        }
      }
    });
  }
  for (auto& thread : threads) thread.join();
  for (int t = 0; t < 4; ++t) EXPECT_EQ(failures[t], 0) << "thread " << t;
}

}  // namespace
}  // namespace fl
