#include "client/dataset.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>
#include <utility>
#include <vector>

#include "client/dicom.h"
#include "gtest/gtest.h"
#include "common/test_dir.h"
#include "tools/phantom.h"

namespace fl {
namespace {

namespace fs = std::filesystem;

std::string MakeTempDir(const std::string& name) { return FreshTestDir(name); }

std::string WriteText(const std::string& path, const std::string& text) {
  std::ofstream(path) << text;
  return path;
}

TEST(LabelsCsvTest, ParsesValuesUnknownsAndWhitespace) {
  const std::string dir = MakeTempDir("csv");
  auto table = ReadLabelsCsv(WriteText(dir + "/l.csv",
                                       "\xEF\xBB\xBFkey, a ,b,c\r\n"
                                       "x1, 1 ,0,\r\n"
                                       "\n"
                                       "\"dir/with,comma.dcm\",1.0,0.0,-1\n"
                                       "x3,true,NaN,false\n"));
  ASSERT_TRUE(table.ok()) << table.status();
  EXPECT_EQ(table->label_names, (std::vector<std::string>{"a", "b", "c"}));
  ASSERT_EQ(table->rows.size(), 3u);
  EXPECT_EQ(table->rows[0].first, "x1");
  EXPECT_EQ(table->rows[0].second[0], 1.0f);
  EXPECT_EQ(table->rows[0].second[1], 0.0f);
  EXPECT_TRUE(std::isnan(table->rows[0].second[2]));
  EXPECT_EQ(table->rows[1].first, "dir/with,comma.dcm");
  EXPECT_EQ(table->rows[1].second[0], 1.0f);
  EXPECT_TRUE(std::isnan(table->rows[1].second[2]));  // -1 (uncertain) is unknown
  EXPECT_TRUE(std::isnan(table->rows[2].second[1]));
  EXPECT_EQ(table->rows[2].second[2], 0.0f);
}

TEST(LabelsCsvTest, BadFilesGiveErrorsNamingTheLine) {
  const std::string dir = MakeTempDir("csv_bad");
  struct Case {
    std::string text, words;
  };
  const std::vector<Case> cases = {
      {"key,a\nx,1\nx,0\n", "line 3: duplicate key 'x' (first on line 2)"},
      {"key,a,a\nx,1,1\n", "line 1: duplicate column 'a'"},
      {"key,a,\nx,1,1\n", "line 1: column 3 has an empty name"},
      {"key,a,b\nx,1\n", "line 2: 2 fields, the header has 3"},
      {"key,a\nx,2\n", "line 2: value '2' is not 1, 0 or empty"},
      {"key,a\n,1\n", "line 2: empty key"},
      {"key\nx\n", "line 1: header needs"},
      {"", "empty labels CSV"},
      {"key,a\n\"x,1\n", "line 2: unterminated double quote"},
  };
  for (const Case& c : cases) {
    auto table = ReadLabelsCsv(WriteText(dir + "/bad.csv", c.text));
    ASSERT_FALSE(table.ok()) << c.text;
    EXPECT_NE(std::string(table.status().message()).find(c.words), std::string::npos)
        << table.status() << " wanted: " << c.words;
  }
  EXPECT_EQ(ReadLabelsCsv(dir + "/missing.csv").status().code(), absl::StatusCode::kNotFound);
}

class LoadDatasetTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = MakeTempDir("load");
    PhantomOptions options;
    options.count = 40;
    options.size = 64;
    options.seed = 11;
    options.labels_to_write = {"cardiomegaly", "effusion_left"};
    ASSERT_TRUE(WritePhantomDataset(options, dir_ + "/images").ok());
    WriteText(dir_ + "/images/notes.txt", "not an image\n");
    fs::create_directories(dir_ + "/images/sub");
    fs::copy_file(dir_ + "/images/img_000000.dcm", dir_ + "/images/sub/copy.dcm");  // same UID
  }
  std::string dir_;
};

TEST_F(LoadDatasetTest, JoinsBySopInstanceUidAndCountsSkippedFiles) {
  auto data = LoadDataset(dir_ + "/images", dir_ + "/images/labels.csv", 0.25);
  ASSERT_TRUE(data.ok()) << data.status();
  EXPECT_EQ(data->label_names, (std::vector<std::string>{"cardiomegaly", "effusion_left"}));
  EXPECT_EQ(data->train.size() + data->test.size(), 40u);
  EXPECT_EQ(data->skipped_files, 2);  // notes.txt and the duplicate UID
  ASSERT_EQ(data->skips.size(), 2u);
  std::multiset<SkipKind> kinds = {data->skips[0].kind, data->skips[1].kind};
  EXPECT_EQ(kinds, (std::multiset<SkipKind>{SkipKind::kUnreadable, SkipKind::kDuplicate}));
  EXPECT_EQ(data->unlabelled_files, 0);
  auto table = ReadLabelsCsv(dir_ + "/images/labels.csv");
  ASSERT_TRUE(table.ok());
  for (const auto* split : {&data->train, &data->test}) {
    for (const Sample& s : *split) {
      auto it = std::find_if(table->rows.begin(), table->rows.end(),
                             [&](const auto& row) { return row.first == s.sop_instance_uid; });
      ASSERT_NE(it, table->rows.end());
      EXPECT_EQ(s.labels, it->second);
      EXPECT_TRUE(s.sex == "M" || s.sex == "F");
      EXPECT_GE(s.age_years, 20);
    }
  }
}

TEST_F(LoadDatasetTest, JoinsByRelativePathAndCountsUnlabelled) {
  const std::string csv = WriteText(dir_ + "/by_path.csv",
                                    "path,finding\nimg_000001.dcm,1\nimg_000002.dcm,0\n"
                                    "img_000003.dcm,\nnot_there.dcm,1\n");
  auto data = LoadDataset(dir_ + "/images", csv, 0.0);
  ASSERT_TRUE(data.ok()) << data.status();
  ASSERT_EQ(data->train.size(), 3u);
  EXPECT_TRUE(data->test.empty());
  EXPECT_EQ(data->unlabelled_files, 37);
  EXPECT_EQ(data->train[0].labels, std::vector<float>{1.0f});
  EXPECT_EQ(data->train[1].labels, std::vector<float>{0.0f});
  EXPECT_TRUE(std::isnan(data->train[2].labels[0]));
}

TEST_F(LoadDatasetTest, SplitIsByPatientAndDeterministic) {
  auto a = LoadDataset(dir_ + "/images", dir_ + "/images/labels.csv", 0.3);
  auto b = LoadDataset(dir_ + "/images", dir_ + "/images/labels.csv", 0.3);
  ASSERT_TRUE(a.ok() && b.ok());
  std::set<std::string> train_patients, test_patients;
  for (const Sample& s : a->train) train_patients.insert(s.patient_id);
  for (const Sample& s : a->test) test_patients.insert(s.patient_id);
  EXPECT_FALSE(train_patients.empty());
  EXPECT_FALSE(test_patients.empty());
  for (const auto& p : test_patients) EXPECT_EQ(train_patients.count(p), 0u) << p;
  EXPECT_LT(train_patients.size() + test_patients.size(), 40u);  // some patients have 2 images
  ASSERT_EQ(a->test.size(), b->test.size());
  for (size_t i = 0; i < a->test.size(); ++i) EXPECT_EQ(a->test[i].path, b->test[i].path);
  auto all_test = LoadDataset(dir_ + "/images", dir_ + "/images/labels.csv", 1.0);
  ASSERT_TRUE(all_test.ok());
  EXPECT_TRUE(all_test->train.empty());
  EXPECT_EQ(all_test->test.size(), 40u);
}

TEST_F(LoadDatasetTest, WithoutCsvKeepsEveryDecodableFile) {
  auto data = LoadDataset(dir_ + "/images", "", 0.0);
  ASSERT_TRUE(data.ok());
  EXPECT_EQ(data->train.size(), 40u);
  EXPECT_TRUE(data->label_names.empty());
  EXPECT_EQ(data->skipped_files, 3);  // now labels.csv is just another non-DICOM file
}

// The scan tells how far it has come: before each file (done of total) and once at the end.
TEST_F(LoadDatasetTest, ScanProgressCountsEveryFile) {
  std::vector<std::pair<size_t, size_t>> calls;
  auto data = LoadDataset(dir_ + "/images", "", 0.0,
                          [&](size_t done, size_t total) { calls.emplace_back(done, total); });
  ASSERT_TRUE(data.ok()) << data.status();
  const size_t files = 43;  // 40 images, labels.csv, notes.txt, the copy
  ASSERT_EQ(calls.size(), files + 1);
  for (size_t i = 0; i <= files; ++i) EXPECT_EQ(calls[i], std::make_pair(i, files));
}

TEST_F(LoadDatasetTest, ConfigurationErrorsAreErrors) {
  EXPECT_EQ(LoadDataset(dir_ + "/nope", "", 0.2).status().code(), absl::StatusCode::kNotFound);
  EXPECT_FALSE(LoadDataset(dir_ + "/images", dir_ + "/missing.csv", 0.2).ok());
  EXPECT_FALSE(LoadDataset(dir_ + "/images", "", 1.5).ok());
  EXPECT_FALSE(LoadDataset(dir_ + "/images", "", -0.1).ok());
}

}  // namespace
}  // namespace fl
