// Each public dataset's layout as released, fabricated with a handful of real JPEG, PNG and
// DICOM files, read through its source; and the DICOM folder as a source.
#include "client/data_source.h"

#include <zlib.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>

#include "client/dicom.h"
#include "client/image_test_util.h"
#include "common/test_dir.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tools/phantom.h"

namespace fl {
namespace {

namespace fs = std::filesystem;
using ::fl::testing::Gradient8;
using ::fl::testing::Truncate;
using ::fl::testing::WriteJpeg;
using ::fl::testing::WritePng;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

void WriteText(const std::string& path, const std::string& text) {
  fs::create_directories(fs::path(path).parent_path());
  std::ofstream(path, std::ios::binary) << text;
}

void WriteGzip(const std::string& path, const std::string& text) {
  gzFile file = gzopen(path.c_str(), "wb");
  gzwrite(file, text.data(), static_cast<unsigned>(text.size()));
  gzclose(file);
}

void Jpeg(const std::string& path, int height = 40, int width = 32) {
  fs::create_directories(fs::path(path).parent_path());
  ASSERT_TRUE(WriteJpeg(path, height, width, 1, Gradient8(height, width)));
}

// All samples of both splits, by image id.
std::map<std::string, Sample> ById(const Dataset& data) {
  std::map<std::string, Sample> out;
  for (const auto* split : {&data.train, &data.test})
    for (const Sample& s : *split) out[s.image_id] = s;
  return out;
}

std::unique_ptr<DataSource> Open(const DataSourceConfig& config) {
  auto source = OpenDataSource(config);
  EXPECT_TRUE(source.ok()) << source.status();
  return source.ok() ? *std::move(source) : nullptr;
}

bool Unknown(float v) { return std::isnan(v); }

// ---- CheXpert: CheXpert-v1.0-small/{train,valid}.csv; Path relative to the parent folder.

constexpr char kChexpertHeader[] =
    "Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,Cardiomegaly,"
    "Lung Opacity,Lung Lesion,Edema,Consolidation,Pneumonia,Atelectasis,Pneumothorax,"
    "Pleural Effusion,Pleural Other,Fracture,Support Devices\n";

class ChexpertTest : public ::testing::Test {
 protected:
  void SetUp() override {
    parent_ = FreshTestDir("chexpert");
    root_ = parent_ + "/CheXpert-v1.0-small";
    const std::string p = "CheXpert-v1.0-small/train/";
    Jpeg(parent_ + "/" + p + "patient00001/study1/view1_frontal.jpg");
    Jpeg(parent_ + "/" + p + "patient00002/study2/view1_frontal.jpg");
    Jpeg(parent_ + "/" + p + "patient00002/study2/view2_lateral.jpg");
    const std::string cut = parent_ + "/" + p + "patient00003/study1/view1_frontal.jpg";
    fs::create_directories(fs::path(cut).parent_path());
    ASSERT_TRUE(WriteJpeg(cut, 160, 160, 1, ::fl::testing::Busy8(160, 160)));
    Truncate(cut, 0);
    Jpeg(parent_ + "/CheXpert-v1.0-small/valid/patient64541/study1/view1_frontal.jpg");
    WriteText(root_ + "/train.csv",
              std::string(kChexpertHeader) + p +
                  "patient00001/study1/view1_frontal.jpg,Female,68,Frontal,AP,1.0,,,,,,,,,0.0"
                  ",,,,1.0\n" +
                  p +
                  "patient00002/study2/view1_frontal.jpg,Male,87,Frontal,PA,,,-1.0,1.0,,"
                  "-1.0,-1.0,,-1.0,,-1.0,,1.0,\n" +
                  p +
                  "patient00002/study2/view2_lateral.jpg,Male,87,Lateral,,,,-1.0,1.0,,-1.0,"
                  "-1.0,,-1.0,,-1.0,,1.0,\n" +
                  p +
                  "patient00003/study1/view1_frontal.jpg,Unknown,0,Frontal,AP,,,,,,,,,,,,,,"
                  "\n" +
                  p +
                  "patient00004/study1/view1_frontal.jpg,Female,33,Frontal,AP,,,,,,,,,,,,,,"
                  "\n");
    WriteText(root_ + "/valid.csv",
              std::string(kChexpertHeader) +
                  "CheXpert-v1.0-small/valid/patient64541/study1/view1_frontal.jpg,Male,73,"
                  "Frontal,AP,0.0,1.0,1.0,1.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0\n");
  }

  DataSourceConfig Config(UncertainPolicy policy) const {
    DataSourceConfig config;
    config.mutable_chexpert()->set_root(root_);
    config.mutable_chexpert()->set_uncertain(policy);
    return config;
  }

  std::string parent_, root_;
};

// The scan reports its slow pass, the image files checked of those the CSVs list, as it goes.
TEST_F(ChexpertTest, TheScanReportsEachImageFileChecked) {
  std::vector<std::pair<size_t, size_t>> calls;
  auto source = OpenDataSource(Config(UNCERTAIN_IGNORE), [&calls](size_t done, size_t total) {
    calls.push_back({done, total});
  });
  ASSERT_TRUE(source.ok()) << source.status();
  auto data = (*source)->List(0.0);
  ASSERT_TRUE(data.ok()) << data.status();
  const size_t listed = data->train.size() + data->test.size() + data->skips.size();
  ASSERT_EQ(calls.size(), listed);  // every listed file, the missing one included
  for (size_t i = 0; i < calls.size(); ++i) {
    EXPECT_EQ(calls[i], std::make_pair(i + 1, listed));
  }
}

TEST_F(ChexpertTest, ListsTheReleaseWithLabelsFieldsAndSkips) {
  auto source = Open(Config(UNCERTAIN_IGNORE));
  auto data = source->List(0.0);
  ASSERT_TRUE(data.ok()) << data.status();
  ASSERT_EQ(data->label_names.size(), 14u);
  EXPECT_EQ(data->label_names[0], "No Finding");
  EXPECT_EQ(data->label_names[13], "Support Devices");
  EXPECT_EQ(data->field_names, (std::vector<std::string>{"age_years", "sex_male"}));
  auto samples = ById(*data);
  // patient00003's JPEG is truncated: listed (its header reads), the decode refuses it later.
  // patient00004's file is missing: skipped with the reason.
  ASSERT_EQ(samples.size(), 4u);
  EXPECT_EQ(data->skipped_files, 1);
  ASSERT_EQ(data->skips.size(), 1u);
  EXPECT_THAT(data->skips[0].reason, HasSubstr("missing file"));
  EXPECT_THAT(data->skips[0].what, HasSubstr("patient00004"));
  const Sample& a =
      samples.at("chexpert:CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg");
  EXPECT_EQ(a.patient_id, "patient00001");
  EXPECT_EQ(a.sex, "F");
  EXPECT_EQ(a.age_years, 68);
  EXPECT_THAT(a.fields, ElementsAre(68.0f, 0.0f));
  EXPECT_EQ(a.labels[0], 1.0f);       // No Finding
  EXPECT_TRUE(Unknown(a.labels[1]));  // blank
  EXPECT_EQ(a.labels[9], 0.0f);       // Pneumothorax
  EXPECT_EQ(a.labels[13], 1.0f);      // Support Devices
  EXPECT_TRUE(fs::exists(a.path));
  const Sample& b =
      samples.at("chexpert:CheXpert-v1.0-small/train/patient00002/study2/view1_frontal.jpg");
  EXPECT_EQ(b.sex, "M");
  EXPECT_TRUE(Unknown(b.labels[2]));  // Cardiomegaly -1.0: ignored
  EXPECT_EQ(b.labels[3], 1.0f);
  const Sample& c =
      samples.at("chexpert:CheXpert-v1.0-small/train/patient00003/study1/view1_frontal.jpg");
  EXPECT_EQ(c.sex, "");
  EXPECT_TRUE(Unknown(c.fields[1]));
  // The sample loads at any shape; the truncated one gives a reason naming it.
  auto pixels = source->Load(a, PixelShape{0, 20, 16});
  ASSERT_TRUE(pixels.ok()) << pixels.status();
  EXPECT_EQ(pixels->size(), 320u);
  auto bad = source->Load(c, PixelShape::Square(16));
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("JPEG does not decode"));
}

TEST_F(ChexpertTest, UncertainPolicyFrontalFilterAndSeveralCsvs) {
  const std::string id = "chexpert:CheXpert-v1.0-small/train/patient00002/study2/view1_frontal.jpg";
  auto positive = Open(Config(UNCERTAIN_POSITIVE))->List(0.0);
  ASSERT_TRUE(positive.ok()) << positive.status();
  EXPECT_EQ(ById(*positive).at(id).labels[2], 1.0f);
  EXPECT_TRUE(Unknown(ById(*positive).at(id).labels[0]));  // blank stays unknown
  auto negative = Open(Config(UNCERTAIN_NEGATIVE))->List(0.0);
  ASSERT_TRUE(negative.ok());
  EXPECT_EQ(ById(*negative).at(id).labels[2], 0.0f);

  DataSourceConfig config = Config(UNCERTAIN_IGNORE);
  config.mutable_chexpert()->set_frontal_only(true);
  config.mutable_chexpert()->add_csv_files("train.csv");
  config.mutable_chexpert()->add_csv_files("valid.csv");
  auto frontal = Open(config)->List(0.0);
  ASSERT_TRUE(frontal.ok()) << frontal.status();
  EXPECT_EQ(frontal->filtered, 1);  // the lateral view
  auto samples = ById(*frontal);
  EXPECT_EQ(samples.size(), 4u);
  EXPECT_EQ(
      samples.count("chexpert:CheXpert-v1.0-small/valid/patient64541/study1/view1_frontal.jpg"),
      1u);
  // A root written with a trailing slash is the same root.
  config.mutable_chexpert()->set_root(root_ + "/");
  auto slash = Open(config)->List(0.0);
  ASSERT_TRUE(slash.ok()) << slash.status();
  EXPECT_EQ(ById(*slash).size(), 4u);
  EXPECT_EQ(slash->skipped_files, 1);
}

TEST_F(ChexpertTest, SplitsByPatientAndBadRowsAreSkippedWithTheirLine) {
  WriteText(root_ + "/train.csv",
            std::string(kChexpertHeader) +
                "CheXpert-v1.0-small/train/patient00002/study2/view1_frontal.jpg,Male,87,"
                "Frontal,PA,2.0,,,,,,,,,,,,,\n"
                "CheXpert-v1.0-small/train/patient00002/study2/view1_frontal.jpg,Male,87,"
                "Frontal,PA,1.0,,,,,,,,,,,,,\n"
                "CheXpert-v1.0-small/train/patient00002/study2/view2_lateral.jpg,Male,87,"
                "Lateral,,1.0,,,,,,,,,,,,,\n");
  auto data = Open(Config(UNCERTAIN_IGNORE))->List(0.5);
  ASSERT_TRUE(data.ok()) << data.status();
  ASSERT_EQ(data->skips.size(), 1u);
  EXPECT_THAT(data->skips[0].what, HasSubstr("train.csv line 2"));
  EXPECT_THAT(data->skips[0].reason, HasSubstr("value '2.0'"));
  // One patient's two images land in the same split.
  EXPECT_TRUE((data->train.size() == 2 && data->test.empty()) ||
              (data->test.size() == 2 && data->train.empty()));
  // A CSV without its columns makes the source unusable.
  WriteText(root_ + "/train.csv", "Path,Sex\nx,Male\n");
  auto broken = Open(Config(UNCERTAIN_IGNORE))->List(0.2);
  ASSERT_FALSE(broken.ok());
  EXPECT_THAT(std::string(broken.status().message()), HasSubstr("no column 'Age'"));
}

// ---- MIMIC-CXR-JPG: metadata and CheXpert-labeler CSVs joined by subject and study.

TEST(MimicCxrSourceTest, JoinsMetadataAndLabelsAndFiltersViews) {
  const std::string root = FreshTestDir("mimic") + "/mimic-cxr-jpg/2.0.0";
  const std::string a = "02aa804e-bde0afdd-112c0b34-7bc16eac-d4b50be4";
  const std::string b = "174413ec-4ec4c1f7-34ea26b7-c5f994f8-79ef1962";
  const std::string c = "2a2277a9-b0ded155-c0de8eb9-c124d10e-82c5caab";
  const std::string d = "68b5c4b1-227d0485-9cc38c3f-7b84ab51-4b472714";
  Jpeg(root + "/files/p10/p10000032/s50414267/" + a + ".jpg");
  Jpeg(root + "/files/p10/p10000032/s50414267/" + b + ".jpg");
  Jpeg(root + "/files/p10/p10000032/s53189527/" + c + ".jpg");
  Jpeg(root + "/files/p11/p11000011/s51029426/" + d + ".jpg");
  WriteGzip(root + "/mimic-cxr-2.0.0-metadata.csv.gz",
            "dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,"
            "Columns,StudyDate,StudyTime,ProcedureCodeSequence_CodeMeaning,"
            "ViewCodeSequence_CodeMeaning,PatientOrientationCodeSequence_CodeMeaning\n" +
                a +
                ",10000032,50414267,CHEST (PA AND LAT),PA,3056,2544,21800506,213014.531,"
                "CHEST (PA AND LAT),postero-anterior,Erect\n" +
                b +
                ",10000032,50414267,CHEST (PA AND LAT),LATERAL,3056,2544,21800506,213014.531,"
                "CHEST (PA AND LAT),lateral,Erect\n" +
                c +
                ",10000032,53189527,CHEST (PA AND LAT),AP,3056,2544,21800626,165500.312,"
                "CHEST (PA AND LAT),antero-posterior,Erect\n" +
                d +
                ",11000011,51029426,CHEST (PORTABLE AP),AP,2705,2539,21840213,222323.296,"
                "CHEST (PORTABLE AP),antero-posterior,\n");
  WriteText(root + "/mimic-cxr-2.0.0-chexpert.csv",
            "subject_id,study_id,Atelectasis,Cardiomegaly,Consolidation,Edema,"
            "Enlarged Cardiomediastinum,Fracture,Lung Lesion,Lung Opacity,No Finding,"
            "Pleural Effusion,Pleural Other,Pneumonia,Pneumothorax,Support Devices\n"
            "10000032,50414267,,,,,,,,,1.0,,,,,\n"
            "10000032,53189527,-1.0,1.0,,0.0,,,,,,1.0,,,,\n");
  DataSourceConfig config;
  config.mutable_mimic_cxr()->set_root(root);
  config.mutable_mimic_cxr()->set_uncertain(UNCERTAIN_POSITIVE);
  auto data = Open(config)->List(0.0);
  ASSERT_TRUE(data.ok()) << data.status();
  ASSERT_EQ(data->label_names.size(), 14u);
  EXPECT_EQ(data->label_names[0], "Atelectasis");
  auto samples = ById(*data);
  EXPECT_EQ(samples.size(), 3u);
  EXPECT_EQ(data->unlabelled_files, 1);  // study 51029426 has no labels row
  const Sample& sc = samples.at("mimic-cxr:" + c);
  EXPECT_EQ(sc.patient_id, "10000032");
  EXPECT_EQ(sc.labels[0], 1.0f);  // -1.0 as positive
  EXPECT_EQ(sc.labels[1], 1.0f);
  EXPECT_EQ(sc.labels[3], 0.0f);
  EXPECT_TRUE(Unknown(sc.labels[2]));
  EXPECT_EQ(samples.at("mimic-cxr:" + a).labels[8], 1.0f);  // No Finding
  EXPECT_TRUE(fs::exists(sc.path));
  EXPECT_TRUE(data->field_names.empty());

  config.mutable_mimic_cxr()->set_frontal_only(true);
  auto frontal = Open(config)->List(0.0);
  ASSERT_TRUE(frontal.ok());
  EXPECT_EQ(ById(*frontal).size(), 2u);
  EXPECT_EQ(frontal->filtered, 1);
  config.mutable_mimic_cxr()->add_view_positions("PA");
  auto pa = Open(config)->List(0.0);
  ASSERT_TRUE(pa.ok());
  EXPECT_EQ(ById(*pa).size(), 1u);
  EXPECT_EQ(ById(*pa).count("mimic-cxr:" + a), 1u);

  fs::remove(root + "/mimic-cxr-2.0.0-chexpert.csv");
  auto missing = Open(config)->List(0.0);
  ASSERT_FALSE(missing.ok());
  EXPECT_THAT(std::string(missing.status().message()), HasSubstr("mimic-cxr-2.0.0-chexpert.csv"));
}

// ---- ChestX-ray14: Data_Entry_2017.csv (its header's bracketed names hold commas, and every
// line ends in one), PNGs under images_NNN/images/.

TEST(ChestXray14SourceTest, ReadsTheReleaseCsvAndFindsPngsUnderImagesFolders) {
  const std::string root = FreshTestDir("nih14");
  fs::create_directories(root + "/images_001/images");
  fs::create_directories(root + "/images_002/images");
  std::vector<uint16_t> gray8(16 * 16, 100), gray16(16 * 16, 40000);
  ASSERT_TRUE(WritePng(root + "/images_001/images/00000001_000.png", 16, 16, 8, PNG_COLOR_TYPE_GRAY,
                       gray8));
  ASSERT_TRUE(WritePng(root + "/images_001/images/00000001_001.png", 16, 16, 8, PNG_COLOR_TYPE_GRAY,
                       gray8));
  ASSERT_TRUE(WritePng(root + "/images_002/images/00000013_005.png", 16, 16, 16,
                       PNG_COLOR_TYPE_GRAY, gray16));
  WriteText(root + "/images_002/images/00000013_006.png", "corrupt");
  WriteText(root + "/Data_Entry_2017.csv",
            "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
            "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],\n"
            "00000001_000.png,Cardiomegaly,0,1,58,M,PA,2682,2749,0.143,0.143,\n"
            "00000001_001.png,Cardiomegaly|Emphysema,1,1,58,M,PA,2894,2729,0.143,0.143,\n"
            "00000013_005.png,No Finding,5,13,060Y,F,AP,3056,2544,0.139,0.139,\n"
            "00000013_006.png,No Finding,6,13,60,F,AP,3056,2544,0.139,0.139,\n"
            "00000013_007.png,Hernia,7,13,60,F,AP,3056,2544,0.139,0.139,\n"
            "00000013_008.png,Nodule|Covid,8,13,60,F,AP,3056,2544,0.139,0.139,\n");
  DataSourceConfig config;
  config.mutable_chestxray14()->set_root(root);
  auto source = Open(config);
  auto data = source->List(0.0);
  ASSERT_TRUE(data.ok()) << data.status();
  ASSERT_EQ(data->label_names.size(), 14u);
  EXPECT_EQ(data->label_names[1], "Cardiomegaly");
  auto samples = ById(*data);
  EXPECT_EQ(samples.size(), 3u);
  EXPECT_EQ(data->skipped_files, 3);  // corrupt PNG, missing file, unknown finding
  std::string reasons, kinds;
  for (const SkippedItem& s : data->skips) {
    reasons += s.what + ": " + s.reason + "\n";
    kinds += std::string(SkipKindName(s.kind)) + " ";
  }
  // The metric's bounded reasons, in listing order.
  EXPECT_EQ(kinds, "missing_file bad_row unreadable ") << reasons;  // files checked last
  EXPECT_THAT(reasons, HasSubstr("00000013_006.png: neither a JPEG nor a PNG"));
  EXPECT_THAT(reasons, HasSubstr("00000013_007.png: missing file"));
  EXPECT_THAT(reasons, HasSubstr("unknown finding 'Covid'"));
  const Sample& two = samples.at("chestxray14:00000001_001.png");
  EXPECT_EQ(two.patient_id, "1");
  EXPECT_EQ(two.labels[1], 1.0f);
  EXPECT_EQ(two.labels[10], 1.0f);  // Emphysema
  EXPECT_EQ(two.labels[0], 0.0f);   // every other finding is a known negative
  EXPECT_THAT(two.fields, ElementsAre(58.0f, 1.0f));
  const Sample& none = samples.at("chestxray14:00000013_005.png");
  EXPECT_EQ(none.age_years, 60);
  EXPECT_EQ(none.sex, "F");
  for (float v : none.labels) EXPECT_EQ(v, 0.0f);
  auto pixels = source->Load(none, PixelShape::Square(8));
  ASSERT_TRUE(pixels.ok()) << pixels.status();
  EXPECT_NEAR((*pixels)[0], 40000 / 65535.0, 1e-5);  // the 16-bit PNG at full precision
}

// ---- VinDr-CXR: DICOM files train/IMAGE_ID.dicom, one labels row per radiologist.

class VindrCxrTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = FreshTestDir("vindr") + "/vindr-cxr/1.0.0";
    const std::string phantoms = root_ + "/../phantoms";
    PhantomOptions options;
    options.count = 3;
    options.size = 32;
    ASSERT_TRUE(WritePhantomDataset(options, phantoms).ok());
    fs::create_directories(root_ + "/train");
    std::vector<std::string> files;
    for (const auto& entry : fs::directory_iterator(phantoms)) {
      if (entry.path().extension() == ".dcm") files.push_back(entry.path().string());
    }
    std::sort(files.begin(), files.end());
    ASSERT_GE(files.size(), 3u);
    for (int i = 0; i < 3; ++i) fs::copy_file(files[i], root_ + "/train/" + kIds[i] + ".dicom");
    Truncate(root_ + "/train/" + kIds[2] + ".dicom", 200);
    // Three readers of the first image: Cardiomegaly 2 of 3, Nodule/Mass 1 of 3.
    WriteText(root_ + "/annotations/image_labels_train.csv",
              std::string("image_id,rad_id,Aortic enlargement,Cardiomegaly,Nodule/Mass,"
                          "No finding\n") +
                  kIds[0] + ",R9,0,1,0,0\n" + kIds[0] + ",R10,0,1,1,0\n" + kIds[0] +
                  ",R8,0,0,0,1\n" + kIds[1] + ",R9,0,0,0,1\n" + kIds[1] + ",R9,1,0,0,0\n" +
                  kIds[2] + ",R2,0,0,0,1\n" + "fe8a1c1f1eb5d7a5e96a7d0a0e1b4c22,R3,0,0,0,1\n");
  }

  DataSourceConfig Config(MergeRule rule) const {
    DataSourceConfig config;
    config.mutable_vindr_cxr()->set_root(root_);
    config.mutable_vindr_cxr()->set_merge(rule);
    return config;
  }

  static constexpr const char* kIds[3] = {"000434271f63a053c4128a0ba6352c7f",
                                          "00053190460d56c53cc3e57321387478",
                                          "0005e8e3701dfb1dd93d53e2ff537b6e"};
  std::string root_;
};

TEST_F(VindrCxrTest, MergesRadiologistsByMajorityOrAny) {
  auto majority = Open(Config(MERGE_MAJORITY))->List(0.0);
  ASSERT_TRUE(majority.ok()) << majority.status();
  EXPECT_EQ(majority->label_names, (std::vector<std::string>{"Aortic enlargement", "Cardiomegaly",
                                                             "Nodule/Mass", "No finding"}));
  auto samples = ById(*majority);
  ASSERT_EQ(samples.size(), 2u);
  const Sample& first = samples.at(std::string("vindr-cxr:") + kIds[0]);
  EXPECT_THAT(first.labels, ElementsAre(0.0f, 1.0f, 0.0f, 0.0f));
  EXPECT_FALSE(first.sop_instance_uid.empty());  // the DICOM's own UID binds the ledger
  EXPECT_FALSE(first.patient_id.empty());
  EXPECT_EQ(first.fields.size(), 2u);
  EXPECT_FALSE(Unknown(first.fields[0]));  // PatientAge from the header
  // Reasons: R9's second row of image 2, a truncated DICOM, a listed file that is missing.
  std::string reasons;
  std::map<std::string, int> kinds;
  for (const SkippedItem& s : majority->skips) {
    reasons += s.what + ": " + s.reason + "\n";
    ++kinds[SkipKindName(s.kind)];
  }
  EXPECT_EQ(majority->skipped_files, 3) << reasons;
  EXPECT_EQ(kinds,
            (std::map<std::string, int>{{"bad_row", 1}, {"missing_file", 1}, {"unreadable", 1}}))
      << reasons;
  EXPECT_THAT(reasons, HasSubstr("second row of radiologist R9"));
  EXPECT_THAT(reasons, HasSubstr(std::string(kIds[2]) + ".dicom"));
  EXPECT_THAT(reasons, HasSubstr("missing file"));

  auto any = Open(Config(MERGE_ANY))->List(0.0);
  ASSERT_TRUE(any.ok());
  EXPECT_THAT(ById(*any).at(std::string("vindr-cxr:") + kIds[0]).labels,
              ElementsAre(0.0f, 1.0f, 1.0f, 1.0f));
  auto source = Open(Config(MERGE_ANY));
  auto pixels = source->Load(first, PixelShape::Square(16));
  ASSERT_TRUE(pixels.ok()) << pixels.status();
  EXPECT_EQ(pixels->size(), 256u);
}

// ---- The DICOM folder as a source, and what every source shares.

TEST(DataSourceTest, DicomFolderSourceListsAsLoadDatasetDoes) {
  const std::string dir = FreshTestDir("source_dicom");
  PhantomOptions options;
  options.count = 6;
  options.size = 32;
  ASSERT_TRUE(WritePhantomDataset(options, dir + "/images").ok());
  fs::rename(dir + "/images/labels.csv", dir + "/labels.csv");
  WriteText(dir + "/images/junk.dcm", "junk");
  ClientConfig client;
  client.set_data_dir(dir + "/images");
  client.set_labels_csv(dir + "/labels.csv");
  const DataSourceConfig config = SourceOf(client);
  ASSERT_TRUE(config.has_dicom_folder());
  auto source = Open(config);
  EXPECT_EQ(source->Kind(), "dicom_folder");
  auto listed = source->List(0.3);
  auto loaded = LoadDataset(dir + "/images", dir + "/labels.csv", 0.3);
  ASSERT_TRUE(listed.ok() && loaded.ok());
  EXPECT_EQ(listed->label_names, loaded->label_names);
  ASSERT_EQ(listed->train.size(), loaded->train.size());
  EXPECT_EQ(listed->test.size(), loaded->test.size());
  EXPECT_EQ(listed->skipped_files, 1);
  ASSERT_EQ(listed->skips.size(), 1u);
  EXPECT_THAT(listed->skips[0].what, HasSubstr("junk.dcm"));
  EXPECT_EQ(ImageHashes(*listed), ImageHashes(*loaded));
  auto pixels = source->Load(listed->train[0], PixelShape::Square(16));
  ASSERT_TRUE(pixels.ok()) << pixels.status();
  EXPECT_EQ(*pixels, DecodeDicom(listed->train[0].path, 16).value().pixels);
}

TEST(DataSourceTest, RenamesFindingsOntoTheJobsLabelsAndRefusesBadRenames) {
  const std::string root = FreshTestDir("source_rename");
  fs::create_directories(root + "/images_001/images");
  ASSERT_TRUE(WritePng(root + "/images_001/images/00000001_000.png", 4, 4, 8, PNG_COLOR_TYPE_GRAY,
                       std::vector<uint16_t>(16, 1)));
  WriteText(root + "/Data_Entry_2017_v2020.csv",
            "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
            "View Position,OriginalImageWidth,OriginalImageHeight,OriginalImagePixelSpacing_x,"
            "OriginalImagePixelSpacing_y\n"
            "00000001_000.png,Effusion,0,1,58,M,PA,2682,2749,0.143,0.143\n");
  DataSourceConfig config;
  config.mutable_chestxray14()->set_root(root);
  (*config.mutable_rename_labels())["Effusion"] = "effusion";
  (*config.mutable_rename_labels())["Cardiomegaly"] = "cardiomegaly";
  auto data = Open(config)->List(0.0);
  ASSERT_TRUE(data.ok()) << data.status();
  EXPECT_EQ(data->label_names[1], "cardiomegaly");
  EXPECT_EQ(data->label_names[2], "effusion");
  EXPECT_EQ(ImageHashes(*data),
            std::vector<uint64_t>{StableHash64("chestxray14:00000001_000.png")});
  (*config.mutable_rename_labels())["Effusions"] = "x";
  auto unknown = Open(config)->List(0.0);
  ASSERT_FALSE(unknown.ok());
  EXPECT_THAT(std::string(unknown.status().message()), HasSubstr("no finding 'Effusions'"));
  config.clear_rename_labels();
  (*config.mutable_rename_labels())["Mass"] = "Nodule";
  auto twice = Open(config)->List(0.0);
  ASSERT_FALSE(twice.ok());
  EXPECT_THAT(std::string(twice.status().message()), HasSubstr("become 'Nodule'"));
}

TEST(DataSourceTest, OpeningChecksTheKindAndRoot) {
  DataSourceConfig config;
  EXPECT_THAT(std::string(OpenDataSource(config).status().message()), HasSubstr("no kind"));
  config.mutable_chexpert();
  EXPECT_THAT(std::string(OpenDataSource(config).status().message()),
              HasSubstr("source.chexpert.root: required"));
  config.mutable_vindr_cxr()->set_root("/nonexistent/vindr");
  EXPECT_EQ(OpenDataSource(config).status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace fl
