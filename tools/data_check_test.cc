// flctl data check on a source: a ChestX-ray14 layout with a good PNG, a PNG cut short (its
// header reads, its pixels do not) and a listed file that is missing.
#include "tools/data_check.h"

#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

#include "client/image_test_util.h"
#include "common/test_dir.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fl {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

struct Output {
  int code;
  std::string out, err;
};

Output RunCheck(const DataSourceConfig& config, bool json) {
  std::ostringstream out, err;
  std::streambuf* old_out = std::cout.rdbuf(out.rdbuf());
  std::streambuf* old_err = std::cerr.rdbuf(err.rdbuf());
  const int code = CheckDataSource(config, json);
  std::cout.rdbuf(old_out);
  std::cerr.rdbuf(old_err);
  return {code, out.str(), err.str()};
}

std::string MakeNih14(const std::string& name) {
  const std::string root = FreshTestDir(name);
  const std::string images = root + "/images_001/images";
  fs::create_directories(images);
  EXPECT_TRUE(testing::WritePng(images + "/00000001_000.png", 32, 32, 16, PNG_COLOR_TYPE_GRAY,
                                std::vector<uint16_t>(32 * 32, 1000)));
  std::vector<uint16_t> busy(64 * 64);
  for (size_t i = 0; i < busy.size(); ++i) busy[i] = static_cast<uint16_t>((i * 7919) % 251);
  EXPECT_TRUE(
      testing::WritePng(images + "/00000002_000.png", 64, 64, 8, PNG_COLOR_TYPE_GRAY, busy));
  testing::Truncate(images + "/00000002_000.png", 0);
  std::ofstream(root + "/Data_Entry_2017.csv")
      << "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
         "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],\n"
         "00000001_000.png,Mass,0,1,58,M,PA,2682,2749,0.143,0.143,\n"
         "00000002_000.png,No Finding,0,2,81,F,PA,2500,2048,0.171,0.171,\n"
         "00000003_000.png,No Finding,0,3,81,F,PA,2500,2048,0.171,0.171,\n";
  return root;
}

TEST(DataCheckTest, ReportsEverySkipWithItsReasonAndTheTotals) {
  auto config = SourceOfKind("chestxray14", MakeNih14("data_check"), "");
  ASSERT_TRUE(config.ok()) << config.status();
  Output r = RunCheck(*config, false);
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("00000003_000.png: missing file"));
  EXPECT_THAT(r.out, HasSubstr("ok    "));
  EXPECT_THAT(r.out, HasSubstr("00000001_000.png labelled"));
  EXPECT_THAT(r.out, HasSubstr("skip  "));
  EXPECT_THAT(r.out, HasSubstr("00000002_000.png: PNG does not decode"));
  EXPECT_THAT(r.out, HasSubstr("source: chestxray14, images: 2, decoded: 1, skipped: 2 "
                               "(listing 1, decoding 1), with labels: 1"));
}

TEST(DataCheckTest, JsonListsDataCheckFilesAndTotalsGoToStderr) {
  auto config = SourceOfKind("chestxray14", MakeNih14("data_check_json"), "");
  ASSERT_TRUE(config.ok());
  Output r = RunCheck(*config, true);
  EXPECT_EQ(r.code, 0);
  EXPECT_EQ(r.out.front(), '[');
  EXPECT_THAT(r.out, HasSubstr("\"reason\""));
  EXPECT_THAT(r.err, HasSubstr("decoded: 1"));
}

TEST(DataCheckTest, AnUnusableSourceOrKindIsAnError) {
  EXPECT_FALSE(SourceOfKind("pacs", "/x", "").ok());
  auto config = SourceOfKind("chexpert", "/nonexistent/chexpert", "");
  ASSERT_TRUE(config.ok());
  Output r = RunCheck(*config, false);
  EXPECT_EQ(r.code, 2);
  EXPECT_THAT(r.err, HasSubstr("/nonexistent/chexpert is not a directory"));
}

}  // namespace
}  // namespace fl
